"""Quality and latency measures shared by every command.

WER is jiwer's, computed after Whisper's English text normalizer on both sides (the
convention of the Whisper paper and of the published LLaMA-Omni ASR-WER). Latency
figures are differences between event timestamps of one pipeline run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

import jiwer

from omni_cli.events import AudioChunk, Done, Event, SpeechEnded, StageTiming, TextDelta


@lru_cache(maxsize=1)
def _normalizer():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    return " ".join(_normalizer()(text).split())


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER (total edits / total reference words) after normalization, in [0, inf)."""
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


def latency_metrics(events: Iterable[Event]) -> dict[str, float | None]:
    """The latency figures of one run, from its events' timestamps.

    - first_token_s: end of input speech -> first text of the answer
    - first_audio_latency_s: end of input speech -> first reply audio ready
    - total_s: end of input speech -> answer complete
    - audio_s: duration of the spoken answer; rtf: total_s / audio_s
    - <stage>_s: each StageTiming (asr_s, ...)
    """
    t0 = first_text = first_audio = done = None
    audio_s = 0.0
    stages: dict[str, float] = {}
    for e in events:
        if isinstance(e, SpeechEnded) and t0 is None:
            t0 = e.t
        elif isinstance(e, TextDelta) and first_text is None and e.text.strip():
            first_text = e.t
        elif isinstance(e, AudioChunk):
            first_audio = e.t if first_audio is None else first_audio
            audio_s += e.duration_s
        elif isinstance(e, StageTiming):
            stages[f"{e.stage}_s"] = stages.get(f"{e.stage}_s", 0.0) + e.seconds
        elif isinstance(e, Done):
            done = e.t
    if t0 is None:
        raise ValueError("latency_metrics needs a SpeechEnded event")

    def since(t: float | None) -> float | None:
        return None if t is None else t - t0

    total = since(done)
    return {
        **stages,
        "first_token_s": since(first_text),
        "first_audio_latency_s": since(first_audio),
        "total_s": total,
        "audio_s": audio_s,
        "rtf": (total / audio_s) if total is not None and audio_s > 0 else None,
    }
