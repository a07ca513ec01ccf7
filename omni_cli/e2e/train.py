"""Training the end-to-end model's trainable parts, as the published model was trained:

- stage 1, `train_adaptor`: the speech_projector learns to make the frozen LLM answer speech
  as it answers text (cross-entropy on the answer tokens); the Whisper encoder and the LLM
  stay frozen. With `task="asr"` the same stage is a LLaSM-style pre-alignment: the LLM is
  asked to repeat what was said, and learns from the transcript.
  With `task="align"` it is a cheaper pre-alignment still, run before the ASR one: no LLM
  pass at all, the adaptor outputs are scored against the LLM's (frozen) input embeddings
  of the transcript's tokens with CTC, which pulls them towards the embeddings the LLM
  would see had the words been typed.
- stage 1b, `train_llm`: LoRA adapters on the LLM, reading speech through the trained
  adaptor: repeat what was said, and answer it as the LLM answers it typed.
- stage 2, `train_speech_decoder`: only the CTC speech_generator learns, on the frozen LLM's
  hidden states (the state that emitted each answer token, the end token's included) with
  the answer's unit sequence as target.
Each saves a checkpoint every `save_every` steps (the model in our format + `train_state.pt`
with optimizer and step, so `resume` continues), and a loss curve PNG at the end.
Encoder outputs and LLM states are computed once per item and reused across epochs; encoder
outputs are also cached on disk beside the set (`features/`), shared by the stages.
`start_stage` sets a stage up from a built set: its training rows, the model to start from
(the run's own on resume, a given one, or a fresh default), and the stage's steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from omni_cli.audio import SAMPLE_RATE, audio_duration, load_audio
from omni_cli.errors import ConfigError
from omni_cli.e2e.checkpoint import load_omni, read_omni_config, save_omni
from omni_cli.e2e.config import lora_tasks as checked_lora_tasks
from omni_cli.e2e.lora import LoraConfig
from omni_cli.e2e.rooms import add_reverb
from omni_cli.e2e.speech_llm import SpeechLLM


@dataclass(frozen=True)
class TrainOptions:
    steps: int = 1000  # optimizer steps
    batch_size: int = 8  # items per step (gradients accumulated item by item)
    lr: float = 1e-3
    warmup: int = 50  # linear warm-up steps, then cosine decay to 10 %
    save_every: int = 200  # checkpoint interval in steps
    seed: int = 0
    stop_at: int | None = None  # stop (with a checkpoint) after this step; the schedule stays that of `steps`

    @property
    def last_step(self) -> int:
        """The step this run stops after: `steps`, or `stop_at` if that comes first."""
        return min(self.steps, self.stop_at or self.steps)


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


def said_tokens(model: SpeechLLM, ids: list[int]) -> list[bool]:
    """Which of an answer's token ids (`_answer_ids`: the end token last) reach the speech
    decoder: all but markdown marks and list markers (`text.SpokenTokens`), decided as
    `E2EPipeline` decides while it streams, so the decoder learns what it will be given."""
    from omni_cli.text import SpokenTokens

    tok = model.llm.tokenizer
    eos = tok.convert_tokens_to_ids(tok.eos_token) if tok.eos_token else None
    spoken: SpokenTokens[int] = SpokenTokens()
    kept = {n for k, i in enumerate(ids) for n in spoken.push("" if i == eos else tok.decode([i]), k)}
    kept.update(spoken.flush())
    return [k in kept for k in range(len(ids))]


def said_answer(model: SpeechLLM, text: str) -> tuple[list[int], list[bool], str]:
    """An answer's token ids (`_answer_ids`), which of them reach the speech decoder
    (`said_tokens`), and the text those say, its markdown marks left out: a token kept for
    what else it says may hold one (":**" in "Goods:** Baked"), which a phonemizer reads out
    ("colon asterisk asterisk") and the speech decoder must not learn to say."""
    from omni_cli.text import strip_marks

    ids = _answer_ids(model, text)
    keep = said_tokens(model, ids)
    said = text if all(keep) else model.llm.tokenizer.decode([i for i, k in zip(ids, keep) if k], skip_special_tokens=True)
    return ids, keep, strip_marks(said)


StepLoss = Callable[[list[int], int], float]  # (this process's items of the step, step number) -> loss, after backward


def per_item(item_loss: Callable[[int], torch.Tensor]) -> StepLoss:
    """A step's loss computed item by item, each backpropagated at once (least memory)."""

    def step(indices: list[int], number: int) -> float:
        total = 0.0
        for i in indices:
            loss = item_loss(i) / len(indices)
            loss.backward()
            total += loss.item()
        return total

    return step


def batched(batch_loss: Callable[[list[int], int], torch.Tensor]) -> StepLoss:
    """A step's loss computed over the whole batch as one padded tensor."""

    def step(indices: list[int], number: int) -> float:
        loss = batch_loss(indices, number)
        loss.backward()
        return loss.item()

    return step


def autocast(device: torch.device | str = "cpu"):
    """bfloat16 autocast where the hardware has it (CUDA, or a CPU with AVX512-BF16 or AMX);
    float32 elsewhere."""
    import contextlib

    kind = torch.device(device).type
    if kind == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if kind == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def training_device(device: str = "cpu") -> str:
    """The device this training process uses. Under torchrun (WORLD_SIZE > 1) it also joins the
    process group (NCCL on CUDA, gloo on CPU), each process on its own GPU (LOCAL_RANK)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    from omni_cli.registry import require_device

    device = require_device(device)
    if device.startswith("cuda"):
        # cuDNN attention builds a plan for each new sequence length (about 80 ms of CPU time
        # each on an H200, measured): every padded batch has its own length, so it took most
        # of a stage-1 step. PyTorch's flash and memory-efficient kernels need no plan.
        torch.backends.cuda.enable_cudnn_sdp(False)
    return device


def world() -> tuple[int, int]:
    """(rank, number of processes) of a distributed run (torchrun), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _average_across_processes(params: list[torch.nn.Parameter], loss: float) -> float:
    """Data parallelism: every process computed gradients on its share of the batch; each
    gradient (and the loss) becomes the mean over the processes, as DistributedDataParallel does."""
    import torch.distributed as dist

    n = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= n
    total = torch.tensor([loss], device=params[0].device)
    dist.all_reduce(total)
    return float(total) / n


