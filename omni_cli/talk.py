"""The conversation engine of `omni talk`: turns, barge-in, history and the session record.

Audio comes in as 16 kHz frames of 512 samples (Silero VAD's window) from a source (the
microphone, or a file played as if it were one, see `talk_audio`); Silero VAD's streaming
`VADIterator` (or a push-to-talk key) cuts it into utterances; each utterance is answered by
a pipeline (cascade or e2e) in a worker thread, whose events are passed on as they come and
whose audio chunks go to a sink as they arrive. Speech during an answer stops it (barge-in)
and starts a new turn; finished turns become the text history of the next ones.

Time is the conversation's own clock: samples of input consumed. The answer is played on
that clock (a chunk starts when it arrives, or when the one before it ends), so the state
(listening, hearing, thinking, speaking), the barge-in cut and the two-sided recording are
the same whether the input is a microphone, a file in real time, or a file run fast.
`Conversation.run` is a generator of events: the pipelines' own, between a `TurnStarted`
and a `TurnEnded`, and `StateChanged`. This module knows nothing about audio devices
or rendering.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from omni_cli.audio import SAMPLE_RATE, resample
from omni_cli.errors import OmniError, OutputError
from omni_cli.events import (
    AudioChunk,
    Done,
    ErrorEvent,
    Event,
    SpeechEnded,
    TextDelta,
    TextSegment,
    Transcript,
    latency_metrics,
    now,
)
from omni_cli.pipelines import Pipeline, chat_llm

FRAME = 512  # samples per input frame: Silero VAD's window at 16 kHz (32 ms)
LISTENING, HEARING, THINKING, SPEAKING = "listening", "hearing", "thinking", "speaking"
SPOKEN_TURN = "(spoken request)"  # the user's history entry when the pipeline needed no transcript (e2e)


def heard_text(chunk_text: list[str], played: list[tuple[int, int]], clock: int) -> str:
    """The part of an answer the user heard before cutting it off: the text of every chunk
    played to its end, and of the chunk playing then, its share of words by the time played.
    `chunk_text[i]` is the answer's text through chunk i; `played[i]` its (start, length)."""
    heard, before = "", ""
    for text, (start, length) in zip(chunk_text, played):
        if start >= clock:
            break
        if start + length <= clock:
            heard = before = text
            continue
        own = text[len(before):].split() if text.startswith(before) else text.split()
        share = own[: int(len(own) * (clock - start) / max(1, length))]
        heard = " ".join([before.strip(), *share]).strip()
        break
    return heard.strip()


@dataclass(frozen=True)
class TalkOptions:
    vad_threshold: float = 0.5  # speech probability that starts the user's turn (lower: more sensitive)
    silence_ms: int = 700  # this much silence ends the user's turn
    min_speech_ms: int = 200  # shorter sounds (clicks, coughs) neither start a turn nor barge in
    pad_ms: int = 200  # audio kept before the detected start and after the detected end
    barge_in: bool = True  # the user's speech during an answer stops it and starts a new turn
    early_start: bool = True  # begin the answer in the silence that may end the turn (dropped if the user speaks on)
    history_tokens: int | None = None  # the history's budget in LLM tokens (None: the LLM's context less room for a turn)

    def __post_init__(self) -> None:
        if not 0 < self.vad_threshold < 1:
            raise ValueError(f"vad_threshold must be in (0, 1), got {self.vad_threshold}")
        if min(self.silence_ms, self.min_speech_ms, self.pad_ms) < 0:
            raise ValueError("silence_ms, min_speech_ms and pad_ms must be >= 0")


class Source(Protocol):
    ended: bool  # no more real input: the engine finishes the turn in progress and stops
    holds_for_answers: bool  # the clock stops while the models compute (a file run fast)

    def __iter__(self) -> Iterator[np.ndarray]: ...


class Sink(Protocol):
    def play(self, samples: np.ndarray, sample_rate: int) -> None: ...

    def stop(self) -> None: ...  # barge-in: drop what is still queued


class NullSink:
    """Plays nowhere (the answer is still on the conversation clock and in the recording)."""

    def play(self, samples: np.ndarray, sample_rate: int) -> None:
        pass

    def stop(self) -> None:
        pass


