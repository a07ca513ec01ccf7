"""Built-in evaluation sets for `omni eval --bench NAME`, made once from registry data (DATA.md).

- `real-speech`: real human speech with reference transcripts, the `pocketsphinx` and `mfa`
  sets (LibriVox/LibriSpeech readings, Common Voice clips, spoken commands); scores the ASR
  and runs both pipelines on real voices.
- `instructs2s-eval`: like the published InstructS2S-Eval: AlpacaEval's `helpful_base` and
  `vicuna` instructions with code and math removed (`build_data.speakable`), each spoken by a
  voice of the held-out family (eSpeak NG British English) that no training data uses; the
  instruction is the reference transcript. AlpacaEval is CC BY-NC 4.0 and evaluation-only.

Each is built into `<cache>/benches/<name>/` (items.jsonl + audio), atomically, once; the build
is reproducible (voice, rate and pitch are drawn from a generator seeded by the item id).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from omni_cli.cache import atomic_dir, cache_dir
from omni_cli.errors import InputError
from omni_cli.evaluate import EvalItem


@dataclass(frozen=True)
class Bench:
    name: str
    description: str
    build: Callable[[Path], Iterator[dict]]  # output folder -> rows: id, audio (relative), reference


def _real_speech(out: Path) -> Iterator[dict]:
    from omni_cli import data

    for name in ("pocketsphinx", "mfa"):
        for item in data.load(name):
            rel = Path(item["audio"]).relative_to(data.data_dir(name))
            (out / name / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(item["audio"], out / name / rel)
            yield {"id": f"{name}/{item['id']}", "audio": f"{name}/{rel}", "reference": item["text"]}


INSTRUCTS2S_SUBSETS = ("helpful_base", "vicuna")


def _instructs2s_eval(out: Path) -> Iterator[dict]:
    from omni_cli import data
    from omni_cli.audio import SAMPLE_RATE, write_wav
    from omni_cli.e2e.build_data import Speaker, pick_voice, speakable

    speaker = Speaker()
    for item in data.load("alpaca-eval"):
        text = " ".join(item["instruction"].split())
        if item.get("subset") not in INSTRUCTS2S_SUBSETS or not speakable(text, max_chars=1000):
            continue
        voice = pick_voice(random.Random(f"instructs2s-eval:{item['id']}"), heldout=True)
        write_wav(out / "audio" / f"{item['id']}.wav", speaker.speak(text, voice), SAMPLE_RATE)
        yield {"id": item["id"], "audio": f"audio/{item['id']}.wav", "reference": text,
               "subset": item["subset"], "voice": voice.label}


BENCHES = {
    b.name: b
    for b in (
        Bench("real-speech", "real human speech with transcripts: pocketsphinx + mfa (68 utterances)", _real_speech),
        Bench("instructs2s-eval", "AlpacaEval helpful_base + vicuna, no code or math, spoken by held-out eSpeak "
              "British voices (InstructS2S-Eval-like; CC BY-NC 4.0, evaluation only)", _instructs2s_eval),
    )
}


def bench_dir(name: str) -> Path:
    return cache_dir() / "benches" / name


def load_bench(name: str) -> list[EvalItem]:
    """The items of bench `name`, building it the first time."""
    if name not in BENCHES:
        raise InputError(f"unknown bench '{name}': choose from {', '.join(BENCHES)}")
    folder = bench_dir(name)
    if not (folder / "items.jsonl").is_file():
        shutil.rmtree(folder, ignore_errors=True)  # a foreign or older layout
        with atomic_dir(folder) as tmp:
            rows = list(BENCHES[name].build(tmp))
            (tmp / "items.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    rows = [json.loads(line) for line in (folder / "items.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    return [EvalItem(r["id"], str(folder / r["audio"]), r.get("reference"), r.get("answer")) for r in rows]