def _loop(
    params: list[torch.nn.Parameter],
    step_loss: StepLoss,
    n_items: int,
    options: TrainOptions,
    out: Path,
    save: Callable[[], None],
    resume: bool,
    lengths: list[int] | None = None,
    title: str = "loss",
) -> Iterator[Progress]:
    """The optimizer loop. Each step draws `batch_size` items at random; with `lengths`, items
    of similar length (consecutive in length order, from a random place), so little of a
    padded batch is padding. In a distributed run every process draws the same items and
    computes its share of them (every n-th), gradients are averaged, and only the first
    process writes checkpoints. The loss curve (`title`) is drawn at the end."""
    rank, n_proc = world()
    if options.batch_size < n_proc:
        raise ConfigError(f"--batch-size {options.batch_size} is smaller than the {n_proc} processes sharing each batch")
    opt = torch.optim.AdamW(params, lr=options.lr, weight_decay=0.0)
    by_length = sorted(range(n_items), key=lambda i: lengths[i]) if lengths is not None else None
    state_path = out / "train_state.pt"
    step, losses = 0, []
    if resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        opt.load_state_dict(state["optimizer"])
        step, losses = state["step"], state["losses"]
    rng = random.Random(f"{options.seed}:{step}")
    while step < options.last_step:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, options)
        opt.zero_grad()
        size = min(options.batch_size, n_items)
        if by_length is None:
            indices = rng.sample(range(n_items), size)
        else:
            start = rng.randrange(n_items - size + 1)
            indices = by_length[start : start + size]
        total = step_loss(indices[rank::n_proc], step)
        if n_proc > 1:
            total = _average_across_processes(params, total)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        losses.append(total)
        yield Progress(step, options.steps, total)
        if rank == 0 and (step % options.save_every == 0 or step == options.last_step):
            save()
            torch.save({"step": step, "optimizer": opt.state_dict(), "losses": losses, "options": dataclasses.asdict(options)},
                       state_path)
            (out / "losses.json").write_text(json.dumps(losses))
    if rank == 0:
        plot_losses(losses, out / "loss.png", title)


_preparing: list[Callable[[str, int, int], None]] = []


@contextlib.contextmanager
def preparation_progress(report: Callable[[str, int, int], None]) -> Iterator[None]:
    """Within it, the frozen passes that prepare a stage's items (encoder outputs, LLM states)
    call `report(what, done, total)` as they go (the first step of a stage can take an hour)."""
    _preparing.append(report)
    try:
        yield
    finally:
        _preparing.remove(report)


def _prepared(what: str, done: int, total: int) -> None:
    for report in _preparing:
        report(what, done, total)


def encode_rows(model: SpeechLLM, rows: list[dict]) -> list[torch.Tensor]:
    """The frozen encoder's outputs for each row's audio (float16, as cached), cached on disk
    beside the audio folder (`features/<encoder>/<name>.pt`) so later stages and runs reuse them."""
    import re

    cfg = model.config
    key = re.sub(r"[^\w.-]+", "_", f"{Path(cfg.encoder_source).name or 'encoder'}-{cfg.encoder.width}-{'pad' if cfg.encoder.padded else 'real'}")
    out = []
    for n, r in enumerate(rows):
        if n % 50 == 0:
            _prepared("encoder outputs", n, len(rows))
        audio = Path(r["audio"])
        cached = audio.parent.parent / "features" / key / f"{audio.stem}.pt"
        if cached.is_file():
            out.append(torch.load(cached, weights_only=True))
            continue
        with torch.no_grad():
            states = model.speech_encoder.encode(load_audio(audio))
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save(states.half().clone(), cached)
        out.append(states.half())
    _prepared("encoder outputs", len(rows), len(rows))
    return out


@torch.no_grad()
def stitch_encoder(model: SpeechLLM, encoder: str, rows: list[dict], items: int = 2000, ridge: float = 1e-3) -> None:
    """Move `model`'s trained ctc adaptor onto another Whisper's encoder (`encoder`: a registry
    name, a CTranslate2 folder or openai-whisper .pt, a name where a network is), in place. The
    adaptor's first layer, the one that reads the encoder, is fitted anew by ridge regression to
    what it gives on the old encoder's outputs for the same audio (up to `items` of `rows`, both
    encoders' outputs cached as `encode_rows` caches them); every other weight is kept, so stage
    1 goes on from what the adaptor knew instead of from nothing (v3.13's adaptor on Whisper base:
    34 % WER before any step, where a fresh one was at 50 % after 1,500 steps of 32)."""
    from omni_cli.e2e.checkpoint import build_encoder
    from omni_cli.e2e.defaults import encoder_config, whisper_dims
    from omni_cli.e2e.speech_projector import _stack, build_projector

    proj = model.speech_projector
    if model.config.projector.type != "ctc":
        raise ConfigError("--encoder with --from moves a ctc adaptor onto another Whisper; this model's adaptor is "
                          f"{model.config.projector.type}")
    if not rows:
        raise ConfigError("moving the adaptor onto another Whisper needs spoken training items")
    enc_config = encoder_config(whisper_dims(encoder), speech_margin=model.config.encoder.speech_margin)
    sample = random.Random(0).sample(rows, min(items, len(rows)))
    old = encode_rows(model, sample)
    device = model.device
    model.speech_encoder = build_encoder(enc_config, encoder, str(device))
    model.config = dataclasses.replace(model.config, encoder=enc_config, encoder_source=encoder)
    new = encode_rows(model, sample)
    k, width = proj.k, enc_config.width
    xtx = torch.zeros(width * k + 1, width * k + 1, dtype=torch.float64)
    xty = torch.zeros(width * k + 1, proj.config.hidden, dtype=torch.float64)
    for a, b in zip(old, new):
        m = min(len(a), len(b)) // k * k
        if not m:
            continue
        y = proj.linear1(_stack(a[None, :m].float().to(device), k))[0].double().cpu()
        x = _stack(b[None, :m].float(), k)[0].double()
        x = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1)
        xtx += x.T @ x
        xty += x.T @ y
    weights = torch.linalg.solve(xtx + ridge * xtx.diagonal().mean() * torch.eye(len(xtx), dtype=torch.float64), xty)
    moved = build_projector(dataclasses.replace(proj.config, encoder_width=width))
    state = {name: v for name, v in proj.state_dict().items() if not name.startswith("linear1.")}
    moved.load_state_dict(state | {"linear1.weight": weights[:-1].T.float().contiguous(), "linear1.bias": weights[-1].float()})
    moved.token_lm = proj.token_lm
    moved.bind(*proj._llm)
    model.speech_projector = moved.to(device)
    model.config = dataclasses.replace(model.config, projector=moved.config)


