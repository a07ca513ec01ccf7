"""Text quality measures shared by every command.

WER is jiwer's, computed after Whisper's English text normalizer on both sides (the
convention of the Whisper paper and of the published LLaMA-Omni ASR-WER). The latency
figures are `events.latency_metrics`, beside the events they read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import jiwer



@lru_cache(maxsize=1)
def _normalizer():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    return " ".join(_normalizer()(text).split())


_BRACKETS = re.compile(r"[()\[\]<>]")


def as_spoken(text: str) -> str:
    """A written answer as both pipelines' speech says it, for ASR-WER: what a voice does not
    read left out (`text.clean_for_speech`: markdown, a list item's bullet or number, URLs,
    emoji), and the words between brackets kept: they are said ("England (the largest
    country)" is read whole), but Whisper's normalizer drops them, as it drops a transcript's
    annotations ("(laughs)"), so each said word would count as an insertion."""
    from omni_cli.text import clean_for_speech

    return _BRACKETS.sub(" ", clean_for_speech(text))


def asr_wer(answers: Sequence[str], heard: Sequence[str]) -> float:
    """Corpus ASR-WER: written answers against Whisper transcripts of their speech (`as_spoken`)."""
    if isinstance(answers, str) or isinstance(heard, str):
        raise TypeError("asr_wer takes lists of answers and transcripts, not strings")
    return wer([as_spoken(a) for a in answers], [as_spoken(h) for h in heard])


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER (total edits / total reference words) after normalization, in [0, inf)."""
    if isinstance(references, str) or isinstance(hypotheses, str):  # a string is a sequence: of characters
        raise TypeError("wer takes lists of references and hypotheses, not strings (use wer([ref], [hyp]))")
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    keep = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    if not keep:
        raise ValueError("WER needs at least one non-empty reference")
    out = jiwer.process_words([r for r, _ in keep], [h for _, h in keep])
    return out.wer


def wer_counts(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edits, reference words) after normalization, for summing into a corpus WER."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return (len(hyp.split()), 0)
    out = jiwer.process_words(ref, hyp)
    return (out.substitutions + out.deletions + out.insertions, len(ref.split()))


def median_wer(references: list[str], hypotheses: list[str]) -> float | None:
    """The per-item median WER (a fraction; None without a non-empty reference): unlike the
    corpus WER, not swayed by one hypothesis that loops ("be-be-be-..." is a WER of 590 %)."""
    import numpy as np

    rates = [e / n for e, n in (wer_counts(r, h) for r, h in zip(references, hypotheses, strict=True)) if n]
    return float(np.median(rates)) if rates else None
