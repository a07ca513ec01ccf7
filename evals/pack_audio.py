"""Packs built training sets' audio as Opus (about 13 kbps) into parts small enough to travel
to a GPU machine (`evals/gpu_stage1.py` reads them back), one part a call.

    python -m evals.pack_audio --data runs/v2/data --out .gpu/s1 --parts 3
    python -m evals.pack_audio --data runs/v8/data --data runs/v9/data --out .gpu/s1 --part-mb 60

Each part is `<out>/pN/audio.bin` (the Ogg/Opus files one after another) and `index.json`
(id -> [offset, size]); `<out>/rows.json` holds every item's id, transcript and split. With
several sets, the training items are those `omni train adaptor` takes from them together (an
item whose text another set holds out is left out) and every set's held-out items follow.
`--parts N` deals the items round-robin into N parts; `--part-mb M` fills each part in turn up
to M MiB. Opus at this rate moved the shipped adaptor's held-out CTC WER 47.1 -> 48.5 % (80
items).
"""

from __future__ import annotations

import argparse
import io
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import soundfile as sf

LEVEL = 0.98  # libsndfile's Opus compression level: about 12.8 kbps for speech


def _encode(path: str) -> bytes:
    audio, sr = sf.read(path, dtype="float32")
    buffer = io.BytesIO()
    sf.write(buffer, audio, sr, format="OGG", subtype="OPUS", compression_level=LEVEL)
    return buffer.getvalue()


def pack_rows(data_dirs: list[Path]) -> list[tuple[dict, Path]]:
    """(row, its audio file) of the sets' training items, as training takes them, then their
    held-out items; each id once."""
    from omni_cli.e2e.build_data import read_manifest
    from omni_cli.e2e.train import training_rows

    train = training_rows(data_dirs)[0]
    held = [r for d in data_dirs for r in read_manifest(d) if r["split"] != "train"]
    out, seen = [], set()
    for r in train + held:
        if r["id"] not in seen:
            seen.add(r["id"])
            out.append((r, Path(r["audio"])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, action="append", help="a built set; repeat it for several")
    ap.add_argument("--out", type=Path, required=True)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--parts", type=int, default=3)
    size.add_argument("--part-mb", type=float, help="fill parts up to this many MiB each instead")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    rows = pack_rows(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rows.json").write_text(json.dumps(
        [{"id": r["id"], "instruction": r["instruction"], "split": r["split"], "voice": r["voice"]} for r, _ in rows]))
    limit = int(args.part_mb * 2**20) if args.part_mb else None
    files, index = [], []

    def open_part() -> None:
        (args.out / f"p{len(files)}").mkdir(exist_ok=True)
        files.append((args.out / f"p{len(files)}" / "audio.bin").open("wb"))
        index.append({})

    for _ in range(1 if limit else args.parts):
        open_part()
    with ProcessPoolExecutor(args.workers) as pool:
        for n, ((r, _), blob) in enumerate(zip(rows, pool.map(_encode, [str(path) for _, path in rows], chunksize=64))):
            if limit and files[-1].tell() and files[-1].tell() + len(blob) > limit:
                open_part()
            part = len(files) - 1 if limit else n % args.parts
            index[part][r["id"]] = [files[part].tell(), len(blob)]
            files[part].write(blob)
            if n % 1000 == 0:
                print(f"{n} of {len(rows)}", flush=True)
    for part, f in enumerate(files):
        f.close()
        (args.out / f"p{part}" / "index.json").write_text(json.dumps(index[part]))
    print(f"{len(rows)} items in {len(files)} parts under {args.out}", flush=True)


if __name__ == "__main__":
    main()
