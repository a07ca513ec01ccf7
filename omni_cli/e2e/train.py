"""Training the end-to-end model's two trainable parts, as the published model was trained:

- stage 1, `train_adaptor`: the speech_projector learns to make the frozen LLM answer speech
  as it answers text (cross-entropy on the answer tokens); the Whisper encoder and the LLM
  stay frozen. With `task="asr"` the same stage is a LLaSM-style pre-alignment: the LLM is
  asked to repeat what was said, and learns from the transcript.
  With `task="align"` it is a cheaper pre-alignment still, run before the ASR one: no LLM
  pass at all, the adaptor outputs are scored against the LLM's (frozen) input embeddings
  of the transcript's tokens with CTC, which pulls them towards the embeddings the LLM
  would see had the words been typed.
- stage 2, `train_speech_decoder`: only the CTC speech_generator learns, on the frozen LLM's
  hidden states (the state that emitted each answer token, the end token's included) with
  the answer's unit sequence as target.
Both save a checkpoint every `save_every` steps (the model in our format + `train_state.pt`
with optimizer and step, so `resume` continues), and a loss curve PNG at the end.
Encoder outputs and LLM states are computed once per item and reused across epochs; encoder
outputs are also cached on disk beside the set (`features/`), shared by the stages.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from omni_cli.audio import load_audio
from omni_cli.e2e.checkpoint import save_omni
from omni_cli.e2e.config import PromptConfig
from omni_cli.e2e.speech_llm import SpeechLLM

ASR_INSTRUCTION = "Repeat exactly what was said."


@dataclass(frozen=True)
class TrainOptions:
    steps: int = 1000  # optimizer steps
    batch_size: int = 8  # items per step (gradients accumulated item by item)
    lr: float = 1e-3
    warmup: int = 50  # linear warm-up steps, then cosine decay to 10 %
    save_every: int = 200  # checkpoint interval in steps
    seed: int = 0


@dataclass(frozen=True)
class Progress:
    step: int
    steps: int
    loss: float


def _lr_at(step: int, o: TrainOptions) -> float:
    if step < o.warmup:
        return o.lr * (step + 1) / o.warmup
    t = (step - o.warmup) / max(1, o.steps - o.warmup)
    return o.lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(1.0, t))))


def plot_losses(losses: list[float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(range(1, len(losses) + 1), losses, lw=0.8, alpha=0.5, label="step")
    if len(losses) >= 20:
        k = max(5, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(range(k, len(losses) + 1), smooth, lw=1.6, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _answer_ids(model: SpeechLLM, text: str) -> list[int]:
    tok = model.llm.tokenizer
    eos = tok.convert_tokens_to_ids(tok.eos_token) if tok.eos_token else None
    ids = tok(text, add_special_tokens=False).input_ids
    return ids + ([eos] if eos is not None else [])


def _loop(
    params: list[torch.nn.Parameter],
    item_loss: Callable[[int], torch.Tensor],
    n_items: int,
    options: TrainOptions,
    out: Path,
    save: Callable[[], None],
    resume: bool,
) -> Iterator[Progress]:
    opt = torch.optim.AdamW(params, lr=options.lr, weight_decay=0.0)
    state_path = out / "train_state.pt"
    step, losses = 0, []
    if resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        opt.load_state_dict(state["optimizer"])
        step, losses = state["step"], state["losses"]
    rng = random.Random(f"{options.seed}:{step}")
    while step < options.steps:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, options)
        opt.zero_grad()
        total = 0.0
        for i in rng.sample(range(n_items), min(options.batch_size, n_items)):
            loss = item_loss(i) / options.batch_size
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        losses.append(total)
        yield Progress(step, options.steps, total)
        if step % options.save_every == 0 or step == options.steps:
            save()
            torch.save({"step": step, "optimizer": opt.state_dict(), "losses": losses, "options": dataclasses.asdict(options)},
                       state_path)
            (out / "losses.json").write_text(json.dumps(losses))


def encode_rows(model: SpeechLLM, rows: list[dict]) -> list[torch.Tensor]:
    """The frozen encoder's outputs for each row's audio, cached on disk beside the audio
    folder (`features/<encoder>/<name>.pt`, float16) so later stages and runs reuse them."""
    import re

    cfg = model.config
    key = re.sub(r"[^\w.-]+", "_", f"{Path(cfg.encoder_source).name or 'encoder'}-{cfg.encoder.width}-{'pad' if cfg.encoder.padded else 'real'}")
    out = []
    for r in rows:
        audio = Path(r["audio"])
        cached = audio.parent.parent / "features" / key / f"{audio.stem}.pt"
        if cached.is_file():
            out.append(torch.load(cached, weights_only=True).float())
            continue
        with torch.no_grad():
            states = model.speech_encoder.encode(load_audio(audio))
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save(states.half().clone(), cached)
        out.append(states.half().float())
    return out


def train_adaptor(
    model: SpeechLLM, rows: list[dict], out: Path, options: TrainOptions = TrainOptions(), task: str = "answer",
    resume: bool = False,
) -> Iterator[Progress]:
    """Stage 1. rows: manifest rows with `audio`, `instruction`, and `response` (task answer)."""
    if task not in ("answer", "asr", "align"):
        raise ValueError("task is 'answer', 'asr' or 'align'")
    torch.manual_seed(options.seed)
    out.mkdir(parents=True, exist_ok=True)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.speech_projector.parameters():
        p.requires_grad_(True)
    if task == "answer":
        rows = [r for r in rows if r.get("response") is not None]
    encoded = encode_rows(model, rows)
    if task == "align":
        item_loss, extra = _align_loss(model, rows, encoded)
    else:
        item_loss, extra = _llm_loss(model, rows, encoded, task), []
    model.train()
    yield from _loop(list(model.speech_projector.parameters()) + extra, item_loss, len(rows), options, out,
                     lambda: save_omni(model, out / "model"), resume)
    model.eval()
    plot_losses(json.loads((out / "losses.json").read_text()), out / "loss.png", f"stage 1 ({task}): adaptor")


def _llm_loss(model: SpeechLLM, rows: list[dict], encoded: list[torch.Tensor], task: str):
    """Cross-entropy of the frozen LLM on the target text (the answer, or the transcript for
    ASR), given the chat prompt with the adaptor's output as the user's turn. The prompt's
    part before the speech is the same for every item: its KV cache is computed once."""
    import copy

    prompt_config = dataclasses.replace(model.config.prompt, instruction=ASR_INSTRUCTION) if task == "asr" else None
    targets = [_answer_ids(model, r["instruction"] if task == "asr" else r["response"]) for r in rows]
    embed = model.llm.model.get_input_embeddings()
    before, after = model.prompt_ids(prompt=prompt_config)
    with torch.no_grad():
        prefix = model.llm.model(input_ids=torch.tensor([before]), use_cache=True).past_key_values
    after_embeds = embed(torch.tensor([after])).detach()

    def item_loss(i: int) -> torch.Tensor:
        features = model.speech_projector(encoded[i].unsqueeze(0))
        ids = torch.tensor([targets[i]])
        x = torch.cat([features.to(after_embeds.dtype), after_embeds, embed(ids)], dim=1)
        logits = model.llm.model(inputs_embeds=x, past_key_values=copy.deepcopy(prefix), use_cache=True).logits
        start = features.shape[1] + after_embeds.shape[1] - 1
        return torch.nn.functional.cross_entropy(logits[0, start:-1].float(), ids[0])

    return item_loss


def _align_loss(model: SpeechLLM, rows: list[dict], encoded: list[torch.Tensor]):
    """CTC of the adaptor outputs against the transcript's tokens, each output scored by its
    dot product with the LLM's input embeddings of the tokens in the set (plus a learned
    blank and scale, which are not part of the model)."""
    tok = model.llm.tokenizer
    ids = [tok(" " + r["instruction"], add_special_tokens=False).input_ids for r in rows]
    vocab = sorted({t for seq in ids for t in seq})
    index = {t: n + 1 for n, t in enumerate(vocab)}  # 0 is the blank
    table = model.llm.model.get_input_embeddings().weight[vocab].detach().float()
    blank = torch.nn.Parameter(torch.zeros(1, table.shape[1]))
    log_scale = torch.nn.Parameter(torch.tensor(float(-torch.log(table.norm(dim=1).mean()))))
    targets = [torch.tensor([index[t] for t in seq]) for seq in ids]

    def item_loss(i: int) -> torch.Tensor:
        features = model.speech_projector(encoded[i].unsqueeze(0))[0].float()
        logits = log_scale.exp() * features @ torch.cat([blank, table]).T
        logp = torch.log_softmax(logits, dim=-1).unsqueeze(1)
        n = features.shape[0]
        if n < len(targets[i]):  # too short for CTC: skip (no gradient)
            return logits.sum() * 0.0
        return torch.nn.functional.ctc_loss(logp, targets[i].unsqueeze(0), torch.tensor([n]), torch.tensor([len(targets[i])]),
                                            blank=0, zero_infinity=True)

    return item_loss, [blank, log_scale]


def emitting_states(model: SpeechLLM, encoded: torch.Tensor, response: str) -> torch.Tensor:
    """(len(answer) + 1, llm_width): the frozen LLM's states that emit each answer token and the
    end token, given the speech's encoder outputs."""
    with torch.no_grad():
        features = model.speech_projector(encoded.unsqueeze(0))[0]
        prompt = model.prompt_embeds(features)
        ids = torch.tensor([_answer_ids(model, response)])
        x = torch.cat([prompt, model.llm.model.get_input_embeddings()(ids)], dim=1)
        hidden = model.llm.model(inputs_embeds=x, output_hidden_states=True).hidden_states[-1][0]
    start = prompt.shape[1] - 1
    return hidden[start : start + ids.shape[1]]


