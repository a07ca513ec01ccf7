"""How long end-to-end models take to hear (`SpeechLLM.listen`: encoder(s), adaptor(s), beam
search and the LLM's choice; no answer), as a ratio measured in one run: every model loaded in
one process, warmed once, then run in turn on each recording of a bench, so machine noise hits
them alike. Median and p90 per model, and each median over the first model's.

    python -m evals.hear_time --models runs/v4 omni_cli/e2e/weights/omni-e2e-base-smollm2 --limit 30
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from evals.report import emit


def main() -> None:
    from evals.adaptor_wer import bench_items
    from omni_cli.audio import load_audio
    from omni_cli.e2e.checkpoint import load_omni

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, nargs="+", required=True, help="model folders; the first is the ratios' base")
    ap.add_argument("--bench", default="real-speech", help="a bench of `omni eval --bench` (real human speech by default)")
    ap.add_argument("--limit", type=int, default=30, help="its first N recordings (0: all)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    audio = [load_audio(path) for path, _ in bench_items(args.bench, args.limit)]
    models = {str(folder): load_omni(folder) for folder in args.models}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model.listen(audio[0])
        for a in audio:
            for name, model in models.items():
                start = time.perf_counter()
                model.listen(a)
                seconds[name].append(time.perf_counter() - start)
    base = statistics.median(seconds[str(args.models[0])])
    result = {name: {"median ms": round(1000 * statistics.median(s)), "p90 ms": round(1000 * float(np.percentile(s, 90))),
                     "median / first": round(statistics.median(s) / base, 2)} for name, s in seconds.items()}
    result["items"] = len(audio)
    emit(result, args.json)


if __name__ == "__main__":
    main()
