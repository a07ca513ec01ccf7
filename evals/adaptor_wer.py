"""What the ctc adaptor hears (`SpeechLLM.hear`: the greedy CTC transcript of its token head, or
with a beam in its config the hypothesis the LLM finds most plausible; no answer generated)
against the reference, corpus WER, on held-out voices of a built set and on the real-speech bench
(and, with --alpaca N, on AlpacaEval instructions spoken by a held-out voice; with --long N, on N
long utterances: held-out items beyond those scored, three or four joined with 0.4 s of silence).
Fast (a few minutes on a CPU), so adaptors can be compared before the slower stages run; the
median time to hear an item (encoder, adaptor, beam and LLM scoring) is given beside, from the
same run. With `--repeat`, the model's repeat of what it heard (`SpeechLLM.transcribe`: the
LLM asked to say exactly what was said, its LoRA adapters merged, as `omni transcribe
--asr-backend e2e` runs it) is scored beside, on the same items. With `--whisper`, the cascade's
own ASR (`omni transcribe`'s default Whisper, or the one named) hears the same items first.
`--heldout-start 300 --heldout 200` scores held-out items 300-499 instead of the first 300: items
no evaluation scores, on which a model's hearing settings are chosen (`omni train export
--length-bonus ...` and the like).

    python -m evals.adaptor_wer --models omni_cli/e2e/weights/omni-e2e-base-smollm2 runs/v3/a/model --data runs/v2/data
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from evals.report import emit


def main() -> None:
    from omni_cli.audio import load_audio
    from omni_cli.e2e.build_data import read_manifest
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.metrics import wer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, nargs="+", required=True)
    ap.add_argument("--data", type=Path, required=True, help="a built set (omni data build): its held-out items")
    ap.add_argument("--heldout", type=int, default=300, help="how many held-out items")
    ap.add_argument("--heldout-start", type=int, default=0, help="the first of them (300: the tuning items)")
    ap.add_argument("--alpaca", type=int, default=0, help="also the first N AlpacaEval instructions of the instructs2s-eval bench")
    ap.add_argument("--long", type=int, default=0, help="also N long utterances (3-4 other held-out items joined, 10-40 s)")
    ap.add_argument("--repeat", action="store_true", help="also score the model's repeat of what it heard (its ASR task)")
    ap.add_argument("--whisper", nargs="?", const="", default=None, metavar="SPEC",
                    help="also the cascade's Whisper (default: the offline default, tiny.en) on the same items")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sets = {"heldout-voices": heldout_items(args.data, args.heldout_start, args.heldout_start + args.heldout), "real-speech": bench_items("real-speech")}
    if args.alpaca:  # new kinds of text (instructions), spoken by a held-out voice
        sets["alpacaeval"] = bench_items("instructs2s-eval", args.alpaca)
    audio = {name: [load_audio(path) for path, _ in items] for name, items in sets.items()}
    if args.long:
        held = [r for r in read_manifest(args.data) if r["split"] != "train"][args.heldout_start + args.heldout:]
        audio["long-heldout"], sets["long-heldout"] = joined(held, args.long)
    result = {}
    if args.whisper is not None:
        from omni_cli.asr import load_asr

        asr = load_asr(args.whisper or None)
        label = f"whisper {args.whisper or 'default'}"
        result[label] = {name: round(100 * wer([ref for _, ref in items], [asr.transcribe(a).text.strip() for a in audio[name]]), 1)
                         for name, items in sets.items()}
        print(label, result[label], flush=True)
        del asr
    for folder in args.models:
        model = load_omni(folder)
        scores, seconds = {}, []
        for name, items in sets.items():
            heard, repeated = [], []
            for a in audio[name]:
                start = time.perf_counter()
                with torch.no_grad():
                    features, text, alternatives = model.listen(a)
                heard.append(text)
                seconds.append(time.perf_counter() - start)
                if args.repeat:  # from the same hearing
                    repeated.append(model.transcribe(a, features=features, heard=text, alternatives=alternatives))
            scores[name] = round(100 * wer([ref for _, ref in items], heard), 1)
            if args.repeat:
                scores[f"{name} repeat"] = round(100 * wer([ref for _, ref in items], repeated), 1)
        scores["median ms to hear"] = round(1000 * statistics.median(seconds))
        result[str(folder)] = scores
        print(folder, scores, flush=True)
    emit(result, args.json)


def heldout_items(data: Path, start: int = 0, stop: int | None = None) -> list[tuple[Path, str]]:
    """A built set's held-out items `start` to `stop` (in manifest order): (audio path, transcript)."""
    from omni_cli.e2e.build_data import read_manifest

    return [(Path(r["audio"]), r["instruction"]) for r in read_manifest(data) if r["split"] != "train"][start:stop]


def bench_items(name: str, limit: int = 0) -> list[tuple[Path, str]]:
    """A bench's first `limit` items (0: all): (audio path, reference)."""
    from omni_cli.benches import load_bench

    return [(Path(i.audio), i.reference) for i in load_bench(name)[: limit or None]]


def joined(rows: list[dict], n: int) -> tuple[list, list[tuple[None, str]]]:
    """`n` long utterances of consecutive held-out items (`rows` as `read_manifest` gives them),
    three or four at a time (drawn with a fixed seed), 0.4 s of silence between: their audio,
    and (None, the joined transcripts)."""
    import random

    import numpy as np

    from omni_cli.audio import SAMPLE_RATE, load_audio

    rng, gap = random.Random(0), np.zeros(int(0.4 * SAMPLE_RATE), np.float32)
    audio, items, i = [], [], 0
    while len(items) < n:
        group = rows[i : i + rng.choice([3, 4])]
        i += len(group)
        if len(group) < 3:
            raise SystemExit(f"--long {n}: the set has held-out items for {len(items)} long utterances only")
        parts = [x for r in group for x in (load_audio(r["audio"]), gap)][:-1]
        audio.append(np.concatenate(parts))
        items.append((None, " ".join(r["instruction"] for r in group)))
    return audio, items


if __name__ == "__main__":
    main()
