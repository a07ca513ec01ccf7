"""Benchmark of the end-to-end mode, one command, ratios from the same run:

1. Speech decoder cost per text token at answer lengths 50 and 400: ours (incremental,
   KV cache: only the lambda new positions are computed per token), with full causal
   attention (as published) and with an attention window (our own models' option), against
   the published code's approach (the whole prefix re-run after every token), on the same
   weights. Windowed, the work per token is flat; with full attention only the attention
   over the cache grows; the re-run grows with the whole answer.
2. First-audio latency of e2e vs cascade on the same inputs, when trained weights for the
   offline default exist; otherwise reported as not measured.

    python -m evals.bench_e2e [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from evals.report import emit

from omni_cli.e2e.config import SpeechDecoderConfig
from omni_cli.e2e.speech_generator import SpeechDecoderStream, SpeechGenerator

err = Console(stderr=True)
# the offline default's shape: SmolLM2-135M hidden states (576) into a 2-layer decoder, lambda 25
DECODER = SpeechDecoderConfig(llm_width=576, width=512, n_layers=2, n_heads=8, n_kv_heads=8, ffn=1408, num_units=151, upsample=25)


WINDOW = 8 * DECODER.upsample  # positions: the states of the last 8 text tokens


def _incremental(gen: SpeechGenerator, hidden: torch.Tensor, lengths, window: int) -> dict[int, float]:
    stream = SpeechDecoderStream(gen)
    per_token = []
    for h in hidden:
        t = time.perf_counter()
        stream.push(h)
        per_token.append(time.perf_counter() - t)
    return {n: 1000 * sum(per_token[n - window : n]) / window for n in lengths}


def bench_decoder(lengths: tuple[int, int] = (50, 400), window: int = 10) -> dict:
    import dataclasses

    torch.manual_seed(0)
    gen = SpeechGenerator(DECODER).eval()
    windowed = SpeechGenerator(dataclasses.replace(DECODER, attention_window=WINDOW)).eval()
    windowed.load_state_dict(gen.state_dict())
    hidden = torch.randn(max(lengths), DECODER.llm_width)
    with err.status("speech decoder, incremental ..."):
        ours = _incremental(gen, hidden, lengths, window)
        ours_w = _incremental(windowed, hidden, lengths, window)
    rerun = {}
    with err.status("speech decoder, re-run of the prefix (published approach) ..."), torch.inference_mode():
        for n in lengths:
            t = time.perf_counter()
            gen.predict(hidden[:n])
            rerun[n] = 1000 * (time.perf_counter() - t)
    a, b = lengths
    return {
        "config": DECODER.__dict__,
        "attention_window": WINDOW,
        "windowed_ms_per_token": {str(n): round(v, 2) for n, v in ours_w.items()},
        "incremental_ms_per_token": {str(n): round(v, 2) for n, v in ours.items()},
        "rerun_ms_per_token": {str(n): round(v, 2) for n, v in rerun.items()},
        "windowed_ratio": round(ours_w[b] / ours_w[a], 2),
        "incremental_ratio": round(ours[b] / ours[a], 2),
        "rerun_ratio": round(rerun[b] / rerun[a], 2),
        "speedup_at_longest": round(rerun[b] / ours[b], 1),
    }


def bench_latency() -> dict:
    from omni_cli.registry import OMNI_E2E_DEFAULT

    if OMNI_E2E_DEFAULT.installed_path() is None:
        return {"measured": False, "reason": "no trained weights for the offline e2e default"}
    import subprocess

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "omni_cli", "respond", str(root / "examples" / "question.wav"), "--mode", "both", "--json",
           "--out", "/tmp/omni-bench-reply.wav"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"measured": False, "reason": proc.stderr.strip().splitlines()[-1:]}
    results = json.loads(proc.stdout)["results"]
    return {"measured": True, **{m: r["metrics"] for m, r in results.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    decoder = bench_decoder()
    latency = bench_latency()
    table = Table(title="speech decoder, ms per text token", title_justify="left")
    for col in ("answer length", "ours, windowed", "ours, full attention", "prefix re-run (published)"):
        table.add_column(col, justify="right")
    for n in decoder["incremental_ms_per_token"]:
        table.add_row(n, f"{decoder['windowed_ms_per_token'][n]:.2f}", f"{decoder['incremental_ms_per_token'][n]:.2f}",
                      f"{decoder['rerun_ms_per_token'][n]:.2f}")
    err.print(table)
    err.print(f"growth 50 -> 400 tokens: windowed x{decoder['windowed_ratio']}, full attention x{decoder['incremental_ratio']}, "
              f"prefix re-run x{decoder['rerun_ratio']}; "
              f"at 400 tokens ours is {decoder['speedup_at_longest']}x cheaper")
    if not latency["measured"]:
        err.print(f"first-audio latency e2e vs cascade: not measured ({latency['reason']})")
    results = {"speech_decoder": decoder, "first_audio_latency": latency}
    emit(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