def train_speech_decoder(
    model: SpeechLLM, rows: list[dict], out: Path, options: TrainOptions = TrainOptions(), resume: bool = False
) -> Iterator[Progress]:
    """Stage 2. rows: manifest rows with `audio`, `response`, `units`."""
    torch.manual_seed(options.seed)
    out.mkdir(parents=True, exist_ok=True)
    for p in model.parameters():
        p.requires_grad_(False)
    gen = model.speech_generator
    for p in gen.parameters():
        p.requires_grad_(True)
    rows = [r for r in rows if r["units"]]
    states = [emitting_states(model, e, r["response"]) for e, r in zip(encode_rows(model, rows), rows)]
    units = [torch.tensor(r["units"]) for r in rows]

    def item_loss(i: int) -> torch.Tensor:
        h = states[i].unsqueeze(0)
        return gen.ctc_loss(h, torch.tensor([h.shape[1]]), units[i].unsqueeze(0), torch.tensor([len(units[i])]))

    gen.train()
    yield from _loop(list(gen.parameters()), item_loss, len(rows), options, out, lambda: save_omni(model, out / "model"), resume)
    gen.eval()
    plot_losses(json.loads((out / "losses.json").read_text()), out / "loss.png", "stage 2: CTC speech decoder")


def default_prompt() -> PromptConfig:
    """Our models' prompt: the cascade's spoken-style system prompt, the speech as the user turn
    (so the adaptor learns to make speech act as the typed instruction would)."""
    from omni_cli.llm import SPOKEN_SYSTEM_PROMPT

    return PromptConfig(system=SPOKEN_SYSTEM_PROMPT, instruction="", template="chat")
