"""The end-to-end pipeline: one decode loop streams text, units and audio events.

For each text token the LLM writes, its hidden state goes into the incremental CTC
speech decoder; new units go to a `UnitChunker`, and every chunk of about Omega units is
vocoded and yielded as audio while the LLM is still writing. The same event stream as the
cascade (`omni_cli.events`), so `respond`, `talk` and `eval` treat both modes alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from omni_cli.audio import SAMPLE_RATE
from omni_cli.e2e.speech_encoder import HOP
from omni_cli.e2e.speech_generator import SpeechDecoderStream
from omni_cli.e2e.speech_llm import SpeechLLM
from omni_cli.e2e.unit_vocoder import UnitChunker, UnitVocoder
from omni_cli.errors import ConfigError, InputError
from omni_cli.events import AudioChunk, Done, Event, Response, SpeechEnded, StageTiming, TextDelta, Transcript, UnitChunk, collect, now
from omni_cli.llm import GenerationOptions
from omni_cli.text import SpokenTokens
from omni_cli.vad import require_speech


@dataclass(frozen=True)
class E2EOptions:
    omega: int | None = 40  # units per vocoder chunk (None: vocode once, at the end)
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    check_speech: bool = True  # refuse silence-only input before running models
    first_chunk: int | None = None  # units in the first chunk, doubling up to omega (None: the vocoder's default; 0: omega from the start)
    beam: int | None = None  # a ctc adaptor's hearing beam (1: greedy; None: the model's own)


class E2EPipeline:
    mode = "e2e"

    def __init__(self, model: SpeechLLM, vocoder: UnitVocoder, options: E2EOptions = E2EOptions()):
        k = model.config.speech_decoder.num_units
        if vocoder.num_units != k:
            raise ConfigError(f"the speech decoder predicts {k} units but the vocoder takes {vocoder.num_units}")
        model.hear_with(options.beam)
        self.model, self.vocoder, self.options = model, vocoder, options

    @property
    def sample_rate(self) -> int:
        return self.vocoder.sample_rate

    def run(
        self, audio: np.ndarray, history: list[dict[str, str]] | None = None, *, speech_end: float | None = None
    ) -> Iterator[Event]:
        """Answer the speech in `audio` (16 kHz mono); `history` holds earlier chat turns as text.
        `speech_end` is when the user stopped speaking (a live caller's VAD decision; default: now)."""
        limit = self.model.config.encoder.n_ctx * 2 * HOP / SAMPLE_RATE  # the speech encoder's context
        if len(audio) / SAMPLE_RATE > limit + 0.01:
            raise InputError(f"the request is {len(audio) / SAMPLE_RATE:.1f} s long; the end-to-end model hears at most "
                             f"{limit:.0f} s at a time (the speech encoder's context): shorten it, or use --mode cascade")
        speech = require_speech(audio) if self.options.check_speech else None  # its spans: hearing may keep only them
        yield SpeechEnded(duration_s=len(audio) / SAMPLE_RATE, t=now() if speech_end is None else speech_end)
        decoder = SpeechDecoderStream(self.model.speech_generator)
        chunker = UnitChunker.for_vocoder(self.vocoder, self.options.omega, self.options.first_chunk)
        text: list[str] = []
        n_chunks = 0
        t = now()
        with torch.inference_mode():
            features, heard = self.model.hear(audio, history, speech)
        yield StageTiming(stage="encoder", seconds=now() - t)
        if heard is not None:
            yield Transcript(text=heard)  # the tokens the LLM reads (a ctc adaptor): the turn's text in a history
        spoken = SpokenTokens()  # markdown and list markers reach the speech decoder not at all: no voice says them
        for step in self.model.stream_features(features, self.options.generation, history, heard=heard):
            if step.text:
                text.append(step.text)
                yield TextDelta(text=step.text)
            t = now()
            units = [u for said in spoken.push(step.text, step) for u in decoder.push(said.hidden, self.model.token_embedding(said.token_id))]
            yield StageTiming(stage="speech_decoder", seconds=now() - t)
            for chunk in chunker.push(units):
                yield from self._vocode(chunk, n_chunks)
                n_chunks += 1
        units = [u for said in spoken.flush() for u in decoder.push(said.hidden, self.model.token_embedding(said.token_id))]
        for chunk in [*chunker.push(units + decoder.flush()), *chunker.flush()]:
            yield from self._vocode(chunk, n_chunks)
            n_chunks += 1
        yield Done(text="".join(text).strip(), transcript=heard)

    def _vocode(self, units: list[int], index: int) -> Iterator[Event]:
        yield UnitChunk(units=tuple(units), index=index)
        t = now()
        samples = self.vocoder.units_to_audio(units)
        yield StageTiming(stage="vocoder", seconds=now() - t)
        if samples.size:
            yield AudioChunk(samples=samples, sample_rate=self.vocoder.sample_rate, index=index)

    def respond(self, audio: np.ndarray, history: list[dict[str, str]] | None = None) -> Response:
        return collect(self.run(audio, history), self.sample_rate)

    def prepare(self, history: list[dict[str, str]]) -> None:
        """Compute the KV cache of the next turn's prompt up to the speech (the system prompt
        and `history`) now, while the user speaks: the turn then computes only the speech and
        what follows it."""
        before, _ = self.model.prompt_ids(history)
        self.model.llm.prepare(before)

    def warm_up(self) -> None:
        """Every model once on a second of quiet noise (encoder, adaptor, the LLM's prompt,
        whose fixed beginning is then kept, the speech decoder and the vocoder), so that the
        first turn of a process pays no first-call cost (allocations, kernel set-up)."""
        noise = (0.01 * np.random.default_rng(0).standard_normal(SAMPLE_RATE)).astype(np.float32)
        decoder = SpeechDecoderStream(self.model.speech_generator)
        units: list[int] = []
        with torch.inference_mode():
            features = self.model.speech_features(noise)
            self.model.warm_hearing()  # quiet noise is heard as nothing: no hypotheses to choose among
            for step in self.model.stream_features(features, GenerationOptions(max_new_tokens=3)):
                units += decoder.push(step.hidden, self.model.token_embedding(step.token_id))
            units += decoder.flush()
        self.vocoder.units_to_audio(units[:20] or [0] * 5)