# -- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateChanged(Event):
    state: str  # listening | hearing (the user is speaking) | thinking | speaking


@dataclass(frozen=True)
class TurnStarted(Event):
    index: int
    speech_s: float  # length of the user's utterance
    history_len: int  # messages of earlier turns given to the pipeline


@dataclass(frozen=True)
class Turn:
    """One finished turn, as saved in the session file."""

    index: int
    mode: str
    speech_start_s: float  # on the conversation clock: where the user's utterance starts
    speech_end_s: float  # where the VAD (or the talk key) ended it
    history_len: int
    transcript: str | None  # None in e2e mode (no transcript needed)
    text: str  # the answer as written (up to the barge-in when interrupted)
    answer_start_s: float | None  # on the conversation clock: where playback began
    spoken_s: float  # seconds of the answer actually played
    interrupted: bool
    error: str | None
    metrics: dict[str, float | None] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # the chat history the answer was given
    heard: str | None = None  # what the history keeps of the answer: all of it, or what was played before a barge-in

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()} | {
            "metrics": {k: None if v is None else round(v, 4) for k, v in self.metrics.items()}
        }


@dataclass(frozen=True)
class HistoryTrimmed(Event):
    """The oldest turns left the history so that it fits the LLM's context (the system prompt stays)."""

    dropped_turns: int
    kept_turns: int


@dataclass(frozen=True)
class TurnEnded(Event):
    turn: Turn


# -- finding the user's turns ------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Utterance:
    audio: np.ndarray  # 16 kHz mono
    start: int  # sample positions on the conversation clock
    end: int


class VadSegmenter:
    """Utterances in a stream of frames, by Silero VAD's streaming `VADIterator`.

    `push` returns "start" once speech has lasted `min_speech_ms` (the moment to barge in),
    and an `Utterance` when `silence_ms` of silence has followed it.
    """

    def __init__(self, options: TalkOptions = TalkOptions()):
        import torch

        from omni_cli.vad import silero_vad

        self._torch = torch
        # its own model: the VAD state must not be shared with the pipelines' speech check
        vad = silero_vad()
        self.vad = vad.VADIterator(vad.load_silero_vad(onnx=True), threshold=options.vad_threshold, sampling_rate=SAMPLE_RATE,
                               min_silence_duration_ms=options.silence_ms, speech_pad_ms=options.pad_ms)
        self.keep = int(options.pad_ms * SAMPLE_RATE / 1000) + FRAME
        self.min_speech = int(options.min_speech_ms * SAMPLE_RATE / 1000)
        self.pos = 0  # samples seen
        self.buffer: list[np.ndarray] = []  # recent frames: the utterance, or the pad before one
        self.buffer_start = 0
        self.start: int | None = None  # the VAD's start of the speech in progress
        self.speech = 0  # samples of it heard as speech so far
        self.active = False  # confirmed speech in progress
        self.discarded = False
        self.frame = FRAME  # samples per pushed frame (the VAD's window)

    def push(self, frame: np.ndarray) -> str | Utterance | None:
        self.buffer.append(frame)
        self.pos += len(frame)
        self.frame = len(frame)
        edge = self.vad(self._torch.from_numpy(frame)) or {}
        if "start" in edge:
            self.start, self.speech, self.discarded = edge["start"], 0, False
        if self.start is not None and self.vad.triggered and not self.vad.temp_end:
            self.speech += len(frame)
        out: str | Utterance | None = None
        if "end" in edge:
            if self.active and not self.discarded:
                out = self._utterance(edge["end"])
            self.start, self.active = None, False
        elif self.start is not None and not self.active and self.speech >= self.min_speech:
            self.active = True
            out = "start"
        if self.start is None:  # keep only the pad before a possible next utterance
            while self.buffer and self.pos - self.buffer_start - len(self.buffer[0]) >= self.keep:
                self.buffer_start += len(self.buffer.pop(0))
        return out

    def discard(self) -> None:
        """Ignore the speech in progress (no barge-in): it will not become a turn."""
        self.discarded = True

    def tentative(self) -> Utterance | None:
        """While a silence after confirmed speech is under way but not yet long enough to end the
        turn: the utterance exactly as it will be if the silence lasts (once its padded end has
        been heard), so that work on it can start early; None otherwise."""
        if not (self.active and not self.discarded and self.start is not None and self.vad.temp_end):
            return None
        end = int(self.vad.temp_end + self.vad.speech_pad_samples - self.frame)  # as VADIterator will put it
        return self._utterance(end) if self.pos >= end else None

    def _utterance(self, end: int) -> Utterance:
        audio = np.concatenate(self.buffer)
        start, end = max(self.start, self.buffer_start), min(end, self.pos)
        return Utterance(audio[start - self.buffer_start : end - self.buffer_start], start, end)


