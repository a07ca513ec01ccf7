"""Two ctc adaptors heard as one, at several weights: does a second adaptor, on its own Whisper,
know what the first does not? The first model hears as it ships (its beam, token n-gram and the
LLM's choice) with the other as its partner (`SpeechLLM.set_partner`, as `omni train export
--partner` ships it): `weight` x its own CTC log-probabilities + (1 - weight) x the other's,
frame by frame, classes matched by LLM token. Corpus WER of what the LLM reads, per weight (1:
the first model alone), on held-out voices' items (`--items LO:HI`: items 300 on are ones no
evaluation scores, for choosing a weight), the real-speech bench or AlpacaEval instructions.

    python -m evals.adaptor_blend --model omni_cli/e2e/weights/omni-e2e-base-smollm2 \\
        --other runs/v21/ft-base/model --weights 1,0.8,0.6 --data runs/v2/data --items 300:500
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from evals.report import emit


def blend(model, other, weight: float) -> None:
    """`model` hears with `other`'s encoder and adaptor as its partner, its own share `weight` (1: alone)."""
    if weight >= 1:
        model.set_partner(None, None)
    else:
        model.set_partner(other.speech_encoder, other.speech_projector, other.config.encoder_source, 1 - weight)


def main() -> None:
    from evals.adaptor_wer import bench_items, heldout_items
    from omni_cli.audio import load_audio
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.metrics import wer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--other", type=Path, required=True, help="the second model (its encoder and adaptor)")
    ap.add_argument("--weights", default="1,0.8", help="the first model's share of each blend tried (1: it alone)")
    ap.add_argument("--data", type=Path, help="a built set: its held-out items")
    ap.add_argument("--items", default="300:500", help="which held-out items (LO:HI)")
    ap.add_argument("--bench", help="a bench instead (real-speech, instructs2s-eval)")
    ap.add_argument("--limit", type=int, default=0, help="the bench's first N items (0: all)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not args.bench and not args.data:
        ap.error("give --data (held-out items) or --bench")
    if args.bench:
        items = bench_items(args.bench, args.limit)
    else:
        lo, hi = (int(x) for x in args.items.split(":"))
        items = heldout_items(args.data, lo, hi)
    audio = [load_audio(path) for path, _ in items]
    model, other = load_omni(args.model), load_omni(args.other)
    other.set_partner(None, None)
    result = {}
    for weight in (float(w) for w in args.weights.split(",")):
        blend(model, other, weight)
        with torch.no_grad():
            heard = [model.listen(a)[1] for a in audio]
        result[f"{weight:g}"] = round(100 * wer([ref for _, ref in items], heard), 2)
        print(f"weight {weight:g}: {result[f'{weight:g}']} % WER on {len(items)} items", flush=True)
    emit(result, args.json)


if __name__ == "__main__":
    main()
