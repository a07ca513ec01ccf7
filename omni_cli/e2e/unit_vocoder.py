"""Unit vocoders behind one interface: discrete speech units in, waveform out.

- `PiperUnitVocoder` (the offline default): the units are a Piper voice's phoneme ids
  (without its pad/BOS/EOS ids, which it puts back), and the voice's VITS network turns
  them into audio (onnxruntime). Chunks end between words, so they sound natural.
- `UnitHiFiGANVocoder` (in `unit_hifigan.py`): the published mHuBERT-unit vocoder.
`load_unit_vocoder` picks one from a registry name or path. `UnitChunker` decides when
pending units are handed to the vocoder (every Omega units, at an allowed boundary).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from omni_cli.errors import ModelNotFoundError


# Omega, the units per streamed chunk when none is asked for, for phoneme units, from a measured
# sweep (README "Omega": 20 AlpacaEval items, the shipped default): omega 20 speaks as
# intelligibly as 40 or one chunk at the end (corpus ASR-WER 43.3 % vs 42.9 % and 42.2 %) with
# first audio at 0.50 s instead of 0.69 s and 2.67 s; 10 and 5 start sooner (0.42 s, 0.38 s) but
# cost 8 to 13 points of ASR-WER and slow the speech (more, shorter chunks). A phoneme lasts
# several times as long as a 50 Hz HuBERT unit, hence far fewer than the unit HiFi-GAN's 40.
PIPER_DEFAULT_OMEGA = 20
# The first chunk is smaller, each later one doubling up to Omega (evals/chunk_sweep.py, 30
# AlpacaEval-style spoken questions, Omega 20): first chunk 20 / 10 / 6 / 3 units gave first
# audio 0.42 / 0.34 / 0.30 / 0.29 s (median) at corpus ASR-WER 53.6 / 44.5 / 45.4 / 44.6 %:
# no cost in intelligibility; 6 for its slightly lower p90 (0.45 s against 0.47 s).
PIPER_DEFAULT_FIRST_CHUNK = 6


class UnitVocoder(Protocol):
    sample_rate: int
    num_units: int  # K: valid units are 0 .. K - 1
    default_omega: int  # units per chunk unless --omega says otherwise

    def units_to_audio(self, units: list[int]) -> np.ndarray: ...


class PiperUnitVocoder:
    """A Piper voice as a phoneme-unit vocoder."""

    def __init__(self, voice: str | None = None):
        from omni_cli.tts import PiperTTS

        self.tts = PiperTTS(voice)
        id_map = self.tts.voice.config.phoneme_id_map
        self.sample_rate = self.tts.sample_rate
        self.num_units = 1 + max(i for ids in id_map.values() for i in ids)
        self.pad, self.bos, self.eos = id_map["_"][0], id_map["^"][0], id_map["$"][0]
        self.special = frozenset((self.pad, self.bos, self.eos))
        # word and phrase ends: where a chunk may stop
        self.boundary_units = frozenset(id_map[p][0] for p in (" ", ".", ",", "?", "!", ";", ":") if p in id_map)
        self.label = f"piper:{self.tts.label}"
        self.default_omega = PIPER_DEFAULT_OMEGA
        self.default_first_chunk = PIPER_DEFAULT_FIRST_CHUNK

    def text_to_units(self, text: str) -> list[int]:
        """The unit sequence a speech decoder should learn for `text` (CTC targets, deduplicated)."""
        units = [u for sentence in self.tts.phoneme_ids(text) for u in sentence if u not in self.special]
        return [u for i, u in enumerate(units) if i == 0 or u != units[i - 1]]

    def units_to_audio(self, units: list[int]) -> np.ndarray:
        units = [u for u in units if 0 <= u < self.num_units and u not in self.special]
        if not units:
            return np.zeros(0, dtype=np.float32)
        ids = [self.bos, self.pad]
        for u in units:
            ids += [u, self.pad]
        ids.append(self.eos)
        return self.tts.ids_to_audio(ids)


def load_unit_vocoder(spec: str | None) -> UnitVocoder:
    """'piper' / a Piper voice .onnx -> PiperUnitVocoder; a folder or file of the fairseq
    CodeHiFiGAN format (config.json + checkpoint) -> the unit HiFi-GAN."""
    from omni_cli.registry import PIPER_JOE

    if spec in (None, "", "piper", PIPER_JOE.name):
        return PiperUnitVocoder()
    path = Path(spec).expanduser()
    if path.suffix == ".onnx":
        return PiperUnitVocoder(str(path))
    if path.exists():
        from omni_cli.e2e.unit_hifigan import UnitHiFiGANVocoder

        return UnitHiFiGANVocoder.from_files(path)
    raise ModelNotFoundError(
        f"unit vocoder '{spec}' not found: use 'piper', a Piper voice .onnx, or a unit HiFi-GAN folder (config.json + checkpoint)"
    )


class UnitChunker:
    """Collects units as they stream in; hands out a chunk once enough are pending.

    The first chunk needs `first` units (default: `omega`), each later one twice the last,
    up to `omega`: the first audio comes early, later chunks are long enough to sound whole.
    With `boundaries` (unit ids that end a word), a chunk stops at the last boundary among
    the pending units, so no word is cut in two; without a boundary the chunk waits, up to
    4 x its size. `omega=None` hands everything out at the end only (no streaming)."""

    def __init__(self, omega: int | None, boundaries: frozenset[int] | None = None, first: int | None = None):
        if omega is not None and omega < 1:
            raise ValueError(f"omega must be >= 1 or None, got {omega}")
        if first is not None and first < 1:
            raise ValueError(f"the first chunk must be >= 1 unit, got {first}")
        self.omega = omega
        self.size = None if omega is None else min(omega, first or omega)
        self.boundaries = boundaries
        self.pending: list[int] = []

    def push(self, units: list[int]) -> Iterator[list[int]]:
        self.pending.extend(units)
        while self.size is not None and len(self.pending) >= self.size:
            cut = len(self.pending)
            if self.boundaries:
                last = max((i for i, u in enumerate(self.pending) if u in self.boundaries), default=-1)
                if last >= 0:
                    cut = last + 1
                elif len(self.pending) < 4 * self.size:
                    return
            chunk, self.pending = self.pending[:cut], self.pending[cut:]
            self.size = min(self.omega, 2 * self.size)
            yield chunk
            if self.boundaries and len(self.pending) < self.size:
                return

    def flush(self) -> Iterator[list[int]]:
        if self.pending:
            chunk, self.pending = self.pending, []
            yield chunk
