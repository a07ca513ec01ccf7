"""The one event stream every pipeline speaks.

A pipeline run is a generator of these frozen, timestamped events; `respond` renders
them, `talk` plays them, `eval` measures them. Timestamps are `time.perf_counter()`
seconds; latency figures are differences between event timestamps (see
`latency_metrics` below), never separate timers. This module knows nothing
about models or rendering.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np


def now() -> float:
    return time.perf_counter()


@dataclass(frozen=True)
class Event:
    t: float = field(default_factory=now, kw_only=True)


@dataclass(frozen=True)
class SpeechEnded(Event):
    """The user's speech is complete and available to the pipeline (latency origin)."""

    duration_s: float


@dataclass(frozen=True)
class StageTiming(Event):
    """A pipeline stage finished; `seconds` is its wall time."""

    stage: str
    seconds: float


@dataclass(frozen=True)
class Transcript(Event):
    """What the ASR heard (cascade only)."""

    text: str


@dataclass(frozen=True)
class TextDelta(Event):
    """New text of the answer, as the LLM writes it."""

    text: str


@dataclass(frozen=True)
class TextSegment(Event):
    """A sentence or clause of the answer handed to speech synthesis."""

    text: str
    index: int


@dataclass(frozen=True)
class UnitChunk(Event):
    """Discrete speech units handed to a unit vocoder (end-to-end mode)."""

    units: tuple[int, ...]
    index: int


@dataclass(frozen=True, eq=False)
class AudioChunk(Event):
    """A piece of the spoken answer, ready to play."""

    samples: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    index: int

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True)
class ErrorEvent(Event):
    """A failure inside the pipeline; the stream ends after it."""

    message: str


@dataclass(frozen=True)
class Done(Event):
    """The answer is complete."""

    text: str
    transcript: str | None = None


@dataclass(frozen=True, eq=False)
class Response:
    """A drained run: what was heard, what was answered, the reply audio and the events."""

    transcript: str | None
    text: str
    audio: np.ndarray
    sample_rate: int
    events: tuple[Event, ...]

    @property
    def metrics(self) -> dict[str, float | None]:
        return latency_metrics(self.events)


def latency_metrics(events: Iterable[Event]) -> dict[str, float | None]:
    """The latency figures of one run, from its events' timestamps.

    - first_token_s: end of input speech -> first text of the answer
    - first_audio_latency_s: end of input speech -> first reply audio ready
    - total_s: end of input speech -> answer complete
    - audio_s: duration of the spoken answer; rtf: total_s / audio_s
    - longest_pause_s, pauses_over_1s: played as it arrives (each chunk as soon as it is ready
      and the one before has finished), the longest silence a listener waits between chunks
      and how many such waits last over 1 s (a streaming artifact, not a pause in the speech)
    - <stage>_s: each StageTiming (asr_s, ...)
    """
    t0 = first_text = first_audio = done = None
    audio_s = 0.0
    played_until: float | None = None
    pauses: list[float] = []
    stages: dict[str, float] = {}
    for e in events:
        if isinstance(e, SpeechEnded) and t0 is None:
            t0 = e.t
        elif isinstance(e, TextDelta) and first_text is None and e.text.strip():
            first_text = e.t
        elif isinstance(e, AudioChunk):
            first_audio = e.t if first_audio is None else first_audio
            audio_s += e.duration_s
            if played_until is not None:
                pauses.append(max(0.0, e.t - played_until))
            played_until = max(e.t, played_until or e.t) + e.duration_s
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
        "longest_pause_s": max(pauses, default=0.0) if first_audio is not None else None,
        "pauses_over_1s": sum(p > 1.0 for p in pauses) if first_audio is not None else None,
    }


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) while `collect` drained a run; `response` holds what came so far."""

    def __init__(self, response: Response):
        super().__init__()
        self.response = response


def collect(events: Iterator[Event], sample_rate: int, on_event: Callable[[Event], None] | None = None) -> Response:
    """Drain an event stream into a Response (an ErrorEvent raises its message): the batch
    call of every pipeline is its streaming generator, drained. `on_event` sees each event as
    it comes (live rendering); an interrupt raises `Interrupted` with the response so far."""
    from omni_cli.errors import OmniError

    seen: list[Event] = []
    try:
        for e in events:
            seen.append(e)
            if on_event is not None:
                on_event(e)
            if isinstance(e, ErrorEvent):
                raise OmniError(e.message)
    except Interrupted:
        raise
    except KeyboardInterrupt as exc:
        raise Interrupted(_response(seen, sample_rate)) from exc
    return _response(seen, sample_rate)


def _response(seen: list[Event], sample_rate: int) -> Response:
    done = next((e for e in reversed(seen) if isinstance(e, Done)), None)
    chunks = [e.samples for e in seen if isinstance(e, AudioChunk)]
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    transcript = next((e.text for e in seen if isinstance(e, Transcript)), None)
    if done is not None and done.transcript is not None:
        transcript = done.transcript
    return Response(
        transcript=transcript,
        text=done.text if done else "".join(e.text for e in seen if isinstance(e, TextDelta)),
        audio=audio,
        sample_rate=sample_rate,
        events=tuple(seen),
    )
