"""Benchmark of the foundation, one command, ratios measured in the same run:

1. Whisper tiny.en through both backends on the same real human speech (pocketsphinx +
   MFA sets): real-time factor and WER, with the default decoding (beam 5 and Whisper's
   sampled temperature fallback) and with deterministic decoding (no fallback). Files
   alternate between the backends so machine noise hits both alike; the speed-up is the
   ratio of their summed processing times.
2. Peak resident memory of `omni respond --mode cascade` on the example question, as a
   separate process (the whole CLI: ASR + LLM + TTS loaded), with its latency metrics.

    python -m evals.bench_foundation [--limit N] [--json results.json]

Targets: faster-whisper >= 3x faster at equal WER (within 0.5 points); cascade
peak RSS < 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from evals.report import emit
from omni_cli import data
from omni_cli.asr import AsrOptions, load_asr
from omni_cli.audio import SAMPLE_RATE, load_audio
from omni_cli.metrics import wer

ROOT = Path(__file__).resolve().parents[1]
err = Console(stderr=True)


DECODINGS = {
    "default": AsrOptions(),  # as users run it: beam 5 with Whisper's sampled temperature fallback
    "deterministic": AsrOptions(temperatures=(0.0,)),  # no sampling: reproducible WER
}


def bench_asr(limit: int | None, options: AsrOptions) -> dict:
    utts = data.load("pocketsphinx") + data.load("mfa")
    utts = utts[:limit] if limit else utts
    audios = [load_audio(u["audio"]) for u in utts]
    audio_s = sum(len(a) for a in audios) / SAMPLE_RATE
    backends = {name: load_asr(backend=name, options=options) for name in ("faster-whisper", "openai-whisper")}
    for asr in backends.values():  # warm-up: first-call allocations are not the steady state
        asr.transcribe(audios[0])
    seconds = {name: 0.0 for name in backends}
    hyps: dict[str, list[str]] = {name: [] for name in backends}
    with err.status("ASR backends on real speech ...") as status:
        for i, audio in enumerate(audios):
            order = list(backends) if i % 2 == 0 else list(reversed(backends))
            for name in order:
                t = time.perf_counter()
                hyps[name].append(backends[name].transcribe(audio).text)
                seconds[name] += time.perf_counter() - t
            status.update(f"ASR backends on real speech ... {i + 1}/{len(audios)}")
    refs = [u["text"] for u in utts]
    out = {"files": len(utts), "audio_s": round(audio_s, 1)}
    for name in backends:
        out[name] = {
            "seconds": round(seconds[name], 2),
            "rtf": round(seconds[name] / audio_s, 4),
            "wer": round(100 * wer(refs, hyps[name]), 2),
        }
    out["speedup"] = round(seconds["openai-whisper"] / seconds["faster-whisper"], 2)
    out["wer_diff_points"] = round(out["faster-whisper"]["wer"] - out["openai-whisper"]["wer"], 2)
    return out


def bench_cascade_memory() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "omni_cli", "respond", str(ROOT / "examples" / "question.wav"),
               "--mode", "cascade", "--json", "--out", f"{tmp}/reply.wav"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise SystemExit(f"omni respond failed: {proc.stderr.strip().splitlines()[-1:]}")
    payload = json.loads(proc.stdout)
    if peak_kb <= before:
        err.print("[yellow]warning: an earlier child had a higher peak; RSS figure is an upper bound[/]")
    return {"peak_rss_mb": round(peak_kb / 1024, 1), "process_wall_s": round(wall, 2), "metrics": payload["metrics"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N utterances")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    memory = bench_cascade_memory()  # first, so the children's peak is this process alone
    asr = {name: bench_asr(args.limit, options) for name, options in DECODINGS.items()}
    results = {"asr": asr, "cascade": memory}

    mark = lambda ok: "[green]met[/]" if ok else "[red]not met[/]"
    for decoding, r in asr.items():
        table = Table(title=f"Whisper tiny.en, {decoding} decoding, {r['files']} real utterances ({r['audio_s']} s)",
                      title_justify="left")
        for col in ("backend", "seconds", "RTF", "WER %"):
            table.add_column(col, justify="right" if col != "backend" else "left")
        for name in ("faster-whisper", "openai-whisper"):
            table.add_row(name, f"{r[name]['seconds']:.2f}", f"{r[name]['rtf']:.4f}", f"{r[name]['wer']:.2f}")
        err.print(table)
        err.print(f"speed-up faster/openai: {r['speedup']:.2f}x (target >= 3x: {mark(r['speedup'] >= 3.0)}); "
                  f"WER difference {r['wer_diff_points']:+.2f} points (target within 0.5: {mark(abs(r['wer_diff_points']) <= 0.5)})")
    mem_ok = memory["peak_rss_mb"] < 1536
    err.print(f"cascade peak RSS: {memory['peak_rss_mb']:.0f} MB (target < 1536 MB: {mark(mem_ok)})")
    m = memory["metrics"]
    err.print(
        f"cascade respond: first audio {m['first_audio_latency_s']:.2f} s, total {m['total_s']:.2f} s, "
        f"audio {m['audio_s']:.2f} s, process wall {memory['process_wall_s']:.1f} s"
    )
    emit(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
