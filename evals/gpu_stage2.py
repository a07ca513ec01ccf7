"""Stage 2 of the end-to-end default (the speech decoder) on a lent GPU machine that has no
registry and takes 64 MiB a call. What travels: the LLM as its GGUF file (the registry's
Q4_1, 98 MB, in three parts) and every registry text as token ids and unit targets (7 MB):

    python -m evals.gpu_stage2 --make-kit .gpu/s2            # here: .gpu/s2/{a,b,c}
    # there, one call each: carry .gpu/s2/a, then .gpu/s2/b, copying a.part and b.part to /root/stage;
    python -m evals.gpu_stage2 --kit .gpu/s2 --stage /root/stage --minutes 6 --out $OUT   # then, carrying .gpu/s2/c
    python -m evals.gpu_stage2 --adopt OUT/decoder.safetensors --out runs/x/model     # here again

There, the LLM (read from the GGUF by transformers, as `omni` converts it here) computes the
base LLM's states of every text under the typed instruction (stage 2's `--from-text`), then the
shipped speech decoder trains on them with the project's optimizer loop (`train._loop`), the
number of steps fitted to `--minutes`; every `--eval-every` steps its unit error rate on the
held-out answers of `--data` is measured (as `evals.unit_error` does) and the best decoder so
far is written to `<out>/decoder.safetensors` (float16), with `<out>/log.json` and the
decoder's config, `<out>/decoder.json` (`--upsample N` resamples it first, as
`omni train speech-decoder --upsample` does; `--adopt` takes the config from beside the weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import lzma
import pickle
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "omni_cli" / "e2e" / "weights" / "omni-e2e-base-smollm2"
PART = 35_900_000  # bytes of the GGUF per call: 64 MiB less the working tree


def _pack(model, vocoder, items: list[dict]) -> dict:
    """Token ids of each item's prompt (typed instruction) and answer, which of the answer's
    tokens reach the speech decoder (`said_answer`), and the units of the text said, flat."""
    from omni_cli.e2e.train import said_answer

    system = model.config.prompt.system
    prompts, answers, units, said = [], [], [], []
    for it in items:
        ids, keep, text = said_answer(model, it["response"])
        u = vocoder.text_to_units(text)
        if not u:
            continue
        chat = [{"role": "system", "content": system}, {"role": "user", "content": it["instruction"]}]
        prompts.append(model.llm.chat_ids(chat)[0].numpy())
        answers.append(np.array(ids))
        said.append(np.array(keep, dtype=np.uint8))
        units.append(np.array(u))
    pre = 0  # the system prompt's ids, common to all, are stored once
    while all(len(p) > pre and p[pre] == prompts[0][pre] for p in prompts):
        pre += 1
    assert max(max(a.max() for a in answers), max(p.max() for p in prompts)) < 2**16 and max(u.max() for u in units) < 2**8
    return {"prefix": prompts[0][:pre].astype(np.int64), "prompts": np.concatenate([p[pre:] for p in prompts]).astype(np.uint16),
            "prompt_lens": np.array([len(p) - pre for p in prompts]), "answers": np.concatenate(answers).astype(np.uint16),
            "answer_lens": np.array([len(a) for a in answers]), "units": np.concatenate(units).astype(np.uint8),
            "unit_lens": np.array([len(u) for u in units]), "said": np.concatenate(said),
            "said_ids": _said_ids(model, answers)}


def _said_ids(model, answers: list[np.ndarray]) -> np.ndarray:
    """(n, 2) token id -> the id whose embedding the speech decoder reads for it
    (`SpeechLLM.said_token_id`: ":**" -> ":"), for the answers' tokens where they differ."""
    pairs = [(i, model.said_token_id(i)) for i in sorted({int(t) for a in answers for t in a})]
    return np.array([p for p in pairs if p[0] != p[1]], dtype=np.int64).reshape(-1, 2)


def said_ids(packed: dict, vocab: int) -> torch.Tensor:
    """A (vocab,) table: each token id to the one the speech decoder reads for it (`_said_ids`;
    a kit made before them: each to itself)."""
    table = torch.arange(vocab)
    pairs = torch.from_numpy(packed.get("said_ids", np.zeros((0, 2), dtype=np.int64)))
    table[pairs[:, 0]] = pairs[:, 1]
    return table