def train_adaptor(
    model: SpeechLLM, rows: list[dict], out: Path, options: TrainOptions = TrainOptions(), task: str = "answer",
    resume: bool = False, augment: bool | Augment = False,
) -> Iterator[Progress]:
    """Stage 1. rows: manifest rows with `audio`, `instruction`, and `response` (task answer).
    `augment` (ctc task): train from augmented audio, see `train_ctc_adaptor`."""
    if task not in ("answer", "asr", "align", "ctc"):
        raise ValueError("task is 'answer', 'asr', 'align' or 'ctc'")
    if (task == "ctc") != (model.config.projector.type == "ctc"):
        raise ConfigError(f"--task {task} does not train a {model.config.projector.type} adaptor: "
                          + ("use --task answer, asr or align" if task == "ctc" else "use --task ctc"))
    if task == "ctc":
        yield from train_ctc_adaptor(model, rows, out, options, resume,
                                     augment=(Augment() if augment is True else augment) or None)
        return
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
    yield from _loop(list(model.speech_projector.parameters()) + extra, per_item(item_loss), len(rows), options, out,
                     lambda: save_omni(model, out / "model"), resume, title=f"stage 1 ({task}): adaptor")
    model.eval()


def _llm_loss(model: SpeechLLM, rows: list[dict], encoded: list[torch.Tensor], task: str):
    """Cross-entropy of the frozen LLM on the target text (the answer, or the transcript for
    ASR), given the chat prompt with the adaptor's output as the user's turn. The prompt's
    part before the speech is the same for every item: its KV cache is computed once."""
    import copy

    prompt_config = model.repeat_prompt() if task == "asr" else None
    targets = [_answer_ids(model, r["instruction"] if task == "asr" else r["response"]) for r in rows]
    embed = model.llm.model.get_input_embeddings()
    before, after = model.prompt_ids(prompt=prompt_config)
    dev = model.device
    with torch.no_grad():
        prefix = model.llm.model(input_ids=torch.tensor([before], device=dev), use_cache=True).cache
    after_embeds = embed(torch.tensor([after], device=dev)).detach()

    def item_loss(i: int) -> torch.Tensor:
        features = model.speech_projector(encoded[i].float().unsqueeze(0).to(dev))
        ids = torch.tensor([targets[i]], device=dev)
        x = torch.cat([features.to(after_embeds.dtype), after_embeds, embed(ids)], dim=1)
        logits = model.llm.model(inputs_embeds=x, cache=copy.deepcopy(prefix), use_cache=True).logits
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
    dev = model.device
    table = model.llm.model.get_input_embeddings().weight[vocab].detach().float()
    blank = torch.nn.Parameter(torch.zeros(1, table.shape[1], device=dev))
    log_scale = torch.nn.Parameter(torch.tensor(float(-torch.log(table.norm(dim=1).mean())), device=dev))
    targets = [torch.tensor([index[t] for t in seq], device=dev) for seq in ids]

    def item_loss(i: int) -> torch.Tensor:
        features = model.speech_projector(encoded[i].float().unsqueeze(0).to(dev))[0].float()
        logits = log_scale.exp() * features @ torch.cat([blank, table]).T
        logp = torch.log_softmax(logits, dim=-1).unsqueeze(1)
        n = features.shape[0]
        if n < len(targets[i]):  # too short for CTC: skip (no gradient)
            return logits.sum() * 0.0
        return torch.nn.functional.ctc_loss(logp, targets[i].unsqueeze(0), torch.tensor([n], device=dev),
                                            torch.tensor([len(targets[i])], device=dev), blank=0, zero_infinity=True)

    return item_loss, [blank, log_scale]


def _time_masks(x: torch.Tensor, lengths: torch.Tensor, seeds: list[int], n: int = 2, width: int = 10) -> torch.Tensor:
    """SpecAugment-style time masking of encoder frames: `n` spans of up to `width` frames per
    item, drawn from each item's own seed (so a batch split across processes masks alike)."""
    x = x.clone()
    for b, length in enumerate(lengths.tolist()):
        rng = torch.Generator().manual_seed(seeds[b])
        for _ in range(n):
            w = int(torch.randint(0, width + 1, (1,), generator=rng))
            if length > w:
                start = int(torch.randint(0, length - w, (1,), generator=rng))
                x[b, start : start + w] = 0
    return x


@dataclass(frozen=True)
class Augment:
    """Augmentation for training from audio (the encoder run on every step, not cached):
    the whole batch's speed changed by one factor drawn from `speed` (tempo and pitch, by
    resampling); optionally white noise at an SNR drawn from `noise_snr` (dB) on a share
    `noise_p` of the items, and each log-mel's frequency axis stretched by a factor drawn from
    `warp` (vocal tract length perturbation: another speaker's formants); optionally a room's
    echo (`add_reverb`) on a share `reverb_p` of the items, its decay time (RT60, seconds) drawn
    from `reverb` and its direct-to-reverberant ratio (dB) from `reverb_drr`; then SpecAugment on
    each log-mel: `freq_masks` bands of up to `freq_width` mel bins and `time_masks` spans of
    up to `time_width` frames (10 ms each)."""

    speed: tuple[float, float] = (0.9, 1.1)
    freq_masks: int = 2
    freq_width: int = 12
    time_masks: int = 2
    time_width: int = 20
    warp: tuple[float, float] | None = None
    noise_snr: tuple[float, float] | None = None
    noise_p: float = 0.5
    reverb: tuple[float, float] | None = None
    reverb_drr: tuple[float, float] = (0.0, 12.0)
    reverb_p: float = 0.5


def add_noise(audio: torch.Tensor, snr_db: float, gen: torch.Generator) -> torch.Tensor:
    """`audio` with white noise `snr_db` below its power."""
    power = audio.pow(2).mean().clamp_min(1e-10)
    noise = torch.randn(audio.shape, generator=gen).to(audio)
    return audio + noise * torch.sqrt(power / 10 ** (snr_db / 10))


