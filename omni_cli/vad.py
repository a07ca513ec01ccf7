"""Voice activity detection with Silero VAD (the model bundled in the `silero-vad` wheel).

Used to refuse silence-only input before any model runs, and to find where speech
ends in a recording. Streaming VAD for the microphone lives with `talk`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from omni_cli.audio import SAMPLE_RATE


@dataclass(frozen=True)
class VadOptions:
    threshold: float = 0.5  # speech probability above which a frame is speech
    min_speech_ms: int = 120  # shorter bursts are ignored (clicks, breaths)
    min_silence_ms: int = 300  # a pause shorter than this does not end a speech segment


# "Is there any speech at all?" (refusing silence before the models run) errs towards speech:
# at 0.5, Silero misses whispered and creaky real speech; at 0.25 it still rejects noise and hum.
SPEECH_CHECK = VadOptions(threshold=0.25)


@lru_cache(maxsize=1)
def silero_vad():
    """The `silero_vad` package, imported keeping torch's thread count: its import sets it to 1
    for the whole process (`torch.set_num_threads(1)` in its model module), which made every
    model after the first silence check run on one core."""
    threads = torch.get_num_threads()
    try:
        import silero_vad as package
    finally:
        torch.set_num_threads(threads)
    return package


@lru_cache(maxsize=1)
def _silero():
    return silero_vad().load_silero_vad(onnx=True)


def speech_segments(audio: np.ndarray, options: VadOptions = VadOptions()) -> list[tuple[float, float]]:
    """Speech spans (start_s, end_s) in 16 kHz mono audio."""
    if audio.size < SAMPLE_RATE // 10:
        return []
    stamps = silero_vad().get_speech_timestamps(
        torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
        _silero(),
        threshold=options.threshold,
        sampling_rate=SAMPLE_RATE,
        min_speech_duration_ms=options.min_speech_ms,
        min_silence_duration_ms=options.min_silence_ms,
    )
    return [(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps]


def has_speech(audio: np.ndarray, options: VadOptions = SPEECH_CHECK) -> bool:
    return bool(speech_segments(audio, options))


def require_speech(audio: np.ndarray, options: VadOptions = SPEECH_CHECK) -> list[tuple[float, float]]:
    """Refuse silence-only input before any model runs; the speech spans found (`speech_segments`)."""
    from omni_cli.errors import InputError

    segments = speech_segments(audio, options)
    if not segments:
        raise InputError("no speech detected in the input (silence or noise only)")
    return segments


def around_speech(audio: np.ndarray, margin: float, segments: list[tuple[float, float]] | None = None) -> np.ndarray:
    """16 kHz audio from `margin` seconds before its first speech to `margin` after its last
    (`segments`, where the caller has them, else found with SPEECH_CHECK); all of it where none is found."""
    if segments is None:
        segments = speech_segments(audio, SPEECH_CHECK)
    if not segments:
        return audio
    start = max(0, int((segments[0][0] - margin) * SAMPLE_RATE))
    return audio[start : min(len(audio), int((segments[-1][1] + margin) * SAMPLE_RATE))]
