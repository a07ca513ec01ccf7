"""Sweep of the first audio chunk's size: first-audio latency against the ASR-WER of the
spoken answer (how well Whisper understands it), for both pipelines, on the same items in one run.

- e2e: the first vocoder chunk's size in units (`E2EOptions.first_chunk`; later chunks double
  up to Omega), at each Omega asked for (`--omegas`; default: the vocoder's default);
- cascade: the words after which the first TTS piece may end (`ChunkerOptions.first_words`;
  0: at the first clause or sentence, as before).

Each condition answers every item (models loaded once and shared); ASR-WER is scored by the
same deterministic Whisper judge as `omni eval`.

    python -m evals.chunk_sweep [--bench instructs2s-eval] [--limit 30] [--omegas 20,40] [--json sweep.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from evals.report import emit

err = Console(stderr=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: python -m evals.chunk_sweep --limit 30 --json sweep.json")
    parser.add_argument("--bench", default="instructs2s-eval")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--first-chunks", default="off,10,6,3", help="e2e first chunk sizes in units ('off': Omega from the start)")
    parser.add_argument("--omegas", default="auto", help="e2e Omegas, each with every first chunk size ('auto': the vocoder's default)")
    parser.add_argument("--first-words", default="0,6,4,2", help="cascade first-piece word counts (0: clause or sentence)")
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from baselines.cascade import CascadePipeline
    from omni_cli.asr import load_judge
    from omni_cli.benches import load_bench
    from omni_cli.e2e.pipeline import E2EPipeline
    from omni_cli.evaluate import Evaluator, parse_omegas, summarize
    from omni_cli.pipelines import PipelineConfig, load_pipeline

    items = load_bench(args.bench)[: args.limit]
    omegas = list(parse_omegas(args.omegas))
    config = PipelineConfig(omega=omegas[0], max_new_tokens=args.max_new_tokens)
    with err.status("loading ..."):
        cascade, e2e = load_pipeline("cascade", config), load_pipeline("e2e", config)
        judge = load_judge()
    pipelines = {}
    for n in (int(w) for w in args.first_words.split(",")):
        options = dataclasses.replace(cascade.options, chunker=dataclasses.replace(cascade.options.chunker, first_words=n))
        pipelines[f"cascade first_words={n}"] = CascadePipeline(cascade.asr, cascade.llm, cascade.tts, options)
    for omega in omegas:
        for c in args.first_chunks.split(","):
            first = 0 if c.strip() == "off" else int(c)
            options = dataclasses.replace(e2e.options, first_chunk=first, omega=omega)
            pipelines[f"e2e omega={omega} first_chunk={c.strip()}"] = E2EPipeline(e2e.model, e2e.vocoder, options)
    evaluator = Evaluator(pipelines, judge)
    rows = []
    with err.status("answering ...") as status:
        for i, item in enumerate(items):
            status.update(f"item {i + 1}/{len(items)}")
            rows += evaluator.run_item(item)
    summary = summarize(rows)["conditions"]
    result = {"bench": args.bench, "items": len(items), "omegas": omegas, "max_new_tokens": args.max_new_tokens, "conditions": {}}
    table = Table(title=Text(f"first chunk sweep ({len(items)} items of {args.bench})"), title_justify="left")
    for col in ("condition", "first audio, median (s)", "p90 (s)", "corpus ASR-WER (%)", "median ASR-WER (%)"):
        table.add_column(col, justify="left" if col == "condition" else "right")
    for name, c in summary.items():
        first_audio = c["metrics"].get("first_audio_latency_s", {})
        entry = {"first_audio_median_s": first_audio.get("median"), "first_audio_p90_s": first_audio.get("p90"),
                 "corpus_asr_wer": c.get("corpus_asr_wer"), "median_asr_wer": c["metrics"].get("asr_wer", {}).get("median"),
                 "ok": c.get("ok")}
        result["conditions"][name] = entry
        table.add_row(Text(name), f"{entry['first_audio_median_s']:.3f}", f"{entry['first_audio_p90_s']:.3f}",
                      *("-" if entry[k] is None else f"{100 * entry[k]:.1f}" for k in ("corpus_asr_wer", "median_asr_wer")))
    err.print(table)
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