def warp_frequencies(mel: torch.Tensor, factor: float) -> torch.Tensor:
    """A log-mel (n_mels, frames) with its frequency axis stretched by `factor` (> 1: formants
    move up, as from a shorter vocal tract); the top bins repeat the last one read."""
    n = mel.shape[0]
    src = (torch.arange(n, dtype=torch.float32, device=mel.device) / factor).clamp(max=n - 1)
    low = src.floor().long()
    high = (low + 1).clamp(max=n - 1)
    frac = (src - low).unsqueeze(1).to(mel.dtype)
    return mel[low] * (1 - frac) + mel[high] * frac


def augmented_mels(audios: list[torch.Tensor], n_mels: int, augment: Augment | None, rng: random.Random,
                   n_ctx: int = 1500) -> list[torch.Tensor]:
    """Each utterance's log-mel (n_mels, even frames), as the real-length encoder of context
    `n_ctx` reads it, after `augment` (none: exactly `SpeechEncoder.mel`'s)."""
    from omni_cli.e2e.speech_encoder import real_length_mel, speed_perturb

    factor = rng.uniform(*augment.speed) if augment else 1.0
    gen = torch.Generator().manual_seed(rng.randrange(2**31)) if augment and (augment.noise_snr or augment.reverb) else None
    mels = []
    for audio in audios:
        audio = speed_perturb(audio.float(), factor)
        if augment and augment.reverb and rng.random() < augment.reverb_p:
            audio = add_reverb(audio, rng.uniform(*augment.reverb), rng.uniform(*augment.reverb_drr), gen)
        if augment and augment.noise_snr and rng.random() < augment.noise_p:
            audio = add_noise(audio, rng.uniform(*augment.noise_snr), gen)
        mel = real_length_mel(audio, n_mels, n_ctx)
        if augment:
            mel = warp_frequencies(mel, rng.uniform(*augment.warp)) if augment.warp else mel.clone()
            for count, width, axis in ((augment.freq_masks, augment.freq_width, 0), (augment.time_masks, augment.time_width, 1)):
                size = mel.shape[axis]
                for _ in range(count):
                    w = rng.randint(0, min(width, size - 1))
                    start = rng.randint(0, size - w)
                    if axis == 0:
                        mel[start : start + w] = 0
                    else:
                        mel[:, start : start + w] = 0
        mels.append(mel)
    return mels


def audio_samples(path: Path, sample_rate: int = SAMPLE_RATE) -> int:
    """How many samples at `sample_rate` the file holds: from its header (`audio_duration`, no
    decoding), else by decoding it."""
    seconds = audio_duration(path)
    return round(seconds * sample_rate) if seconds is not None else len(load_audio(path, sample_rate))


