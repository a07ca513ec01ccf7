"""Shared output of the benchmark commands: results as JSON on stdout, and optionally a file."""

from __future__ import annotations

import json
from pathlib import Path


def emit(results: dict, path: Path | None) -> None:
    text = json.dumps(results, indent=2)
    print(text)
    if path is not None:
        path.write_text(text + "\n")


def median_wer_percent(references: list[str], hypotheses: list[str]) -> float | None:
    """`metrics.median_wer` in %, rounded as the reports print it (None without a reference)."""
    from omni_cli.metrics import median_wer

    m = median_wer(references, hypotheses)
    return None if m is None else round(100 * m, 2)


def median_asr_wer_percent(answers: list[str], heard: list[str]) -> float | None:
    """The per-item median ASR-WER in %: written answers against transcripts of their speech,
    both as spoken (`metrics.as_spoken`: no markdown or list numbers, bracketed words kept)."""
    from omni_cli.metrics import as_spoken

    return median_wer_percent([as_spoken(a) for a in answers], [as_spoken(h) for h in heard])
