"""Speech recognition: Whisper behind one interface, two backends over the same weights.

- `faster-whisper` (CTranslate2, int8 on CPU): the default, several times faster on CPU;
- `openai-whisper` (the reference torch implementation);
- `e2e`: an end-to-end speech LLM asked to repeat what was said (its ASR task), so that
  what the end-to-end model *hears* is measured with the same references and WER.
The Whisper backends decode with the same options (`AsrOptions`), so their outputs are comparable.
`load_asr` resolves the model spec through the registry. This module knows nothing
about pipelines or the CLI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from omni_cli.audio import SAMPLE_RATE
from omni_cli.errors import ConfigError, ModelNotFoundError
from omni_cli.registry import hub_offline, resolve_whisper

BACKENDS = ("faster-whisper", "openai-whisper", "e2e")


@dataclass(frozen=True)
class AsrOptions:
    beam_size: int = 5  # beam search width (1 = greedy)
    language: str | None = None  # None: English for .en models, detected otherwise
    condition_on_previous_text: bool = True  # feed the previous window's text as the prompt
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # fallback when a window decodes badly;
    # (0.0,) is fully deterministic (the fallback samples)
    compute_type: str = "int8"  # faster-whisper on CPU: int8 | float32 (openai-whisper runs float32 on CPU)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)  # CPU threads (faster-whisper's own default oversubscribes small machines)


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Transcription:
    text: str
    segments: tuple[Segment, ...]
    language: str
    duration_s: float


class ASR(Protocol):
    backend: str
    label: str

    def transcribe(self, audio: np.ndarray) -> Transcription: ...


def join_segments(segments: list[Segment]) -> str:
    return " ".join(s.text.strip() for s in segments if s.text.strip())


class FasterWhisperASR:
    backend = "faster-whisper"

    def __init__(self, model: str | None = None, options: AsrOptions = AsrOptions(), device: str = "cpu"):
        from faster_whisper import WhisperModel

        resolved = resolve_whisper(model, need="ct2")
        self.label = resolved.label
        self.options = options
        source = str(resolved.ct2_dir) if resolved.ct2_dir else resolved.remote_name
        kind, _, index = device.partition(":")
        compute_type = options.compute_type if kind == "cpu" else "float16"
        def load(local_only: bool):
            return WhisperModel(
                source, device=kind, device_index=int(index or 0), compute_type=compute_type,
                cpu_threads=options.threads, local_files_only=local_only,
            )

        try:
            try:  # a folder, or a hub model already in the local hub cache
                self.model = load(local_only=True)
            except Exception:  # noqa: BLE001
                if resolved.ct2_dir is not None or hub_offline():
                    raise
                self.model = load(local_only=False)
        except Exception as exc:  # noqa: BLE001 - a hub fetch or a corrupt folder; say which
            raise ModelNotFoundError(
                f"could not load Whisper '{source}' with faster-whisper ({type(exc).__name__}: {str(exc)[:120]}); "
                "offline, use the embedded 'tiny.en' or a local CTranslate2 folder"
            ) from exc

    def transcribe(self, audio: np.ndarray) -> Transcription:
        o = self.options
        segments, info = self.model.transcribe(
            audio,
            beam_size=o.beam_size,
            language=o.language,
            condition_on_previous_text=o.condition_on_previous_text,
            temperature=list(o.temperatures),
        )
        segs = [Segment(s.start, s.end, s.text) for s in segments]
        return Transcription(join_segments(segs), tuple(segs), info.language, len(audio) / SAMPLE_RATE)


class OpenAIWhisperASR:
    backend = "openai-whisper"

    def __init__(self, model: str | None = None, options: AsrOptions = AsrOptions(), device: str = "cpu"):
        import torch
        import whisper

        resolved = resolve_whisper(model, need="openai")
        self.label = resolved.label
        self.options = options
        self.device = device
        source = str(resolved.openai_checkpoint) if resolved.openai_checkpoint else resolved.remote_name
        try:
            self.model = whisper.load_model(source, device=device)
        except Exception as exc:  # noqa: BLE001
            raise ModelNotFoundError(
                f"could not load Whisper '{source}' with openai-whisper ({type(exc).__name__}: {str(exc)[:120]}); "
                "offline, use the embedded 'tiny.en' or a local checkpoint"
            ) from exc
        if resolved.openai_checkpoint:
            heads = torch.load(resolved.openai_checkpoint, map_location="cpu", weights_only=True).get("alignment_heads")
            if heads:
                dims = self.model.dims
                mask = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
                for layer, head in heads:
                    mask[layer, head] = True
                self.model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)

    def transcribe(self, audio: np.ndarray) -> Transcription:
        o = self.options
        language = o.language or ("en" if not self.model.is_multilingual else None)
        result = self.model.transcribe(
            audio,
            fp16=self.device != "cpu",
            language=language,
            beam_size=o.beam_size if o.beam_size > 1 else None,
            best_of=5,
            condition_on_previous_text=o.condition_on_previous_text,
            temperature=o.temperatures,
            verbose=None,
        )
        segs = [Segment(s["start"], s["end"], s["text"]) for s in result["segments"]]
        return Transcription(join_segments(segs), tuple(segs), result.get("language") or "en", len(audio) / SAMPLE_RATE)


class SpeechLLMASR:
    """An end-to-end speech LLM as a transcriber: its answer to the repeat prompt, one window
    of at most `window_s` seconds at a time (the speech encoder's context)."""

    backend = "e2e"

    def __init__(self, model=None, device: str = "cpu", window_s: float = 30.0, speech_llm=None, beam: int | None = None):
        from omni_cli.e2e.load import load_speech_llm

        self.model = speech_llm if speech_llm is not None else load_speech_llm(model, device)
        self.model.hear_with(beam)
        self.label = f"e2e:{model or 'default'}"
        self.window = int(window_s * SAMPLE_RATE)

    def transcribe(self, audio: np.ndarray) -> Transcription:
        segments = []
        for start in range(0, max(len(audio), 1), self.window):
            text = self.model.transcribe(audio[start : start + self.window])
            end = min(len(audio), start + self.window)
            segments.append(Segment(start / SAMPLE_RATE, end / SAMPLE_RATE, text))
        return Transcription(join_segments(segments), tuple(segments), "en", len(audio) / SAMPLE_RATE)


def load_judge(model: str | None = None, backend: str = "faster-whisper", beam_size: int = 5, device: str = "cpu",
               threads: int | None = None) -> ASR:
    """The Whisper that transcribes spoken answers for ASR-WER, everywhere the project reports it
    (eval, benches, model card): decoded deterministically (no sampled temperature fallback),
    so the same audio always gets the same transcript, and each window (Whisper goes on from
    the last timestamp it decoded) without what it heard before as its prompt. Without the
    temperature fallback that Whisper escapes a loop by, a prompted window could repeat the
    answer's last phrase to its token limit ("and this is the Christmas tree, and this is the
    Christmas tree, ...": 195 errors on a 65-word answer of 22 s), and whether it did turned on
    the audio's least bits (the same answer saved as 16-bit WAV and read back looped, or did not):
    one such answer in 40 doubled a corpus ASR-WER. Unprompted, 80 answers of each pipeline were
    heard as before within 0.2 points, and the loops were gone."""
    extra = {} if threads is None else {"threads": threads}
    options = AsrOptions(beam_size=beam_size, temperatures=(0.0,), condition_on_previous_text=False, **extra)
    return load_asr(model, backend, options, device)


def load_asr(model: str | None = None, backend: str = "faster-whisper", options: AsrOptions = AsrOptions(), device: str = "cpu",
             e2e_beam: int | None = None) -> ASR:
    """`model`: a Whisper spec; for the e2e backend, an end-to-end model spec (None: the default)
    and `e2e_beam` its hearing beam (None: the model's own)."""
    if backend == "faster-whisper":
        return FasterWhisperASR(model, options, device)
    if backend == "openai-whisper":
        return OpenAIWhisperASR(model, options, device)
    if backend == "e2e":
        return SpeechLLMASR(model, device, beam=e2e_beam)
    raise ConfigError(f"unknown --asr-backend '{backend}': choose one of {', '.join(BACKENDS)}")