def ctc_adaptor_loss(proj, x: torch.Tensor, lengths: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
    """CTC of the ctc adaptor's posteriors for encoder states `x` (batch, frames, width) with
    `lengths` valid frames each, against each item's class sequence."""
    dev = x.device
    with autocast(dev):
        logits = proj.logits(x, lengths)
    logp = torch.log_softmax(logits.float(), dim=-1).transpose(0, 1)
    target = torch.nn.utils.rnn.pad_sequence([torch.tensor(t, dtype=torch.long) for t in targets], batch_first=True)
    return torch.nn.functional.ctc_loss(logp, target.to(dev), torch.div(lengths, proj.k, rounding_mode="floor").to(dev),
                                        torch.tensor([len(t) for t in targets]).to(dev), blank=proj.blank, zero_infinity=True)


def train_ctc_adaptor(
    model: SpeechLLM, rows: list[dict], out: Path, options: TrainOptions = TrainOptions(), resume: bool = False,
    augment: Augment | None = None, audios: list[np.ndarray] | None = None, save: Callable[[], None] | None = None,
    grow_vocab: bool = True,
) -> Iterator[Progress]:
    """Stage 1 for the "ctc" adaptor: CTC of its token posteriors against each transcript's LLM
    tokens (no LLM pass), a batch at a time as one padded tensor. Without `augment`, from the
    cached encoder outputs, with time masking; with it, the frozen encoder runs on every batch
    of augmented audio (`audios`, 16 kHz, or each row's file), which is what a GPU is for.
    With `grow_vocab` (a tokens head), the head first learns the transcripts' tokens it lacks
    (`CTCSpeechProjector.extend`); without, they are left out of the targets."""
    proj, encoder = model.speech_projector, model.speech_encoder
    torch.manual_seed(options.seed)
    out.mkdir(parents=True, exist_ok=True)
    if grow_vocab and proj.config.units == "tokens":  # a trained adaptor going on with new transcripts learns their new tokens too
        from omni_cli.e2e.speech_projector import ctc_vocabulary

        vocab = ctc_vocabulary(model.llm.tokenizer, [r["instruction"] for r in rows])
        model.config = dataclasses.replace(model.config, projector=proj.extend(vocab))
    for p in model.parameters():
        p.requires_grad_(False)
    for p in proj.parameters():
        p.requires_grad_(True)
    targets = [proj.targets(r["instruction"]) for r in rows]
    dev = model.device
    if augment is None:
        encoded = encode_rows(model, rows)
        lengths_of = [e.shape[0] for e in encoded]

        def batch_loss(indices: list[int], step: int) -> torch.Tensor:
            lengths = torch.tensor([encoded[i].shape[0] for i in indices])
            x = torch.nn.utils.rnn.pad_sequence([encoded[i] for i in indices], batch_first=True).float()
            x = _time_masks(x, lengths, [hash((options.seed, step, i)) % 2**62 for i in indices]).to(dev)
            return ctc_adaptor_loss(proj, x, lengths.to(dev), [targets[i] for i in indices])
    else:
        if encoder.config.padded:
            raise ConfigError("training from audio (augment) needs a real-length encoder")
        if audios is None:  # each batch's files read as it comes: a set of 80,000 utterances is about 25 GB as float32
            lengths_of = [audio_samples(Path(r["audio"])) for r in rows]

            def audio_of(i: int) -> np.ndarray:
                return load_audio(Path(rows[i]["audio"]))
        else:
            lengths_of = [len(a) for a in audios]
            audio_of = audios.__getitem__

        def batch_loss(indices: list[int], step: int) -> torch.Tensor:
            rng = random.Random(f"{options.seed}:{step}")
            batch = [torch.as_tensor(audio_of(i)).to(dev) for i in indices]
            with torch.no_grad():
                x, lengths = encoder.encode_batch(augmented_mels(batch, encoder.config.n_mels, augment, rng,
                                                                 encoder.config.n_ctx))
            return ctc_adaptor_loss(proj, x.float(), lengths, [targets[i] for i in indices])

    proj.train()
    yield from _loop(list(proj.parameters()), batched(batch_loss), len(rows), options, out,
                     save or (lambda: save_omni(model, out / "model")), resume, lengths=lengths_of,
                     title="stage 1 (ctc): adaptor")
    proj.eval()


@torch.no_grad()
def speech_features_of(model: SpeechLLM, encoded: list[torch.Tensor], batch: int = 64) -> list[torch.Tensor]:
    """The adaptor's outputs for each utterance's cached encoder states, as the LLM reads them
    (a ctc adaptor decodes them in padded batches, in length order)."""
    proj, dev = model.speech_projector, model.device
    if not hasattr(proj, "decode_batch"):
        return [proj(e.float().unsqueeze(0).to(dev))[0].cpu() for e in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out: list[torch.Tensor | None] = [None] * len(encoded)
    for b in range(0, len(order), batch):
        part = order[b : b + batch]
        for i, ids in zip(part, proj.decode_batch([encoded[i].float().to(dev) for i in part])):
            out[i] = proj.embed_heard(ids).cpu()
    return out


def train_llm(
    model: SpeechLLM, rows: list[dict], out: Path, options: TrainOptions = TrainOptions(), resume: bool = False,
    lora: LoraConfig = LoraConfig(), answer_share: float = 0.5, lora_tasks: Sequence[str] | None = None,
) -> Iterator[Progress]:
    """Stage 1b: LoRA adapters on the LLM (encoder and adaptor frozen), on a mix of two tasks
    read from speech through the trained adaptor: repeat what was said (the transcript;
    the model's ASR task), and answer it as the LLM answers the typed instruction (its own
    text answer: self-distillation, which keeps the LLM's answers its own). `answer_share`
    of each batch answers; a batch is one padded tensor. `lora_tasks` (saved in the config;
    None: the model's own): the tasks the trained adapters serve; ("repeat",) leaves answering to
    the base LLM."""
    from omni_cli.e2e.lora import add_lora, merge_lora

    torch.manual_seed(options.seed)
    out.mkdir(parents=True, exist_ok=True)
    for p in model.parameters():
        p.requires_grad_(False)
    llm = model.llm.model
    loaded = model.loaded_lora
    if model.lora_merged:  # continuing from adapters merged at load: take them out, train them on
        merge_lora(llm, loaded, lora, sign=-1.0)
    params = add_lora(llm, lora)
    if loaded:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(llm, loaded)
        model.loaded_lora = {}
    model.config = dataclasses.replace(model.config, llm_lora={**dataclasses.asdict(lora), "targets": list(lora.targets)},
                                       lora_tasks=checked_lora_tasks(lora_tasks or model.config.lora_tasks))
    features = speech_features_of(model, encode_rows(model, rows))
    embed = llm.get_input_embeddings()
    prompts = {}
    for task, config in (("answer", None), ("asr", model.repeat_prompt())):
        before, after = model.prompt_ids(prompt=config)
        prompts[task] = (torch.tensor(before), torch.tensor(after))
    answers = [i for i, r in enumerate(rows) if r.get("response")]
    repeats = list(range(len(rows)))
    if not answers:
        answer_share = 0.0
    targets = {("asr", i): _answer_ids(model, rows[i]["instruction"]) for i in repeats}
    targets |= {("answer", i): _answer_ids(model, rows[i]["response"]) for i in answers}
    dev = model.device

    def batch_loss(indices: list[int], step: int) -> torch.Tensor:
        items = []
        for i in indices:  # each item's task drawn from its own seed, as the time masks are
            pick = random.Random(f"{options.seed}:{step}:{i}")
            items.append(("answer", pick.choice(answers)) if pick.random() < answer_share else ("asr", i))
        seqs, labels = [], []
        for task, i in items:
            before, after = prompts[task]
            target = torch.tensor(targets[(task, i)])
            with torch.no_grad():
                x = torch.cat([embed(before.to(dev)), features[i].to(dev, embed.weight.dtype), embed(after.to(dev))])
            seqs.append(torch.cat([x, embed(target.to(dev))]))
            labels.append(torch.cat([torch.full((len(x),), -100), target]))
        x = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
        y = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=-100).to(dev)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(q), dtype=torch.long) for q in seqs], batch_first=True).to(dev)
        with autocast(dev):
            logits = llm(inputs_embeds=x, attention_mask=mask).logits
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), y[:, 1:].flatten(), ignore_index=-100)

    llm.train()
    yield from _loop(params, batched(batch_loss), len(rows), options, out, lambda: save_omni(model, out / "model"), resume,
                     title="stage 1b (llm): LoRA, repeat + answer")
    llm.eval()


