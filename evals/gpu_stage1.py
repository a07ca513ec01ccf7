"""Stage 1 of the end-to-end default (the ctc adaptor) trained from audio with augmentation, on a
lent GPU machine that has no registry and takes 64 MiB a call. The set travels as Opus
(`evals/pack_audio.py`), the frozen parts as a small kit:

    python -m evals.gpu_stage1 --make-kit .gpu/s1k        # here: encoder, token table, adaptor, tokenizer
    python -m evals.gpu_stage1 --kit .gpu/s1k --audio .gpu/s1 --minutes 6 --out $OUT   # there
    python -m evals.gpu_stage1 --adopt OUT/adaptor.pt --out runs/v3/stage1/model     # here again

`--base` names the model the kit is made from and the adopted adaptor goes into (default: the
shipped one); an adaptor moved onto another Whisper (`omni train adaptor --from M --encoder
whisper-base`) trains on from where it is. The kit is three files and the tokenizer, each file
small enough to travel in a call of its own (Whisper base's encoder alone is 41 MB, the token
table 33 MB):
`encoder.pt` (the frozen encoder and the model's config), `table.pt` (the LLM's input
embeddings of the adaptor's classes), `adaptor.pt` (the adaptor to start from; `--init`
another) and `tokenizer/`.

There, the Whisper encoder runs on every batch (speed perturbation and SpecAugment, see
`train.Augment`); every `--eval-every` steps the adaptor's greedy CTC transcripts of held-out
voices are scored (WER) and the best adaptor so far is written to `<out>/adaptor.pt`, with
`<out>/log.json`. The number of steps is fitted to `--minutes` from the first steps' speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "omni_cli" / "e2e" / "weights" / "omni-e2e-base-smollm2"


KIT_FILES = ("encoder.pt", "table.pt", "adaptor.pt")


def half(state: dict) -> dict:
    """A state dict with its floating-point tensors in float16 (what travels and is written)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def make_kit(out: Path, base: Path = SHIPPED) -> dict[str, int]:
    """The frozen parts and the adaptor of `base` as the kit's files; returns each one's bytes."""
    from omni_cli.e2e.checkpoint import load_omni

    model = load_omni(base)
    proj = model.speech_projector
    if proj.config.type != "ctc":
        raise SystemExit(f"{base}: stage 1 here trains a ctc adaptor, this model's is {proj.config.type!r}")
    out.mkdir(parents=True, exist_ok=True)
    table = model.llm.model.get_input_embeddings().weight

    config = json.loads((base / "omni_e2e.json").read_text())
    torch.save({"encoder": half(model.speech_encoder.whisper.state_dict()), "config": config}, out / "encoder.pt")
    torch.save({"token_ids": proj.token_ids.clone(), "rows": table[proj.token_ids].detach().half().clone(),
                "vocab_size": table.shape[0]}, out / "table.pt")
    torch.save(half({k: v for k, v in proj.state_dict().items() if k != "token_ids"}), out / "adaptor.pt")
    model.llm.tokenizer.save_pretrained(out / "tokenizer")
    return {name: (out / name).stat().st_size for name in KIT_FILES}


def load_kit(folder: Path) -> dict:
    kit = torch.load(folder / "encoder.pt", weights_only=False)
    kit.update(torch.load(folder / "table.pt", weights_only=False))
    return kit


def adopt(adaptor: Path, base: Path, out: Path) -> None:
    """A model folder: `base` (an omni model) with its adaptor replaced by `adaptor` (adaptor.pt)."""
    from safetensors.torch import load_file, save_file

    from omni_cli.e2e.checkpoint import side_files

    state = load_file(str(base / "model.safetensors"))
    new = torch.load(adaptor, map_location="cpu", weights_only=True)
    new["token_ids"] = state["speech_projector.token_ids"]  # the kit's, which are the base's (never stored as float)
    missing = {k for k in state if k.startswith("speech_projector.")} ^ {f"speech_projector.{k}" for k in new}
    if missing:
        raise SystemExit(f"the adaptors differ in: {sorted(missing)[:5]}")
    dtype = state["speech_projector.linear1.weight"].dtype
    state.update({f"speech_projector.{k}": v if v.dtype == torch.long else v.to(dtype) for k, v in new.items()})
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"))
    shutil.copy(base / "omni_e2e.json", out / "omni_e2e.json")
    for name in side_files(json.loads((base / "omni_e2e.json").read_text())):  # its n-gram LMs
        shutil.copyfile(base / name, out / name)