def _unpack(d: dict) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(prompt ids, answer ids, units, which answer tokens are said) per item."""
    def split(flat, lens):
        return np.split(flat.astype(np.int64), np.cumsum(lens)[:-1])

    said = split(d["said"], d["answer_lens"]) if "said" in d else [np.ones(n, dtype=np.int64) for n in d["answer_lens"]]
    return [(torch.from_numpy(np.concatenate([d["prefix"], p])), torch.from_numpy(a), torch.from_numpy(u), torch.from_numpy(k).bool())
            for p, a, u, k in zip(split(d["prompts"], d["prompt_lens"]), split(d["answers"], d["answer_lens"]),
                                  split(d["units"], d["unit_lens"]), said, strict=True)]


def make_kit(out: Path, data: Path, texts: int, seed: int) -> None:
    import gguf

    from omni_cli import data as registry_data
    from omni_cli.e2e.build_data import DECODER_TEXT_SOURCES, decoder_texts, read_manifest, training_sources
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.unit_vocoder import load_unit_vocoder
    from omni_cli.registry import lookup

    model = load_omni(SHIPPED)
    vocoder = load_unit_vocoder(model.config.vocoder)
    heldout = {r["instruction"].lower() for r in read_manifest(data, split="heldout")}
    sources = training_sources(DECODER_TEXT_SOURCES)
    train = decoder_texts([it for name in sources for it in registry_data.load(name)], texts or 10**9, seed=seed, exclude=heldout)
    held = [{"instruction": r["instruction"], "response": r["response"]} for r in read_manifest(data, split="heldout", answered=True)]
    print(f"{len(train)} texts, {len(held)} held-out answers", flush=True)
    blob = lookup("smollm2-135m-instruct").locate().read_bytes()
    shutil.rmtree(out, ignore_errors=True)
    for i, name in enumerate("abc"):
        (out / name).mkdir(parents=True)
        (out / name / f"{name}.part").write_bytes(blob[i * PART : (i + 1) * PART if name != "c" else None])
    shutil.copytree(Path(gguf.__file__).parent, out / "c" / "pylib" / "gguf", ignore=shutil.ignore_patterns("__pycache__"))
    # the fp32 states of two held-out answers, for a check that the LLM there is this one
    expect = []
    embed = model.llm.model.get_input_embeddings()
    packed_held = _pack(model, vocoder, held)
    with torch.no_grad():
        for p, a, _ in _unpack(packed_held)[:2]:
            h = model.llm.model.model(inputs_embeds=embed(torch.cat([p, a]))[None]).last_hidden_state[0]
            expect.append(h[len(p) - 1 : len(p) - 1 + len(a)].numpy().copy())
    kit = {"train": _pack(model, vocoder, train), "val": packed_held, "expect": expect}
    (out / "c" / "texts.pkl.xz").write_bytes(lzma.compress(pickle.dumps(kit, protocol=5), preset=9))
    sizes = {n: sum(f.stat().st_size for f in (out / n).rglob("*") if f.is_file()) / 2**20 for n in "abc"}
    print("MiB to carry per call:", {k: round(v, 1) for k, v in sizes.items()})


def _edit_distance(a: list[int], b: list[int]) -> int:
    try:
        from torchaudio.functional import edit_distance
    except ImportError:
        from rapidfuzz.distance import Levenshtein

        return Levenshtein.distance(a, b)
    return edit_distance(a, b)


def run(args) -> None:
    from omni_cli.e2e import train as train_module
    from omni_cli.e2e.checkpoint import read_omni_config
    from omni_cli.e2e.speech_generator import SpeechGenerator
    from omni_cli.e2e.train import TrainOptions, _loop, batched, training_device

    sys.path.insert(0, str(args.kit / "c" / "pylib"))  # gguf, for transformers' GGUF reader
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    train_module.plot_losses = lambda *a, **k: None  # the loss curve is drawn from log.json at home
    t0 = time.time()
    dev = training_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    log: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "evals": [], "losses": []}

    def say(msg: str) -> None:
        print(f"[{time.time() - t0:5.0f} s] {msg}", flush=True)

    gguf_dir = Path("/tmp/gpu_stage2_llm")
    gguf_dir.mkdir(exist_ok=True)
    parts = (args.stage / "a.part", args.stage / "b.part", args.kit / "c" / "c.part")
    if missing := [str(p) for p in parts if not p.is_file()]:
        raise SystemExit(f"missing the LLM's parts: {', '.join(missing)} (the first calls copy a.part and b.part to --stage)")
    with open(gguf_dir / "llm.gguf", "wb") as f:
        for part in parts:
            f.write(part.read_bytes())
    llm = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file="llm.gguf", dtype=torch.float32).to(dev).eval()
    for p in llm.parameters():
        p.requires_grad_(False)
    embed = llm.get_input_embeddings()
    kit = pickle.loads(lzma.decompress((args.kit / "c" / "texts.pkl.xz").read_bytes()))
    train, val = _unpack(kit["train"]), _unpack(kit["val"])
    with torch.no_grad():
        for (p, a, _, _), e in zip(val, kit["expect"]):
            h = llm.model(inputs_embeds=embed(torch.cat([p, a]).to(dev))[None]).last_hidden_state[0, len(p) - 1 : len(p) - 1 + len(a)]
            diff = float((h.cpu() - torch.from_numpy(e)).abs().max())
            say(f"the LLM's states against the CPU's: max abs diff {diff:.2e} (scale {float(np.abs(e).max()):.0f})")
            if diff > 1e-2:
                raise SystemExit("this is not the LLM the kit was made with")

    @torch.no_grad()
    def states(items, batch: int = 256) -> list[torch.Tensor]:
        order = sorted(range(len(items)), key=lambda i: len(items[i][0]) + len(items[i][1]))
        out: list = [None] * len(items)
        for b in range(0, len(order), batch):
            part = order[b : b + batch]
            seqs = [torch.cat(items[i][:2]) for i in part]
            x = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True).to(dev)
            mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(q), dtype=torch.long) for q in seqs], batch_first=True).to(dev)
            with torch.autocast(dev, dtype=torch.bfloat16):
                hidden = llm.model(inputs_embeds=embed(x), attention_mask=mask).last_hidden_state
            for row, i in enumerate(part):
                start = len(items[i][0]) - 1
                out[i] = hidden[row, start : start + len(items[i][1])].to(torch.bfloat16).clone()
        return out

    # the LLM reads every answer token; the decoder gets the states of those said (no markdown, list markers)
    train_states = [h[k.to(h.device)] for h, (_, _, _, k) in zip(states(train), train)]
    val_states = [h[k.to(h.device)] for h, (_, _, _, k) in zip(states(val), val)]
    said_train, said_val = said_ids(kit["train"], embed.num_embeddings), said_ids(kit["val"], embed.num_embeddings)
    train = [(p, said_train[a[k]], u, k) for p, a, u, k in train]
    val = [(p, said_val[a[k]], u, k) for p, a, u, k in val]
    say(f"states of {len(train)} texts ({sum(len(s) for s in train_states)} tokens) and {len(val)} held-out answers")

    config = read_omni_config(args.base).speech_decoder
    gen = SpeechGenerator(config)
    gen.load_state_dict({k.split(".", 1)[1]: v.float() for k, v in load_file(str(args.base / "model.safetensors")).items()
                         if k.startswith("speech_generator.")})
    if args.upsample:
        gen = gen.resampled(args.upsample)
        config = gen.config
    (args.out / "decoder.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))
    gen.config = dataclasses.replace(config, beam=1)  # the choice of steps reads units greedily (no unit LM here)
    gen = gen.to(dev).train()

    def uer() -> float:
        gen.eval()
        with torch.no_grad():
            errors = sum(_edit_distance(u.tolist(), gen.predict(h.float(), embed(a.to(dev)).float() if config.token_input else None))
                         for (_, a, u, _), h in zip(val, val_states))
        gen.train()
        return 100 * errors / sum(len(u) for _, _, u, _ in val)

    pad = torch.nn.utils.rnn.pad_sequence

    def batch_loss(indices: list[int], step: int) -> torch.Tensor:
        hidden = pad([train_states[i] for i in indices], batch_first=True).float()
        tokens = embed(pad([train[i][1] for i in indices], batch_first=True).to(dev)).float() if config.token_input else None
        with torch.autocast(dev, dtype=torch.bfloat16):
            return gen.ctc_loss(hidden, torch.tensor([len(train_states[i]) for i in indices], device=dev),
                                pad([train[i][2] for i in indices], batch_first=True).to(dev),
                                torch.tensor([len(train[i][2]) for i in indices], device=dev), tokens)

    work = Path("/tmp/gpu_stage2")  # the optimizer's state, written by the loop at its end
    work.mkdir(exist_ok=True)

    def steps(options):
        return _loop(list(gen.parameters()), batched(batch_loss), len(train), options, work, lambda: None,
                     False, lengths=[len(s) for s in train_states], title="stage 2")

    best = uer()
    log["evals"].append({"step": 0, "uer": round(best, 2)})
    say(f"unit error rate at the start: {best:.2f} %")
    # fit the step count to the time budget from a short run's speed (its updates are undone)
    start = {k: v.clone() for k, v in gen.state_dict().items()}
    probe = TrainOptions(steps=60, batch_size=args.batch_size, lr=args.lr, save_every=10**9)
    for p in steps(probe):
        if p.step == 20:
            began = time.time()
    per_step = (time.time() - began) / 40
    gen.load_state_dict(start)
    n = max(100, int((args.minutes * 60 - (time.time() - t0)) / (per_step * 1.1)))
    say(f"{per_step * 1000:.0f} ms a step: {n} steps")
    options = TrainOptions(steps=n, batch_size=args.batch_size, lr=args.lr, warmup=100, save_every=10**9, seed=args.seed)
    for p in steps(options):
        log["losses"].append(round(p.loss, 4))
        if p.step % args.eval_every == 0 or p.step == n:
            score = uer()
            log["evals"].append({"step": p.step, "uer": round(score, 2), "seconds": round(time.time() - t0)})
            say(f"step {p.step}: loss {np.mean(log['losses'][-200:]):.4f}, held-out unit error rate {score:.2f} %")
            if score < best:
                best = score
                save_file({k: v.detach().half().cpu().contiguous() for k, v in gen.state_dict().items()},
                          str(args.out / "decoder.safetensors"))
            (args.out / "log.json").write_text(json.dumps(log))
    say(f"best held-out unit error rate {best:.2f} %")


def adopt(decoder: Path, base: Path, out: Path) -> None:
    """A model folder: `base` (an omni model) with its speech decoder replaced by `decoder` (and,
    where the run resampled it, `decoder.json` beside it: its config)."""
    from safetensors.torch import load_file, save_file

    from omni_cli.e2e.checkpoint import load_omni, side_files

    state = load_file(str(base / "model.safetensors"))
    config = json.loads((base / "omni_e2e.json").read_text())
    if (decoder.parent / "decoder.json").is_file():
        config["speech_decoder"] = json.loads((decoder.parent / "decoder.json").read_text())
    new = load_file(str(decoder))
    old = {k.split(".", 1)[1] for k in state if k.startswith("speech_generator.")}
    if old != set(new):
        raise SystemExit(f"the decoders differ in: {sorted(old ^ set(new))[:5]}")
    for k, v in new.items():
        state[f"speech_generator.{k}"] = v.to(state[f"speech_generator.{k}"].dtype).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "omni-e2e"})
    (out / "omni_e2e.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in side_files(config):  # the n-gram LMs its beam searches read with
        shutil.copyfile(base / name, out / name)
    try:
        load_omni(out)
    except Exception as e:  # a decoder of other shapes than its config says
        for name in ("model.safetensors", "omni_e2e.json"):
            (out / name).unlink()
        raise SystemExit(f"{decoder} does not fit {base.name}'s model: {e}") from e
    print(f"{out}: {base.name} with the speech decoder of {decoder}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make-kit", type=Path)
    ap.add_argument("--kit", type=Path)
    ap.add_argument("--stage", type=Path, help="there: the folder a.part and b.part were copied to")
    ap.add_argument("--adopt", type=Path, help="here: write --out as the model --base with this decoder.safetensors")
    ap.add_argument("--base", type=Path, default=SHIPPED)
    ap.add_argument("--data", type=Path, default=Path("runs/v2/data"), help="a built set: its held-out instructions are left out, its answers validate")
    ap.add_argument("--texts", type=int, default=0, help="registry texts in the kit (0: all of them)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--upsample", type=int, default=0, help="resample the decoder to this many positions a token first (see omni train speech-decoder --upsample)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.make_kit:
        make_kit(args.make_kit, args.data, args.texts, args.seed)
    elif args.adopt:
        adopt(args.adopt, args.base, args.out)
    else:
        run(args)


if __name__ == "__main__":
    main()