def emitting_states(model: SpeechLLM, response: str, encoded: torch.Tensor | None = None,
                    instruction: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen LLM's states that emit each answer token and the end token, and those tokens'
    input embeddings, both (len(answer) + 1, llm_width): given the speech's encoder outputs,
    or (no audio needed) the typed instruction in the user turn."""
    return emitting_states_batch(model, [response], None if encoded is None else [encoded],
                                 None if instruction is None else [instruction])[0]


@torch.no_grad()
def emitting_states_batch(model: SpeechLLM, responses: list[str], encoded: list[torch.Tensor] | None = None,
                          instructions: list[str] | None = None, batch: int = 16, dtype: torch.dtype = torch.float32,
                          embeddings: bool = True) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """`emitting_states` of many items, the LLM run on right-padded batches (bfloat16 autocast
    where the hardware has it), in length order; results on the CPU as `dtype`, in the items'
    order (without `embeddings`, (states, None): tens of thousands of items fit in memory); the
    embeddings are those the speech decoder reads (`SpeechLLM.said_token_id`)."""
    embed = model.llm.model.get_input_embeddings()
    dev = model.device
    if encoded is not None:
        prompts = [model.prompt_embeds(f.to(dev))[0] for f in speech_features_of(model, encoded)]
    else:
        system = model.config.prompt.system
        prompts = [embed(model.llm.chat_ids([{"role": "system", "content": system}, {"role": "user", "content": text}]))[0]
                   for text in instructions]
    answer_ids = [_answer_ids(model, r) for r in responses]
    answers = [torch.tensor(ids, device=dev) for ids in answer_ids]
    order = sorted(range(len(responses)), key=lambda i: len(prompts[i]) + len(answers[i]))
    out: list = [None] * len(responses)
    for b in range(0, len(order), batch):
        part = order[b : b + batch]
        seqs = [torch.cat([prompts[i], embed(answers[i])]) for i in part]
        x = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(q), dtype=torch.long, device=dev) for q in seqs], batch_first=True)
        with autocast(dev):
            hidden = model.llm.model(inputs_embeds=x, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        for row, i in enumerate(part):
            start = len(prompts[i]) - 1
            out[i] = (hidden[row, start : start + len(answers[i])].to(dtype).cpu().clone(),
                      embed(torch.tensor(model.said_token_ids(answer_ids[i]), device=dev)).to(dtype).cpu() if embeddings else None)
        _prepared("LLM states", min(b + batch, len(order)), len(order))
    return out


def _llm_fingerprint(model: SpeechLLM) -> str:
    """A hash of the LLM's weights (LoRA merged): states computed under other weights differ."""
    h = hashlib.sha256(model.config.llm_source.encode())
    for name, p in model.llm.model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _cached_states(model: SpeechLLM, rows: list[dict], cache: Path, from_text: bool) -> list[torch.Tensor]:
    """The LLM's emitting states of each row (bfloat16), from `cache` where it has them for this
    LLM's weights, the others computed and added to it."""
    llm = _llm_fingerprint(model)
    keys = [hashlib.sha256(json.dumps([from_text, r["instruction"] if from_text else r["audio"], r["response"]]).encode()).hexdigest()[:24]
            for r in rows]
    saved = torch.load(cache, weights_only=True) if cache.is_file() else {}
    known: dict[str, torch.Tensor] = saved.get("items", {}) if saved.get("llm") == llm else {}
    todo = sorted({k: i for i, k in enumerate(keys) if k not in known}.values())
    if todo:
        part = [rows[i] for i in todo]
        encoded = None if from_text else encode_rows(model, part)
        pairs = emitting_states_batch(model, [r["response"] for r in part], encoded=encoded,
                                      instructions=[r["instruction"] for r in part] if from_text else None,
                                      dtype=torch.bfloat16, embeddings=False)
        known.update((keys[i], h) for i, (h, _) in zip(todo, pairs))
        if world()[0] == 0:
            tmp = cache.with_suffix(".tmp")
            torch.save({"llm": llm, "items": known}, tmp)
            tmp.replace(cache)
    return [known[k] for k in keys]


def train_speech_decoder(
    model: SpeechLLM, rows: list[dict], out: Path, options: TrainOptions = TrainOptions(), resume: bool = False,
    from_text: bool = False, read_back: int = 0, texts: Sequence[dict] = (),
) -> Iterator[Progress]:
    """Stage 2. rows: manifest rows with `response`, `units`, and `audio` (or, `from_text`, the
    typed `instruction` takes the speech's place: no audio needed). A batch at a time, padded.

    More answer text, no LLM answers needed, units from the model's unit vocoder: `read_back`
    more rows without an answer, their instruction read back as the answer; `texts`,
    {instruction, response} pairs without audio (`decoder_texts`; needs `from_text`).
    The LLM's states are computed once and kept in `out/decoder-states.pt` (bfloat16, by item,
    for this LLM's weights): a resumed run, or one with more items, computes only the new ones."""
    torch.manual_seed(options.seed)
    out.mkdir(parents=True, exist_ok=True)
    for p in model.parameters():
        p.requires_grad_(False)
    gen = model.speech_generator
    if texts and not from_text:
        raise ConfigError("extra texts have no audio: train them with --from-text")
    extra = [{**r, "response": r["instruction"]} for r in rows if not r.get("units")][:read_back]
    extra += [{"instruction": t["instruction"], "response": t["response"]} for t in texts]
    rows = [r for r in rows if r.get("units")]
    if extra:
        from omni_cli.e2e.unit_vocoder import load_unit_vocoder

        vocoder = load_unit_vocoder(model.config.vocoder)
        if not hasattr(vocoder, "text_to_units"):
            raise ConfigError(f"--read-back and --extra-texts need units computed from text; {vocoder.label} cannot")
        extra = [{**r, "units": vocoder.text_to_units(r["response"])} for r in extra]
        rows += [r for r in extra if r["units"]]
    states = _cached_states(model, rows, out / "decoder-states.pt", from_text)
    spoken = [said_answer(model, r["response"]) for r in rows]
    ids = [torch.tensor(model.said_token_ids(i)) for i, _, _ in spoken]  # the tokens whose embeddings it reads
    units = [torch.tensor(r["units"]) for r in rows]
    _keep_said(model, spoken, states, ids, units, [r["response"] for r in rows])
    pad = torch.nn.utils.rnn.pad_sequence
    dev = model.device
    embed = model.llm.model.get_input_embeddings()
    for p in gen.parameters():
        p.requires_grad_(True)

    def batch_loss(indices: list[int], step: int) -> torch.Tensor:
        hidden = pad([states[i] for i in indices], batch_first=True).to(dev).float()
        tokens = embed(pad([ids[i] for i in indices], batch_first=True).to(dev)).float() if gen.config.token_input else None
        with autocast(dev):
            return gen.ctc_loss(hidden, torch.tensor([len(states[i]) for i in indices], device=dev),
                                pad([units[i] for i in indices], batch_first=True).to(dev),
                                torch.tensor([len(units[i]) for i in indices], device=dev), tokens)

    gen.train()
    yield from _loop(list(gen.parameters()), batched(batch_loss), len(rows), options, out, lambda: save_omni(model, out / "model"), resume,
                     lengths=[len(h) for h in states], title="stage 2: CTC speech decoder")
    gen.eval()


def fit_unit_lm(data_dir: Path, out: Path, order: int = 6, texts: int = 0, seed: int = 0,
                text_sources: Sequence[str] = (), vocoder: str | None = None) -> dict:
    """The unit n-gram a speech decoder's beam search reads its units with (`unit_lm.UnitNgram`),
    written to `out`: counted over the unit sequences of the registry texts stage 2 trains on
    (`decoder_texts` of `text_sources`, `texts` of them, 0: all; none of the set's held-out
    instructions among them) and of the set's answered training items, the units as
    `vocoder`'s front end gives them (default: the offline default's Piper voice)."""
    from omni_cli import data
    from omni_cli.e2e.build_data import DECODER_TEXT_SOURCES, decoder_texts, read_manifest, training_sources
    from omni_cli.e2e.unit_lm import UnitNgram
    from omni_cli.e2e.unit_vocoder import load_unit_vocoder

    if order < 1:
        raise ConfigError(f"--order must be >= 1, got {order}")
    if not (data_dir / "manifest.jsonl").is_file():
        raise ConfigError(f"{data_dir}: no manifest.jsonl (build one with `omni data build --out {data_dir}`)")
    speaker = load_unit_vocoder(vocoder)
    if not hasattr(speaker, "text_to_units"):
        raise ConfigError(f"a unit LM is counted over units computed from text; {speaker.label} cannot")
    heldout = {r["instruction"].lower() for r in read_manifest(data_dir, split="heldout")}
    sources = training_sources(text_sources or DECODER_TEXT_SOURCES)
    answers = [r["response"] for r in read_manifest(data_dir, split="train", answered=True)]
    pairs = decoder_texts([item for name in sources for item in data.load(name)], texts or 10**9, seed=seed, exclude=heldout)
    sequences = [u for u in (speaker.text_to_units(t) for t in answers + [p["response"] for p in pairs]) if u]
    lm = UnitNgram.fit(sequences, order, speaker.num_units)
    out.parent.mkdir(parents=True, exist_ok=True)
    lm.save(out)
    return {"texts": len(sequences), "units": sum(len(u) for u in sequences), "bytes": out.stat().st_size}


def fit_token_lm(data_dir: Path, out: Path, tokenizer, order: int = 3, text_sources: Sequence[str] = (),
                 exclude: Sequence[Path] = ()) -> dict:
    """The token n-gram a ctc adaptor's beam search hears with (`unit_lm.UnitNgram` over the
    LLM's token ids, as `tokenizer` spells the text), written to `out`: counted over every
    speakable instruction of the registry `text_sources` as a set's transcripts are written
    (`select_instructions`), the answer texts stage 2 trains on (`decoder_texts`) and the set's
    training transcripts and answers; none of the set's held-out instructions, nor those of the
    manifests in `exclude` (e.g. items the fusion weights are chosen on), among them. No
    `text_sources`: those `omni data build` draws from by default, and the chit-chat turns."""
    from omni_cli import data
    from omni_cli.e2e.build_data import (
        DECODER_TEXT_SOURCES, DEFAULT_SOURCES, BuildOptions, decoder_texts, read_manifest, select_instructions,
        training_sources,
    )
    from omni_cli.e2e.speech_projector import spell
    from omni_cli.e2e.unit_lm import UnitNgram

    if not (data_dir / "manifest.jsonl").is_file():
        raise ConfigError(f"{data_dir}: no manifest.jsonl (build one with `omni data build --out {data_dir}`)")
    skip = {r["instruction"].lower() for r in read_manifest(data_dir, split="heldout")}
    for manifest in exclude:
        if not Path(manifest).is_file():
            raise ConfigError(f"--exclude {manifest}: no such file")
        try:
            skip |= {json.loads(line)["instruction"].lower() for line in Path(manifest).read_text().splitlines() if line.strip()}
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"--exclude {manifest}: not a manifest (JSON lines with an instruction each)") from exc
    items = [item for name in training_sources(text_sources or (*DEFAULT_SOURCES, "chitchat-turns")) for item in data.load(name)]
    texts = [r["instruction"] for r in select_instructions(items, BuildOptions(size=10**9), exclude=skip)]
    train = [r for r in read_manifest(data_dir, split="train") if r["instruction"].lower() not in skip]
    texts += [r["instruction"] for r in train] + [r["response"] for r in train if r.get("response")]
    texts += [p["response"] for p in decoder_texts([i for i in items if i.get("source") in DECODER_TEXT_SOURCES],
                                                    10**9, exclude=skip)]
    sequences = [ids for ids in (spell(tokenizer, t, "tokens") for t in dict.fromkeys(texts)) if ids]
    lm = UnitNgram.fit(sequences, order, len(tokenizer))
    out.parent.mkdir(parents=True, exist_ok=True)
    lm.save(out)
    return {"texts": len(sequences), "tokens": sum(len(s) for s in sequences), "bytes": out.stat().st_size}


