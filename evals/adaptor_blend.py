"""Two ctc adaptors heard as one (a diagnostic): does a second adaptor, on its own Whisper, know
what the first does not? The first model hears as it ships (its beam, token n-gram and the LLM's
choice), but from a blend of CTC log-probabilities: `weight` x its own + (1 - weight) x the
other's, frame by frame (both encoders give 50 frames a second, both adaptors stack 4), over the
first's classes (the other's head may have grown: its extra classes are left out). The other
model's encoder reads the same audio (after the first's speech margin). Corpus WER of what the
LLM reads, per weight (1: the first model alone), on held-out voices' items (`--items LO:HI`:
items 300 on are ones no evaluation scores, for choosing a weight), the real-speech bench or
AlpacaEval instructions.

    python -m evals.adaptor_blend --model omni_cli/e2e/weights/omni-e2e-base-smollm2 \\
        --other runs/v21/ft-base/model --weights 1,0.8,0.6 --data runs/v2/data --items 300:500
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from evals.report import emit


class Blend:
    """While `weight` < 1, `model` hears from its CTC log-probabilities blended with `other`'s
    (see the module's docstring); `weight` may be changed between utterances."""

    def __init__(self, model, other, weight: float = 1.0):
        first, second = model.speech_projector, other.speech_projector
        n = first.config.vocab
        if first.config.type != "ctc" or second.config.type != "ctc" or first.k != second.k:
            raise ValueError("both models need a ctc adaptor stacking the same number of frames")
        if first.config.beam < 2 or first.config.speeds:
            raise ValueError("the first model must hear by beam search (beam > 1) and at one speed")
        if not torch.equal(second.token_ids[:n], first.token_ids):
            raise ValueError("the other adaptor's classes are not the first's (its head must be the first's, grown or not)")
        self.model, self.other, self.weight = model, other, weight
        self._encode, self._logits = model.speech_encoder.encode, first.utterance_logits
        self._other_states = None
        self._classes = n
        self._other_dtype = next(p for p in second.parameters() if p.is_floating_point()).dtype
        model.speech_encoder.encode = self._encode_both
        first.utterance_logits = self._blended

    def _encode_both(self, audio):
        states = self._encode(audio)
        self._other_states = self.other.speech_encoder.encode(audio) if self.weight < 1 else None
        return states

    def _blended(self, states: torch.Tensor) -> torch.Tensor:
        own = self._logits(states).float().log_softmax(-1)
        if self.weight >= 1 or self._other_states is None:
            return own
        logits = self.other.speech_projector.utterance_logits(self._other_states.unsqueeze(0).to(self._other_dtype)).float()
        theirs = torch.cat([logits[:, : self._classes], logits[:, -1:]], -1).log_softmax(-1)  # the first's classes and the blank
        frames = min(len(own), len(theirs))
        return self.weight * own[:frames] + (1 - self.weight) * theirs[:frames]


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
    blend = Blend(load_omni(args.model), load_omni(args.other))
    result = {}
    for weight in (float(w) for w in args.weights.split(",")):
        blend.weight = weight
        with torch.no_grad():
            heard = [blend.model.listen(a)[1] for a in audio]
        result[f"{weight:g}"] = round(100 * wer([ref for _, ref in items], heard), 2)
        print(f"weight {weight:g}: {result[f'{weight:g}']} % WER on {len(items)} items", flush=True)
    emit(result, args.json)


if __name__ == "__main__":
    main()
