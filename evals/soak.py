"""Soak run of `omni eval`: a large folder with corrupt items, killed with SIGKILL and resumed.

A folder of N items (default 1000) is made from the real human speech sets (each clip with its
transcript beside it, cycled) with 10 % broken on purpose in several ways (text named .wav, a
WAV cut short, an empty file, random bytes, a WAV of non-finite samples). `omni eval` runs the
cascade over it with --workers 2; when a third of the items are written it is killed with
SIGKILL (the whole process group, workers too), resumed with --resume, killed again at two
thirds, and resumed to the end. The run passes when every good item is scored exactly once
(one complete line in results.jsonl, no error) and every corrupt one is recorded as failed
exactly once.

    python -m evals.soak [--items 1000] [--out runs/soak] [--json soak.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from evals.report import emit

ROOT = Path(__file__).resolve().parents[1]
OMNI = ROOT / ".venv" / "bin" / "omni"
BROKEN = ("text", "cut", "empty", "random", "nonfinite")


def real_clips() -> list[tuple[Path, str]]:
    """(audio, transcript) of the cached real-speech sets, shortest first (`omni data fetch`)."""
    from omni_cli.benches import load_bench

    items = [(Path(i.audio), i.reference or "") for i in load_bench("real-speech")]
    return sorted(items, key=lambda it: sf.info(str(it[0])).duration if it[0].suffix != ".mp3" else 99.0)


def make_folder(folder: Path, n: int, seed: int = 0) -> tuple[set[str], set[str]]:
    """N items in `folder`, 10 % broken; returns (good, broken) item paths as eval ids them."""
    rng = random.Random(seed)
    clips = [c for c in real_clips() if c[0].suffix in (".wav", ".flac")][:30]
    folder.mkdir(parents=True, exist_ok=True)
    broken_at = set(rng.sample(range(n), n // 10))
    good, bad = set(), set()
    for i in range(n):
        if i in broken_at:
            kind = BROKEN[i % len(BROKEN)]
            path = folder / f"{i:04d}-{kind}.wav"
            if kind == "text":
                path.write_text("this is not audio\n")
            elif kind == "cut":
                src = clips[i % len(clips)][0]
                data, sr = sf.read(src, dtype="float32")
                sf.write(path, data, sr, subtype="PCM_16")
                path.write_bytes(path.read_bytes()[: 44 + 200])  # the header promises far more
            elif kind == "empty":
                path.write_bytes(b"")
            elif kind == "random":
                path.write_bytes(rng.randbytes(4096))
            else:
                sf.write(path, np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
            bad.add(str(path))
        else:
            src, text = clips[i % len(clips)]
            path = folder / f"{i:04d}{src.suffix}"
            shutil.copy(src, path)
            path.with_suffix(".txt").write_text(text + "\n")
            good.add(str(path))
    return good, bad


def complete_rows(results: Path) -> list[dict]:
    rows = []
    if results.exists():
        for line in results.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut off by SIGKILL
    return rows


def run_until(command: list[str], results: Path, kill_at: int | None) -> tuple[int | None, float]:
    """Run `command`; SIGKILL its process group once `results` has `kill_at` complete rows."""
    start = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while proc.poll() is None:
        if kill_at is not None and len(complete_rows(results)) >= kill_at:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None, time.monotonic() - start
        time.sleep(0.5)
    return proc.returncode, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("runs/soak"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)

    shutil.rmtree(args.out, ignore_errors=True)
    good, bad = make_folder(args.out / "items", args.items)
    results = args.out / "eval" / "results.jsonl"
    base = [str(OMNI), "eval", str(args.out / "items"), "--modes", "cascade", "--max-new-tokens", "8", "--no-asr-wer",
            "--workers", str(args.workers), "--out", str(args.out / "eval")]
    runs = []
    for kill_at in (args.items // 3, 2 * args.items // 3, None):
        command = base + (["--resume"] if runs else [])
        code, seconds = run_until(command, results, kill_at)
        runs.append({"killed_at_rows": kill_at if code is None else None, "exit_code": code, "seconds": round(seconds, 1),
                     "rows_after": len(complete_rows(results))})
        print(f"run {len(runs)}: {runs[-1]}", file=sys.stderr)

    rows = complete_rows(results)
    seen: dict[str, list[dict]] = {}
    for r in rows:
        seen.setdefault(r["id"], []).append(r)
    scored_once = sum(1 for g in good if len(seen.get(g, [])) == 1 and not seen[g][0]["error"])
    failed_once = sum(1 for b in bad if len(seen.get(b, [])) == 1 and seen[b][0]["error"])
    report = {
        "items": args.items, "good": len(good), "corrupt": len(bad), "runs": runs,
        "good_scored_exactly_once": scored_once, "corrupt_recorded_once": failed_once,
        "duplicated_ids": sorted(i for i, rs in seen.items() if len(rs) > 1)[:10],
        "missing": sorted((good | bad) - set(seen))[:10],
        "good_with_error": sorted(g for g in good if any(r["error"] for r in seen.get(g, [])))[:10],
        "passed": scored_once == len(good) and failed_once == len(bad) and len(rows) == args.items,
    }
    emit(report, args.json)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
