"""The model card's evaluation items without the 19k training items: only the held-out items of
`omni data build --out runs/v2/data --size 20000 --answered 4000 --heldout-fraction 0.05 --seed 0`
(1,033 spoken by the held-out voices, the 197 among the first 4,000 answered by the LLM), in
the order the full build writes them, so `evals.adaptor_wer`, `evals.e2e_quality` and
`evals.unit_error` score the same items on a fresh machine (about 5 minutes here; the item ids,
voices and noise come from the seed, so the audio is the same).

    python -m evals.heldout_set [runs/v2/data]
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.progress import Progress


def main() -> None:
    from omni_cli.e2e.build_data import BuildOptions, build_set

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/v2/data")
    steps = build_set(out, BuildOptions(size=20000, answered=4000, heldout_fraction=0.05, seed=0), workers=2, heldout_only=True)
    p = next(steps)
    print(f"{p.items} held-out items, {p.answered} of them answered", file=sys.stderr, flush=True)
    with Progress(transient=True) as bar:
        task = bar.add_task("speaking, then answering", total=p.total, completed=p.done)
        for p in steps:
            bar.update(task, completed=p.done)
    print(f"{p.items} items in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