def _keep_said(model: SpeechLLM, spoken: list[tuple[list[int], list[bool], str]], states: list[torch.Tensor],
               ids: list[torch.Tensor], units: list[torch.Tensor], responses: Sequence[str]) -> None:
    """In place: each answer's states and ids cut to the tokens the pipeline hands the speech
    decoder, and its units those of the text said (`spoken`: each answer's `said_answer`), where
    a token is left out (a list's numbers, markdown: the units of "1." and "**" would teach it to
    say them) or the said text is not the answer (a mark inside a token kept, ":**"). With a unit
    vocoder that cannot compute units from text, the answers stay whole."""
    cut = [n for n, ((_, keep, said), response) in enumerate(zip(spoken, responses, strict=True))
           if not all(keep) or said != response]
    if not cut:
        return
    from omni_cli.e2e.unit_vocoder import load_unit_vocoder

    vocoder = load_unit_vocoder(model.config.vocoder)
    if not hasattr(vocoder, "text_to_units"):
        return
    for n in cut:
        _, keep, text = spoken[n]
        said_units = vocoder.text_to_units(text)
        if said_units:
            keep = torch.tensor(keep)
            states[n], ids[n], units[n] = states[n][keep], ids[n][keep], torch.tensor(said_units)


STAGES = ("adaptor", "llm", "speech-decoder")


