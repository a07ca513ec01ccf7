"""Speech synthesis behind one interface: text in, float32 mono samples out.

- `PiperTTS` (default): a Piper VITS voice run by piper-tts on onnxruntime. It also
  exposes the voice's phoneme-id level (`phoneme_ids`, `ids_to_audio`), which the
  end-to-end mode uses as its discrete speech units.
- `EspeakTTS`: eSpeak NG through pyttsx3 (rule-based; many voices and rates).
This module knows nothing about pipelines.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile as sf

from omni_cli.errors import ConfigError, ModelNotFoundError
from omni_cli.registry import ESPEAK, resolve_voice


class TTS(Protocol):
    sample_rate: int
    label: str

    def synthesize(self, text: str) -> np.ndarray: ...


@dataclass(frozen=True)
class PiperOptions:
    length_scale: float | None = None  # > 1 speaks slower (None: the voice's own setting)
    noise_scale: float | None = None  # variation of the voice (None: the voice's own)
    noise_w_scale: float | None = None  # variation of phoneme durations (None: the voice's own)


class PiperTTS:
    def __init__(self, voice: str | None = None, options: PiperOptions = PiperOptions()):
        from piper import PiperVoice

        onnx, config = resolve_voice(voice)
        self.voice = PiperVoice.load(onnx, config_path=config)
        self.sample_rate = self.voice.config.sample_rate
        self.label = onnx.stem
        self.options = options

    def _syn_config(self):
        from piper import SynthesisConfig

        o = self.options
        return SynthesisConfig(length_scale=o.length_scale, noise_scale=o.noise_scale, noise_w_scale=o.noise_w_scale)

    def synthesize(self, text: str) -> np.ndarray:
        chunks = [c.audio_float_array for c in self.voice.synthesize(text, syn_config=self._syn_config())]
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, dtype=np.float32)

    # -- the phoneme-unit level (the end-to-end mode's discrete units) --------------------

    def phoneme_ids(self, text: str) -> list[list[int]]:
        """Phoneme ids of each sentence of `text`, with the voice's BOS/pad/EOS ids."""
        return [self.voice.phonemes_to_ids(p) for p in self.voice.phonemize(text) if p]

    def ids_to_audio(self, ids: list[int]) -> np.ndarray:
        audio = self.voice.phoneme_ids_to_audio(ids, self._syn_config())
        return np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)


class EspeakTTS:
    """eSpeak NG through pyttsx3; writes each piece to a temporary wav and reads it back."""

    sample_rate = 22_050

    def __init__(self, voice: str | None = None, rate: int | None = None):
        import pyttsx3

        if ESPEAK.installed_path() is None:
            raise ModelNotFoundError(f"espeak-ng is not installed: run `{ESPEAK.install}`")
        self.engine = pyttsx3.init("espeak")
        if voice:
            known = {v.id for v in self.engine.getProperty("voices")}
            known |= {k.split("/", 1)[-1] for k in known}
            if voice.split("+", 1)[0] not in known:
                english = sorted(k for k in known if "/" not in k and k.startswith("en"))
                raise ConfigError(f"unknown eSpeak NG voice '{voice}': try one of {', '.join(english)} (a '+f2'-style variant may follow)")
            self.engine.setProperty("voice", voice)
        if rate:
            self.engine.setProperty("rate", rate)
        self.label = f"espeak-ng{':' + voice if voice else ''}"

    def synthesize(self, text: str) -> np.ndarray:
        fd, tmp = tempfile.mkstemp(suffix=".wav")
        os.close(fd)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pyttsx3 prints "Audio saved to ..." on stdout, the answer's channel
                self.engine.save_to_file(text, tmp)
                self.engine.runAndWait()
            audio, sr = sf.read(tmp, dtype="float32", always_2d=True)
        finally:
            Path(tmp).unlink(missing_ok=True)
        audio = audio.mean(axis=1)
        if sr != self.sample_rate:
            from omni_cli.audio import resample

            audio = resample(audio, sr, self.sample_rate)
        return audio


TTS_ENGINES = ("piper", "espeak")


def load_tts(engine: str = "piper", voice: str | None = None) -> TTS:
    if engine == "piper":
        return PiperTTS(voice)
    if engine == "espeak":
        return EspeakTTS(voice)
    raise ConfigError(f"unknown --tts '{engine}': choose one of {', '.join(TTS_ENGINES)}")
