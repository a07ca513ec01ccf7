"""The one way to build a pipeline: `load_pipeline(mode, PipelineConfig(...))`.

`respond`, `talk` and `eval` (its workers and Ray actors too) build their pipelines here, from
one frozen, plain-data config. `Pipeline` states what they rely on: a mode, the sample rate of
the spoken answer, and `run`, which turns a spoken request into the typed event stream of
`events.py` (cascade: Whisper -> LLM -> TTS in `baselines/cascade.py`; end-to-end: the speech
LLM and its unit vocoder in `e2e/pipeline.py`). A new pipeline implements `Pipeline` and gets a
branch in `load_pipeline`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from omni_cli.errors import ConfigError
from omni_cli.events import Event

MODES = ("cascade", "e2e")


@runtime_checkable
class Pipeline(Protocol):
    """A spoken request in (16 kHz mono float32), events out: Transcript (cascade),
    TextDelta, AudioChunk, StageTiming, ..., Done; an ErrorEvent where the request cannot be
    answered (silence, too long). `history` holds earlier chat turns; `speech_end` is when the
    user stopped speaking (a live caller's VAD decision; default: now)."""

    mode: str

    @property
    def sample_rate(self) -> int: ...

    def run(self, audio: np.ndarray, history: list[dict[str, str]] | None = None, *,
            speech_end: float | None = None) -> Iterator[Event]: ...

    def warm_up(self) -> None: ...

    def prepare(self, history: list[dict[str, str]]) -> None: ...  # the next turn's fixed beginning, computed ahead


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a pipeline is built from (plain data: it travels to worker processes)."""

    asr_model: str | None = None  # cascade Whisper (None: the embedded tiny.en)
    asr_backend: str = "faster-whisper"
    beam_size: int = 5
    threads: int | None = None  # CPU threads for the ASR (None: the library's default)
    llm: str | None = None  # cascade LLM (None: the embedded SmolLM2)
    tts: str = "piper"
    voice: str | None = None
    system_prompt: str | None = None  # cascade (None: the spoken-style prompt)
    e2e_model: str | None = None  # None: the offline default
    vocoder: str | None = None  # None: the e2e model's own
    e2e_beam: int | None = None  # a ctc adaptor's hearing beam (None: the model's own)
    omega: int | None = 40  # e2e units per vocoder chunk (None: vocode once, at the end)
    max_new_tokens: int = 160
    max_sentences: int = 3  # brief, for speech: stop at the sentence end that reaches 3 sentences or 60 words (0: no limit)
    device: str = "cpu"
    llm_dtype: str | None = None  # the LLM's weights: "float32" or "bfloat16" (None: `llm.inference_dtype`'s choice)


def load_pipeline(mode: str, config: PipelineConfig, warm: bool = True) -> Pipeline:
    """The `mode` ("cascade" or "e2e") pipeline of `config`, warmed up (each model run once,
    so the first turn is as fast as later ones) unless `warm` is False."""
    from omni_cli.llm import inference_dtype

    dtype = inference_dtype(config.device, config.llm_dtype)  # an unknown dtype is refused before anything loads
    pipeline = _load(mode, config)
    if dtype is not None:  # the LLM only: the other models are small, or not torch
        chat_llm(pipeline).model.to(dtype)
    if warm:
        pipeline.warm_up()
    return pipeline


def chat_llm(pipeline: Pipeline):
    """The pipeline's LLM (`ChatLLM`): the cascade's, or the one inside the speech LLM; None for
    a pipeline that has neither."""
    model = getattr(pipeline, "model", None)
    return getattr(pipeline, "llm", None) or getattr(model, "llm", None)


def _load(mode: str, config: PipelineConfig) -> Pipeline:
    from omni_cli.llm import GenerationOptions
    from omni_cli.registry import require_device

    require_device(config.device)
    generation = GenerationOptions(max_new_tokens=config.max_new_tokens, max_sentences=config.max_sentences)
    if mode == "e2e":
        from omni_cli.e2e.load import load_e2e_pipeline
        from omni_cli.e2e.pipeline import E2EOptions

        return load_e2e_pipeline(config.e2e_model, config.vocoder, E2EOptions(omega=config.omega, generation=generation, beam=config.e2e_beam), config.device)
    if mode == "cascade":
        from baselines.cascade import CascadeOptions, CascadePipeline
        from omni_cli.asr import AsrOptions
        from omni_cli.llm import SPOKEN_SYSTEM_PROMPT

        threads = {} if config.threads is None else {"threads": config.threads}
        options = CascadeOptions(system_prompt=config.system_prompt or SPOKEN_SYSTEM_PROMPT, generation=generation)
        return CascadePipeline.load(config.asr_model, config.asr_backend, config.llm, config.tts, config.voice, options,
                                    AsrOptions(beam_size=config.beam_size, **threads), config.device)
    raise ConfigError(f"unknown mode {mode!r}: choose from {', '.join(MODES)}")


def with_omega(pipeline: Pipeline, omega: int | None) -> Pipeline:
    """The same end-to-end pipeline (model and vocoder shared, not reloaded) speaking every
    `omega` units (None: once, at the end)."""
    import dataclasses

    from omni_cli.e2e.pipeline import E2EPipeline

    if not isinstance(pipeline, E2EPipeline):
        raise ConfigError("only an end-to-end pipeline has an omega")
    return E2EPipeline(pipeline.model, pipeline.vocoder, dataclasses.replace(pipeline.options, omega=omega))


def omega_of(pipeline: Pipeline) -> int | str | None:
    """The chunk size an end-to-end pipeline speaks in ("all": once, at the end); None for others."""
    from omni_cli.e2e.pipeline import E2EPipeline

    if not isinstance(pipeline, E2EPipeline):
        return None
    return pipeline.options.omega or "all"
