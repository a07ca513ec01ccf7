"""Unit vocoders behind one interface: discrete speech units in, waveform out.

- `PiperUnitVocoder` (the offline default): the units are a Piper voice's phoneme ids
  (without its pad/BOS/EOS ids, which it puts back), and the voice's VITS network turns
  them into audio (onnxruntime). Chunks end between words, later ones at phrase ends, so they
  sound natural.
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


# Omega, the units per streamed chunk when none is asked for, for phoneme units. A phoneme lasts
# several times as long as a 50 Hz HuBERT unit, hence far fewer than the unit HiFi-GAN's 40 units
# of 20 ms; a Piper chunk is vocoded as an utterance of its own, so each join costs intonation.
# Later chunks end at a phrase end (punctuation) after at least Omega units, and the first after
# at least PIPER_DEFAULT_FIRST_CHUNK units at a word end (it had been cut at the last word end
# pending, often after the answer's first word alone: "The" said alone was heard as "that" in 27
# of 49 answers starting with it). `python -m evals.chunk_sweep --limit 24 --first-chunks 1,6,10,16
# --omegas 20,40 --first-words 0` (24 AlpacaEval questions, the v3.13 model, one run), first
# audio median (s) / corpus / per-item median ASR-WER of the spoken answer (%):
#   Omega 20: first chunk 1: 0.71 / 14.1 / 7.2;  6: 0.77 / 8.5 / 7.1;  10: 0.80 / 9.5 / 6.1;  16: 0.89 / 31.3 / 4.5
#   Omega 40: first chunk 1: 0.66 / 11.1 / 9.4;  6: 0.74 / 8.9 / 7.1;  10: 0.81 / 7.9 / 5.6;  16: 0.93 / 8.9 / 4.9
#   (the cascade, same run: 1.38 s / 3.9 / 0.0; 31.3: the judge looping on one answer)
# On the true units of 80 held-out answers, streamed token by token: corpus ASR-WER 12.0 % as
# chunked before (Omega 20, first chunk 6), 8.6 % as now; 40 of them vocoded whole: 8.5 %.
PIPER_DEFAULT_OMEGA = 40
PIPER_DEFAULT_FIRST_CHUNK = 10


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
        # phrase ends (punctuation) and word ends: where a chunk may stop
        self.phrase_units = frozenset(id_map[p][0] for p in (".", ",", "?", "!", ";", ":") if p in id_map)
        self.sentence_units = frozenset(id_map[p][0] for p in (".", "?", "!") if p in id_map)
        self.boundary_units = self.phrase_units | {id_map[" "][0]}
        self.label = f"piper:{self.tts.label}"
        self.default_omega = PIPER_DEFAULT_OMEGA
        self.default_first_chunk = PIPER_DEFAULT_FIRST_CHUNK

    def text_to_units(self, text: str) -> list[int]:
        """The unit sequence a speech decoder should learn for `text` (CTC targets, deduplicated)."""
        units = [u for sentence in self.tts.phoneme_ids(text) for u in sentence if u not in self.special]
        return [u for i, u in enumerate(units) if i == 0 or u != units[i - 1]]

    def units_to_audio(self, units: list[int]) -> np.ndarray:
        """Each sentence (units up to a . ? or !) said as an utterance of its own, as Piper says
        text: the voice says a long run of sentences as one utterance less clearly."""
        units = [u for u in units if 0 <= u < self.num_units and u not in self.special]
        sentences, start = [], 0
        for i, u in enumerate(units):
            if u in self.sentence_units and (i + 1 == len(units) or units[i + 1] not in self.sentence_units):
                sentences.append(units[start : i + 1])
                start = i + 1
        sentences.append(units[start:])
        audio = [self._utterance(s) for s in sentences if s]
        return np.concatenate(audio) if audio else np.zeros(0, dtype=np.float32)

    def _utterance(self, units: list[int]) -> np.ndarray:
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
    With `boundaries` (unit ids that end a word), a chunk of size n ends at a word end after at
    least n units (the last such end among the pending units), so no word is cut in two and no
    chunk is a lone short word (vocoded alone, "the" sounded as "that"); with `phrase_ends` too
    (ids that end a phrase: punctuation), a chunk after the first ends at a phrase end after at
    least n units, so each is said with a phrase's intonation, as a TTS says a sentence. Without
    such an end a chunk waits, up to 4 x its size, then ends at the last word end there is.
    `omega=None` hands everything out at the end only (no streaming)."""

    def __init__(self, omega: int | None, boundaries: frozenset[int] | None = None, first: int | None = None,
                 phrase_ends: frozenset[int] | None = None):
        if omega is not None and omega < 1:
            raise ValueError(f"omega must be >= 1 or None, got {omega}")
        if first is not None and first < 1:
            raise ValueError(f"the first chunk must be >= 1 unit, got {first}")
        self.omega = omega
        self.size = None if omega is None else min(omega, first or omega)
        self.boundaries = boundaries
        self.phrase_ends = phrase_ends
        self.started = False
        self.pending: list[int] = []

    @classmethod
    def for_vocoder(cls, vocoder, omega: int | None, first: int | None = None) -> "UnitChunker":
        """The chunker a vocoder's units stream through: its word and phrase ends (where it has
        them); `first=None` takes its default first chunk, `first=0` starts at `omega`."""
        first = getattr(vocoder, "default_first_chunk", None) if first is None else (first or None)
        return cls(omega, getattr(vocoder, "boundary_units", None), first, getattr(vocoder, "phrase_units", None))

    def _last_end(self, ends: frozenset[int], at_least: int) -> int | None:
        """The length of the longest pending prefix of at least `at_least` units ending in `ends`."""
        for i in range(len(self.pending) - 1, at_least - 2, -1):
            if self.pending[i] in ends:
                return i + 1
        return None

    def push(self, units: list[int]) -> Iterator[list[int]]:
        self.pending.extend(units)
        while self.size is not None and len(self.pending) >= self.size:
            cut: int | None = len(self.pending)
            if self.boundaries:
                ends = self.phrase_ends if self.started and self.phrase_ends else self.boundaries
                cut = self._last_end(ends, self.size)
                if cut is None and len(self.pending) >= 4 * self.size:  # waited long enough: any word end will do
                    cut = self._last_end(self.boundaries, 1) or len(self.pending)
                if cut is None:
                    return
            chunk, self.pending = self.pending[:cut], self.pending[cut:]
            self.size = min(self.omega, 2 * self.size)
            self.started = True
            yield chunk

    def flush(self) -> Iterator[list[int]]:
        if self.pending:
            chunk, self.pending = self.pending, []
            yield chunk