def training_rows(data_dirs: Sequence[Path]) -> tuple[list[dict], set[str]]:
    """The training items of one or more sets made by `build`, in order, less any whose text
    another of them holds out (`build` keeps a set's own splits apart); and the instructions
    they hold out, lower case."""
    from omni_cli.e2e.build_data import read_manifest

    for d in data_dirs:
        if not (d / "manifest.jsonl").is_file():
            raise ConfigError(f"{d}: no manifest.jsonl (build one with `omni data build --out {d}`)")
    sets = [read_manifest(d) for d in data_dirs]
    held = [{r["instruction"].lower() for r in part if r["split"] == "heldout"} for part in sets]
    rows = [r for n, part in enumerate(sets) for r in part
            if r["split"] == "train" and not any(r["instruction"].lower() in h for m, h in enumerate(held) if m != n)]
    return rows, set().union(*held)


def start_stage(
    stage: str, data_dir: Path | Sequence[Path], out: Path, start: Path | None = None, resume: bool = False,
    options: TrainOptions = TrainOptions(), task: str = "ctc", units: str = "tokens", augment: bool | Augment = False,
    lora: LoraConfig = LoraConfig(), answer_share: float = 0.5, lora_tasks: Sequence[str] | None = None,
    from_text: bool = False, read_back: int = 0, extra_texts: int = 0, text_sources: Sequence[str] = (), device: str = "cpu",
    upsample: int = 0, encoder: str | None = None, llm: str | None = None,
) -> tuple[list[dict], Iterator[Progress]]:
    """A training stage ready to run on the train split of a set made by `build` (or of several:
    `training_rows`): its rows, and
    the stage's steps (not started: the first step also prepares the items, the frozen encoder
    and LLM passes). The model is the run's own (`out/model`) when resuming one, else `start`,
    else a fresh default (a ctc adaptor, or a linear one for the adaptor tasks answer, asr and
    align), on the training device. `stage`: adaptor (with `task`, `units` of a fresh ctc adaptor
    and `augment`), llm (`lora`, `answer_share`, `lora_tasks`) or speech-decoder (`from_text`, `read_back`, and
    `extra_texts` pairs drawn from the registry sets `text_sources` by `decoder_texts`, none of
    the set's held-out instructions among them; `upsample`: the decoder resampled to this many
    positions a token first, `SpeechGenerator.resampled`, where it has another number). A fresh
    model's Whisper (`encoder`) and LLM (`llm`) are the offline default's unless named (a registry
    name, a local folder or checkpoint, a hub id where a network is)."""
    if stage not in STAGES:
        raise ValueError(f"stage is one of {STAGES}, not {stage!r}")
    if task not in ("ctc", "answer", "asr", "align"):
        raise ConfigError(f"--task is 'ctc', 'answer', 'asr' or 'align', not {task!r}")
    if units not in ("tokens", "chars"):
        raise ConfigError(f"--units is 'tokens' or 'chars', not {units!r}")
    if augment and task != "ctc":
        raise ConfigError("--augment trains the ctc adaptor (--task ctc)")
    if extra_texts and not from_text:
        raise ConfigError("extra texts have no audio: train them with --from-text")
    if lora_tasks is not None:
        lora_tasks = checked_lora_tasks(lora_tasks)
    if extra_texts:
        from omni_cli.e2e.build_data import DECODER_TEXT_SOURCES, training_sources

        text_sources = training_sources(text_sources or DECODER_TEXT_SOURCES)
    data_dirs = [Path(data_dir)] if isinstance(data_dir, (str, Path)) else [Path(d) for d in data_dir]
    if not data_dirs:
        raise ConfigError("give a set to train on (--data)")
    rows, heldout = training_rows(data_dirs)
    named = ", ".join(map(str, data_dirs))
    # stage 2 on registry texts needs no spoken item: the set gives only the held-out texts to leave out
    if not rows and not (stage == "speech-decoder" and extra_texts):
        raise ConfigError(f"{named}: no training items")
    if not rows and start is None and not resume:
        raise ConfigError(f"{named} has no training items: stage 2 on registry texts alone continues a model (--from)")
    device = training_device(device)
    resuming = resume and (out / "model").is_dir()
    stitch = bool(encoder) and start is not None and not resuming and not llm and stage == "adaptor" and task == "ctc"
    if (encoder or llm) and (resuming or start is not None) and not stitch:
        raise ConfigError("--encoder and --llm choose the parts of a fresh model; "
                          f"{'the run in ' + str(out) if resuming else '--from ' + str(start)} has its own"
                          + ("" if resuming or llm else " (--encoder with --from moves a ctc adaptor onto another Whisper: "
                             "train adaptor --task ctc)"))
    if stage == "speech-decoder" and upsample and resuming:  # checked before the slow load
        own = read_omni_config(out / "model").speech_decoder.upsample
        if own != upsample:  # the optimizer's state is for the run's own shapes
            raise ConfigError(f"--upsample {upsample}: the run in {out} trains {own} "
                              "positions a token; resume it without --upsample, or start a new run")
    if resuming:
        model = load_omni(out / "model")
    elif start is not None:
        model = load_omni(start)
        if stitch:
            stitch_encoder(model.to(device), encoder, rows)
    else:
        from omni_cli.e2e.defaults import new_default_model

        adaptor = "linear" if stage == "adaptor" and task in ("align", "asr", "answer") else "ctc"
        parts = {k: v for k, v in (("encoder", encoder), ("llm", llm)) if v}
        model = new_default_model([r["instruction"] for r in rows], seed=options.seed, adaptor=adaptor, units=units, **parts)
    if stage == "speech-decoder" and upsample and model.speech_generator.config.upsample != upsample:
        model.speech_generator = model.speech_generator.resampled(upsample)
        model.config = dataclasses.replace(model.config, speech_decoder=model.speech_generator.config)
    model = model.to(device)
    if stage == "adaptor":
        steps = train_adaptor(model, rows, out, options, task=task, resume=resume, augment=augment)
    elif stage == "llm":
        steps = train_llm(model, rows, out, options, resume=resume, lora=lora, answer_share=answer_share, lora_tasks=lora_tasks)
    else:
        texts: list[dict] = []
        if extra_texts:
            from omni_cli import data
            from omni_cli.e2e.build_data import decoder_texts

            texts = decoder_texts([item for name in text_sources for item in data.load(name)], extra_texts, seed=options.seed,
                                  exclude=heldout)
        steps = train_speech_decoder(model, rows, out, options, resume=resume, from_text=from_text, read_back=read_back,
                                     texts=texts)
    return rows, steps