def read_packed(folder: Path) -> tuple[dict[str, dict], dict[str, bytes]]:
    """What `evals.pack_audio` wrote: the rows by id, and each item's Opus file."""
    rows = {r["id"]: r for r in json.loads((folder / "rows.json").read_text())}
    blobs = {}
    for part in sorted(folder.glob("p*")):
        data = (part / "audio.bin").read_bytes()
        for key, (offset, size) in json.loads((part / "index.json").read_text()).items():
            blobs[key] = data[offset : offset + size]
    return rows, blobs


def _decode(blob: bytes) -> np.ndarray:
    audio, _ = sf.read(io.BytesIO(blob), dtype="int16")
    return audio


class Stage1(nn.Module):
    """The frozen encoder and the ctc adaptor, bound to the LLM's token table (rows of it)."""

    def __init__(self, kit: dict, tokenizer):
        super().__init__()
        from omni_cli.e2e.config import EncoderConfig, ProjectorConfig
        from omni_cli.e2e.speech_encoder import SpeechEncoder
        from omni_cli.e2e.speech_projector import CTCSpeechProjector

        cfg = kit["config"]
        self.speech_encoder = SpeechEncoder(EncoderConfig(**cfg["encoder"]))
        self.speech_encoder.whisper.load_state_dict({k: v.float() for k, v in kit["encoder"].items()})
        self.speech_projector = CTCSpeechProjector(ProjectorConfig(**cfg["projector"]))
        self.speech_projector.token_ids.copy_(kit["token_ids"])
        table = nn.Embedding(kit["vocab_size"], kit["rows"].shape[1])
        with torch.no_grad():
            table.weight.zero_()
            table.weight[kit["token_ids"]] = kit["rows"].float()
        table.requires_grad_(False)
        self.table = table
        self.speech_projector.bind(table, tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def start_from(model: Stage1, adaptor: Path) -> None:
    """The adaptor's weights from `adaptor` (an adaptor.pt: the kit's, or a run's); every one of
    them must fit (a state of another shape or with missing weights is refused)."""
    state = {k: v.float() for k, v in torch.load(adaptor, map_location="cpu", weights_only=True).items() if k != "token_ids"}
    model.speech_projector.load_state_dict(state | {"token_ids": model.speech_projector.token_ids})


@torch.no_grad()
def heard(model: Stage1, audios: list[np.ndarray], batch: int = 64) -> list[str]:
    from omni_cli.e2e.train import augmented_mels

    proj, enc, dev = model.speech_projector, model.speech_encoder, model.device
    order = sorted(range(len(audios)), key=lambda i: len(audios[i]))
    out = [""] * len(audios)
    for b in range(0, len(order), batch):
        part = order[b : b + batch]
        mels = augmented_mels([torch.as_tensor(audios[i].astype(np.float32) / 32768).to(dev) for i in part],
                              enc.config.n_mels, None, None, enc.config.n_ctx)
        for i, ids in zip(part, proj.decode_padded(*enc.encode_batch(mels))):
            out[i] = proj._llm[1].decode(ids).strip()
    return out


def run(args) -> None:
    from transformers import AutoTokenizer

    from omni_cli.e2e import train as train_module
    from omni_cli.e2e.train import Augment, TrainOptions, train_ctc_adaptor, training_device
    from omni_cli.metrics import wer

    train_module.plot_losses = lambda *a, **k: None  # the loss curve is drawn from log.json at home

    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    device = training_device(args.device)
    rows, blobs = read_packed(args.audio)
    ids = [k for k in rows if k in blobs]
    with ProcessPoolExecutor(16) as pool:
        audio = dict(zip(ids, pool.map(_decode, [blobs[k] for k in ids], chunksize=256)))
    train = [rows[k] for k in ids if rows[k]["split"] == "train"]
    held = [rows[k] for k in ids if rows[k]["split"] != "train"][: args.eval_items]
    print(f"{len(train)} training items, {len(held)} held out, decoded in {time.time() - t0:.0f} s", flush=True)
    model = Stage1(load_kit(args.kit), AutoTokenizer.from_pretrained(args.kit / "tokenizer")).to(device)
    init = args.init or args.kit / "adaptor.pt"
    if not args.fresh:
        start_from(model, init)
    train_audio = [audio[r["id"]].astype(np.float32) / 32768 for r in train]
    held_audio = [audio[r["id"]] for r in held]
    refs = [r["instruction"] for r in held]
    augment = None if args.no_augment else Augment(
        warp=(1 - args.warp, 1 + args.warp) if args.warp else None,
        noise_snr=tuple(float(x) for x in args.noise_snr.split(",")) if args.noise_snr else None,
        reverb=tuple(float(x) for x in args.reverb.split(",")) if args.reverb else None)
    log = {"args": {k: str(v) for k, v in vars(args).items()}, "evals": [], "losses": []}

    def evaluate(step: int) -> float:
        model.eval()
        score = 100 * wer(refs, heard(model, held_audio))
        model.speech_projector.train()
        log["evals"].append({"step": step, "heldout_wer": round(score, 2), "seconds": round(time.time() - t0)})
        print(f"step {step}: held-out CTC WER {score:.1f} %", flush=True)
        return score

    def steps(options):
        # the kit holds only the LLM's embedding rows of the base's tokens: the head cannot grow here
        return train_ctc_adaptor(model, train, args.work, options, augment=augment, audios=train_audio,
                                 save=lambda: None, grow_vocab=False)

    # fit the step count to the time budget from a short run's speed (its weights are discarded)
    probe = TrainOptions(steps=12, batch_size=args.batch_size, lr=args.lr, warmup=50, save_every=10**9)
    start = dict(model.speech_projector.state_dict())
    start = {k: v.clone() for k, v in start.items()}
    began = None
    for p in steps(probe):
        if p.step == 2:
            began = time.time()
    per_step = (time.time() - began) / 10
    model.speech_projector.load_state_dict(start)
    budget = args.minutes * 60 - (time.time() - t0)
    n = max(100, int(budget / (per_step * 1.08)))
    print(f"{per_step * 1000:.0f} ms a step: {n} steps", flush=True)
    options = TrainOptions(steps=n, batch_size=args.batch_size, lr=args.lr, warmup=200, save_every=10**9, seed=args.seed)
    best = float("inf")
    for p in steps(options):
        log["losses"].append(round(p.loss, 4))
        if p.step % args.eval_every == 0 or p.step == n:
            score = evaluate(p.step)
            if score < best:
                best = score
                torch.save(half(model.speech_projector.state_dict()), args.out / "adaptor.pt")
            (args.out / "log.json").write_text(json.dumps(log))
    print(f"best held-out CTC WER {best:.1f} %, {time.time() - t0:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make-kit", type=Path)
    ap.add_argument("--kit", type=Path)
    ap.add_argument("--adopt", type=Path, help="here: write --out as the model --base with this adaptor.pt")
    ap.add_argument("--base", type=Path, default=SHIPPED, help="the model the kit is made from and --adopt writes into")
    ap.add_argument("--audio", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu_stage1"), help="the optimizer's state (large: kept out of --out)")
    ap.add_argument("--init", type=Path, help="start from this adaptor state (default: the kit's adaptor.pt)")
    ap.add_argument("--fresh", action="store_true", help="start from a fresh adaptor instead")
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--eval-items", type=int, default=300)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--warp", type=float, default=0.0, help="vocal tract length perturbation: warp the log-mel by 1 +- this (e.g. 0.12)")
    ap.add_argument("--noise-snr", help="white noise on half the items at an SNR in this range, dB (e.g. 5,25)")
    ap.add_argument("--reverb", help="a synthetic room's echo on half the items, its RT60 in this range, seconds (e.g. 0.2,0.8)")
    args = ap.parse_args()
    if args.fresh and args.init:
        ap.error("--fresh starts from a new adaptor, --init from a given one: give one of them")
    if args.make_kit:
        for name, size in make_kit(args.make_kit, args.base).items():
            print(f"{args.make_kit / name}: {size / 2**20:.1f} MiB", flush=True)
    elif args.adopt:
        adopt(args.adopt, args.base, args.out)
    else:
        run(args)


if __name__ == "__main__":
    main()