class KeySegmenter:
    """Push-to-talk: the user's turn is the audio while `key.held` is true."""

    def __init__(self, key):
        self.key = key
        self.pos = 0
        self.frames: list[np.ndarray] | None = None
        self.start = 0
        self.discarded = False

    @property
    def active(self) -> bool:
        return self.frames is not None

    def push(self, frame: np.ndarray) -> str | Utterance | None:
        self.pos += len(frame)
        if self.frames is None:
            if not self.key.held:
                return None
            self.frames, self.start, self.discarded = [frame], self.pos - len(frame), False
            return "start"
        if self.key.held:
            self.frames.append(frame)
            return None
        audio, self.frames = np.concatenate(self.frames), None
        return None if self.discarded else Utterance(audio, self.start, self.start + len(audio))

    def discard(self) -> None:
        self.discarded = True


# -- the recording ------------------------------------------------------------------------


class Recording:
    """Both sides on the conversation clock: the input as heard, the answers as played."""

    def __init__(self) -> None:
        self.input: list[np.ndarray] = []
        self.answers: list[list] = []  # [start (16 kHz clock), samples, sample_rate]

    def cut(self, at: int) -> None:
        """Barge-in at clock position `at`: what was not yet played is dropped."""
        kept = []
        for start, samples, sr in self.answers:
            if start < at:
                kept.append([start, samples[: round((at - start) * sr / SAMPLE_RATE)], sr])
        self.answers = kept

    def audio(self, sample_rate: int) -> np.ndarray:
        """(n, 2) float32: channel 0 the user, channel 1 the assistant, at `sample_rate`."""
        user = resample(np.concatenate(self.input) if self.input else np.zeros(0, np.float32), SAMPLE_RATE, sample_rate)
        placed = []
        for start, samples, sr in self.answers:
            placed.append((round(start * sample_rate / SAMPLE_RATE), resample(samples, sr, sample_rate)))
        n = max([len(user)] + [s + len(a) for s, a in placed])
        out = np.zeros((n, 2), dtype=np.float32)
        out[: len(user), 0] = user
        for s, a in placed:
            out[s : s + len(a), 1] += a
        return out


# -- the engine ---------------------------------------------------------------------------

_NOTHING = object()


