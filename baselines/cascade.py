"""The cascade baseline: Whisper ASR -> LLM -> TTS, streaming the answer piece by piece.

`CascadePipeline.run` is a generator of `omni_cli.events`: the transcript, then text
deltas as the LLM writes them; whenever a sentence or long clause is complete it is
synthesized at once and its audio chunk yielded, so the first piece is spoken while
the LLM is still generating the rest. `respond` drains the same generator.
This module knows nothing about the CLI or rendering.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from omni_cli.asr import ASR, AsrOptions, load_asr
from omni_cli.audio import SAMPLE_RATE
from omni_cli.events import (
    AudioChunk,
    Done,
    ErrorEvent,
    Event,
    Response,
    collect,
    SpeechEnded,
    StageTiming,
    TextDelta,
    TextSegment,
    Transcript,
    now,
)
from omni_cli.llm import SPOKEN_SYSTEM_PROMPT, ChatLLM, GenerationOptions
from omni_cli.text import ChunkerOptions, SentenceChunker, clean_for_speech
from omni_cli.tts import TTS, load_tts
from omni_cli.vad import require_speech


@dataclass(frozen=True)
class CascadeOptions:
    system_prompt: str = SPOKEN_SYSTEM_PROMPT  # asks for short, spoken-style answers
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    chunker: ChunkerOptions = field(default_factory=ChunkerOptions)
    check_speech: bool = True  # refuse silence-only input (Silero VAD) before running models


class CascadePipeline:
    mode = "cascade"

    def __init__(self, asr: ASR, llm: ChatLLM, tts: TTS, options: CascadeOptions = CascadeOptions()):
        self.asr, self.llm, self.tts, self.options = asr, llm, tts, options

    @classmethod
    def load(
        cls,
        asr_model: str | None = None,
        asr_backend: str = "faster-whisper",
        llm: str | None = None,
        tts: str = "piper",
        voice: str | None = None,
        options: CascadeOptions = CascadeOptions(),
        asr_options: AsrOptions = AsrOptions(),
        device: str = "cpu",
    ) -> CascadePipeline:
        return cls(
            load_asr(asr_model, asr_backend, asr_options, device),
            ChatLLM.load(llm, device=device),
            load_tts(tts, voice),
            options,
        )

    @property
    def sample_rate(self) -> int:
        return self.tts.sample_rate

    def run(
        self, audio: np.ndarray, history: list[dict[str, str]] | None = None, *, speech_end: float | None = None
    ) -> Iterator[Event]:
        """Answer the speech in `audio` (16 kHz mono); `history` holds earlier chat turns.
        `speech_end` is when the user stopped speaking (a live caller's VAD decision; default: now)."""
        if self.options.check_speech:
            require_speech(audio)
        yield SpeechEnded(duration_s=len(audio) / SAMPLE_RATE, t=now() if speech_end is None else speech_end)

        t = now()
        transcript = self.asr.transcribe(audio).text.strip()
        yield StageTiming(stage="asr", seconds=now() - t)
        yield Transcript(text=transcript)
        if not transcript:
            yield ErrorEvent(message="no words were recognized in the input speech")
            return

        messages = [{"role": "system", "content": self.options.system_prompt}, *(history or [])]
        messages.append({"role": "user", "content": transcript})
        prompt = len(self.llm.chat_ids(messages)[0])
        room = self.llm.context_length - self.options.generation.max_new_tokens
        if prompt > room:  # said out loud, not cut silently: the LLM would lose the beginning of the request
            yield ErrorEvent(message=f"the request is {len(audio) / SAMPLE_RATE / 60:.1f} min of speech, {prompt} tokens of "
                                     f"text with the conversation so far; the LLM reads at most {room} before its answer: "
                                     "ask it in shorter pieces (to write it down, use `omni transcribe`)")
            return
        chunker = SentenceChunker(self.options.chunker)
        answer: list[str] = []
        spoken = 0
        t = now()
        for step in self.llm.stream_chat(messages, self.options.generation):
            if not step.text:
                continue
            answer.append(step.text)
            yield TextDelta(text=step.text)
            for piece in chunker.feed(step.text):
                yield from self._speak(piece, spoken)
                spoken += 1
        for piece in chunker.flush():
            yield from self._speak(piece, spoken)
            spoken += 1
        yield Done(text="".join(answer).strip(), transcript=transcript)

    def _speak(self, piece: str, index: int) -> Iterator[Event]:
        yield TextSegment(text=piece, index=index)
        t = now()
        samples = self.tts.synthesize(clean_for_speech(piece))
        yield StageTiming(stage="tts", seconds=now() - t)
        if samples.size:
            yield AudioChunk(samples=samples, sample_rate=self.tts.sample_rate, index=index)

    def respond(self, audio: np.ndarray, history: list[dict[str, str]] | None = None) -> Response:
        return collect(self.run(audio, history), self.sample_rate)

    def prepare(self, history: list[dict[str, str]]) -> None:
        """Compute the KV cache of the next turn's fixed beginning (the system prompt and
        `history`) now, while the user speaks: the turn then computes only the request."""
        messages = [{"role": "system", "content": self.options.system_prompt}, *history]
        self.llm.prepare(self.llm.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    def warm_up(self) -> None:
        """Each model once (ASR on a second of quiet noise, the LLM on the system prompt, whose
        KV cache is then kept, TTS on a short sentence), so that the first turn of a process
        pays no first-call cost."""
        noise = (0.01 * np.random.default_rng(0).standard_normal(SAMPLE_RATE)).astype(np.float32)
        self.asr.transcribe(noise)
        messages = [{"role": "system", "content": self.options.system_prompt}, {"role": "user", "content": "Hello."}]
        for _ in self.llm.stream_chat(messages, GenerationOptions(max_new_tokens=3)):
            pass
        self.tts.synthesize("Hello there.")