class _Run:
    """One pipeline run in a worker thread; its events come through a queue, then None."""

    def __init__(self, pipeline: Pipeline, audio: np.ndarray, history: list[dict[str, str]], speech_end: float):
        self.events: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.done = False
        self.thread = threading.Thread(target=self._work, args=(pipeline, audio, history, speech_end), daemon=True)
        self.thread.start()

    def _work(self, pipeline, audio, history, speech_end) -> None:
        try:
            stream = pipeline.run(audio, history, speech_end=speech_end)
            try:
                for e in stream:
                    if self.cancelled.is_set():
                        break
                    self.events.put(e)
            finally:
                stream.close()
        except OmniError as exc:
            self.events.put(ErrorEvent(message=str(exc)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the engine's thread
            self.events.put(exc)
        finally:
            self.events.put(None)

    def next(self, block: bool):
        """The next event, None at the end, or _NOTHING (when not blocking and none is ready)."""
        while True:
            try:
                item = self.events.get(timeout=0.1) if block else self.events.get_nowait()
            except queue.Empty:
                if block:
                    continue  # wake up now and then, so Ctrl-C gets through
                return _NOTHING
            if isinstance(item, BaseException):
                raise item
            self.done = item is None
            return item


@dataclass
class _Active:
    """The turn in progress."""

    index: int
    utterance: Utterance
    history_len: int
    run: _Run
    events: list[Event] = field(default_factory=list)
    played: list[tuple[int, int]] = field(default_factory=list)  # (start, length) on the clock
    play_end: int = 0
    origin: float = 0.0  # the VAD's end-of-speech decision: latencies count from here
    chunk_text: list[str] = field(default_factory=list)  # per played chunk: the answer text it speaks
    text_so_far: str = ""  # the answer's text as written, up to the last event
    segments: list[str] = field(default_factory=list)  # the text pieces sent to TTS (cascade)


class Conversation:
    """Multi-turn spoken conversation with one `Pipeline`; `run(source)` is its event stream."""

    def __init__(self, pipeline: Pipeline, sink: Sink | None = None, options: TalkOptions = TalkOptions(), record: bool = True):
        self.pipeline, self.sink, self.options = pipeline, sink or NullSink(), options
        self.history: list[dict[str, str]] = []
        self.turns: list[Turn] = []
        self.recording = Recording() if record else None
        self.clock = 0  # samples of input consumed
        self.state: str | None = None
        self._turn: _Active | None = None
        self._last_run: _Run | None = None
        self._preparing: threading.Thread | None = None  # the next turn's prompt beginning, computed ahead
        # a run started on the tentative utterance while the silence that may end it lasts:
        # adopted when the VAD ends the turn on the same audio, else cancelled
        self._early: tuple[Utterance, _Run] | None = None
        self.early_starts = 0  # runs started early, and how many were used
        self.early_used = 0
        self.trimmed = 0  # turns dropped from the history to fit the LLM's context
        self._pending_trim = 0  # dropped, not yet said

    def run(self, source: Source | Iterable[np.ndarray], segmenter=None) -> Iterator[Event]:
        """Listen to `source` until it ends (and the last answer is played) or the caller stops."""
        segmenter = segmenter or VadSegmenter(self.options)
        hold = getattr(source, "holds_for_answers", False)
        try:
            yield from self._set_state(LISTENING)
            for frame in source:
                yield from self._step(np.asarray(frame, dtype=np.float32), segmenter, hold)
                if getattr(source, "ended", False) and self._turn is None and not segmenter.active:
                    break
        finally:
            if self._turn is not None:  # stopped by the caller (Ctrl-C): keep the partial turn
                self._end_turn(interrupted=True)
            if self._preparing is not None:
                self._preparing.join()  # a thread still in torch when the process exits would abort it

    def _step(self, frame: np.ndarray, segmenter, hold: bool) -> Iterator[Event]:
        self.clock += len(frame)
        if self.recording is not None:
            self.recording.input.append(frame)
        edge = segmenter.push(frame)
        if self._turn is None and self.options.early_start and not isinstance(edge, Utterance):
            self._start_early(getattr(segmenter, "tentative", lambda: None)())
        if edge == "start" and self._turn is not None:
            if self.options.barge_in:
                yield TurnEnded(turn=self._end_turn(interrupted=True))
            else:
                segmenter.discard()
        elif isinstance(edge, Utterance):
            yield from self._start_turn(edge)
        if self._turn is not None:
            yield from self._pump(block=hold)
        yield from self._set_state(self._current_state(segmenter))

    def _current_state(self, segmenter) -> str:
        if segmenter.active and not segmenter.discarded:
            return HEARING
        if self._turn is not None:
            return SPEAKING if self.clock < self._turn.play_end else THINKING
        return LISTENING

    def _set_state(self, state: str) -> Iterator[Event]:
        if state != self.state:
            self.state = state
            yield StateChanged(state=state)

    def _fit_history(self) -> int:
        """Drop the oldest turns (user and answer together) until the history fits its token
        budget; the number dropped."""
        self.history, dropped = self._fitted(self.history)
        self._pending_trim += dropped
        return dropped

    def _fitted(self, history: list[dict[str, str]]) -> tuple[list[dict[str, str]], int]:
        """`history` less its oldest turns until it fits the budget, and how many turns that is."""
        llm = chat_llm(self.pipeline)
        if llm is None or not history:
            return history, 0
        budget = self.options.history_tokens
        if budget is None:  # the context, less room for the system prompt, the request and the answer
            generation = getattr(getattr(self.pipeline, "options", None), "generation", None)
            budget = max(256, llm.context_length - 1024 - (generation.max_new_tokens if generation is not None else 160))
        dropped = 0
        while history and len(llm.tokenizer.apply_chat_template(history, tokenize=True, return_dict=True)["input_ids"]) > budget:
            cut = next((i for i in range(1, len(history)) if history[i]["role"] == "user"), len(history))
            history = history[cut:]
            dropped += 1
        return history, dropped

    def _model_threads(self) -> list[threading.Thread]:
        """The threads that may be using the models: the last run and the preparation of a turn."""
        return [t for t in (self._last_run.thread if self._last_run else None, self._preparing) if t is not None]

    def _join_models(self) -> None:
        """Wait until nothing else uses the models."""
        for thread in self._model_threads():
            thread.join()

    def _prepare_next(self) -> None:
        """While the user listens and speaks: compute the next turn's fixed beginning (system
        prompt and the history as that turn will fit it to its budget), so that the turn computes
        only the request, however long the conversation (its latency stays flat)."""
        history, _ = self._fitted(list(self.history))  # as the next turn will fit it
        busy = self._model_threads()

        def work() -> None:
            for thread in busy:
                thread.join()  # an interrupted run stops at its next event
            try:
                self.pipeline.prepare(history)
            except Exception:  # noqa: BLE001 - only a head start: the turn computes it if this fails
                pass

        self._preparing = threading.Thread(target=work, daemon=True)
        self._preparing.start()

    def _start_early(self, tentative: Utterance | None) -> None:
        """Start (or keep, or cancel) the run on the tentative utterance."""
        if self._early is not None:
            same = tentative is not None and (self._early[0].start, self._early[0].end) == (tentative.start, tentative.end)
            if same:
                return
            self._early[1].cancelled.set()  # the user spoke on: the audio changed
            self._early = None
        if tentative is None:
            return
        self._join_models()  # one run at a time on the models
        self._fit_history()
        self._last_run = _Run(self.pipeline, tentative.audio, list(self.history), now())
        self._early = (tentative, self._last_run)
        self.early_starts += 1

    def _start_turn(self, utterance: Utterance) -> Iterator[Event]:
        speech_end = now()  # the VAD's decision: the latency origin
        dropped = self._fit_history()
        if self._pending_trim:
            self.trimmed += self._pending_trim
            yield HistoryTrimmed(dropped_turns=self._pending_trim, kept_turns=sum(m["role"] == "user" for m in self.history))
            self._pending_trim = 0
        history = list(self.history)
        early, self._early = self._early, None
        if early is not None and dropped:
            early[1].cancelled.set()  # it was given the history before the trim
            early = None
        if early is not None and (early[0].start, early[0].end) == (utterance.start, utterance.end):
            run = early[1]  # begun in the silence before the decision, on this very audio
            self.early_used += 1
        else:
            if early is not None:
                early[1].cancelled.set()
            self._join_models()  # a cancelled run stops at its next event
            run = self._last_run = _Run(self.pipeline, utterance.audio, history, speech_end)
        self._turn = _Active(len(self.turns) + 1, utterance, len(history), run, play_end=self.clock, origin=speech_end)
        yield TurnStarted(index=self._turn.index, speech_s=len(utterance.audio) / SAMPLE_RATE, history_len=len(history))
        yield from self._set_state(THINKING)

    def _pump(self, block: bool) -> Iterator[Event]:
        """Pass on the run's events that are ready (all of them, when the clock holds for answers)."""
        turn = self._turn
        while not turn.run.done:
            e = turn.run.next(block)
            if e is _NOTHING or e is None:
                break
            if e.t < turn.origin:  # ready before the VAD's decision (an early run): it counts from there
                e = dataclasses.replace(e, t=turn.origin)
            turn.events.append(e)
            if isinstance(e, TextDelta):
                turn.text_so_far += e.text
            elif isinstance(e, TextSegment):
                turn.segments.append(e.text)
            if isinstance(e, AudioChunk):
                # cascade: the pieces sent to TTS so far; e2e: the text written so far, less the
                # word whose units may still be pending
                spoken = " ".join(turn.segments) if turn.segments else turn.text_so_far.rsplit(" ", 1)[0]
                turn.chunk_text.append(spoken)
                start = max(self.clock, turn.play_end)
                length = round(e.duration_s * SAMPLE_RATE)
                turn.played.append((start, length))
                turn.play_end = start + length
                if self.recording is not None:
                    self.recording.answers.append([start, e.samples, e.sample_rate])
                self.sink.play(e.samples, e.sample_rate)
            yield e
        if turn.run.done and self.clock >= turn.play_end:
            yield TurnEnded(turn=self._end_turn(interrupted=False))

    def _end_turn(self, interrupted: bool) -> Turn:
        t, self._turn = self._turn, None
        if interrupted:
            t.run.cancelled.set()
            self.sink.stop()
            if self.recording is not None:
                self.recording.cut(self.clock)
        done = next((e for e in t.events if isinstance(e, Done)), None)
        error = next((e.message for e in t.events if isinstance(e, ErrorEvent)), None)
        transcript = next((e.text for e in t.events if isinstance(e, Transcript)), None)
        text = done.text if done else "".join(e.text for e in t.events if isinstance(e, TextDelta)).strip()
        spoken = sum(max(0, min(s + n, self.clock) - s) for s, n in t.played)
        understood = done is not None or bool(text)
        said = (heard_text(t.chunk_text, t.played, self.clock) if interrupted else text) if understood else None
        turn = Turn(
            index=t.index,
            mode=self.pipeline.mode,
            speech_start_s=t.utterance.start / SAMPLE_RATE,
            speech_end_s=t.utterance.end / SAMPLE_RATE,
            history_len=t.history_len,
            transcript=transcript,
            text=text,
            answer_start_s=t.played[0][0] / SAMPLE_RATE if t.played else None,
            spoken_s=spoken / SAMPLE_RATE,
            interrupted=interrupted,
            error=error,
            metrics=latency_metrics(t.events) if any(isinstance(e, SpeechEnded) for e in t.events) else {},
            history=[dict(m) for m in self.history[: t.history_len]],
            heard=said,
        )
        self.turns.append(turn)
        if understood:  # the request and what was heard of the answer become history
            self.history.append({"role": "user", "content": transcript if transcript is not None else SPOKEN_TURN})
            if said:
                # cut off: what was heard, marked beside the text (a marker in the text, the LLM copies)
                self.history.append({"role": "assistant", "content": said} | ({"interrupted": True} if interrupted else {}))
            self._prepare_next()
        return turn

    def session(self) -> list[dict]:
        """The turns as JSON-ready dicts (one JSONL line each)."""
        return [t.to_json() for t in self.turns]

    def save(self, output: Path | None, save: Path | None, sample_rate: int) -> list[str]:
        """Write the session (`save`/session.jsonl) and the two-sided recording (`output`, a
        wav at `sample_rate`), each atomically; one failing does not cost the other (its
        OutputError is raised after both were tried). Returns a line per file written."""
        import json

        from omni_cli.audio import shown, write_wav
        from omni_cli.cache import atomic_file

        written, failure = [], None
        if save is not None:
            try:
                with atomic_file(save / "session.jsonl") as tmp:
                    tmp.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in self.session()), encoding="utf-8")
                written.append(f"session: {shown(save / 'session.jsonl')}")
            except OSError as exc:
                failure = OutputError(f"{shown(save)}: could not write the session ({exc.strerror or exc})")
        if output is not None and self.recording is not None:
            audio = self.recording.audio(sample_rate)
            try:
                write_wav(output, audio, sample_rate)
                written.append(f"conversation: {shown(output)} ({len(audio) / sample_rate:.1f} s; left: you, right: the answers)")
            except OutputError as exc:
                failure = exc
        if failure is not None:
            raise failure
        return written
