"""Training speed of the default end-to-end architecture: seconds per optimizer step of each
stage at the shipped recipe's batch sizes (stage 1 ctc adaptor 32, stage 1b LoRA 8, stage 2
speech decoder from text 16), on a CPU or a GPU (bfloat16 autocast on both where supported).

The model is the shipped default's adaptor, LoRA and speech decoder (its real weights), over
the Whisper tiny.en encoder and SmolLM2-135M at their real shapes with random weights: step
time depends on shapes, not values, and so the same run works on a machine that has neither
the registry packages nor a network (a lent GPU machine). The items are real spoken clips with
their instructions, answers and units, taken from a built training set:

    python -m evals.train_speed --make-clips runs/v2/data --clips .gpu/clips   # once, here
    python -m evals.train_speed --clips .gpu/clips --device cuda --json speed.json

Each stage reports its preparation (frozen encoder / LLM passes over the items) and the median
step after two warm-up steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from evals.report import emit

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "omni_cli" / "e2e" / "weights" / "omni-e2e-base-smollm2"
LLM_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")
# openai-whisper's tiny.en dimensions
TINY_EN = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4, n_vocab=51864,
               n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4)


def make_clips(data: Path, out: Path, count: int) -> None:
    """`count` answered training items of a built set (`omni data build`) as FLAC + rows.jsonl,
    with the LLM's config and tokenizer (no weights) beside them."""
    from omni_cli.registry import resolve_llm

    answers = {}
    with open(data / "answers.jsonl") as f:
        for line in f:
            row = json.loads(line)
            answers[row["id"]] = row
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(data / "manifest.jsonl") as f:
        for line in f:
            row = json.loads(line)
            answer = answers.get(row["id"])
            if row["split"] != "train" or not answer or not answer.get("units"):
                continue
            audio, sr = sf.read(data / row["audio"], dtype="int16")
            sf.write(out / f"{row['id']}.flac", audio, sr)
            rows.append({"audio": f"{row['id']}.flac", "instruction": row["instruction"],
                         "response": answer["response"], "units": answer["units"]})
            if len(rows) == count:
                break
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    llm = Path(resolve_llm(None))
    (out / "llm").mkdir(exist_ok=True)
    for name in LLM_FILES:
        if (llm / name).exists():
            shutil.copy(llm / name, out / "llm" / name)
    print(f"{len(rows)} clips in {out}")


def random_model(clips: Path, work: Path, device: str):
    """The shipped model over a random Whisper tiny.en encoder and a random SmolLM2-135M."""
    import whisper.model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from omni_cli.e2e.checkpoint import load_omni

    torch.manual_seed(0)
    dims = whisper.model.ModelDimensions(**TINY_EN)
    torch.save({"dims": TINY_EN, "model_state_dict": whisper.model.Whisper(dims).state_dict()}, work / "tiny.en.pt")
    config = AutoConfig.from_pretrained(clips / "llm")
    AutoModelForCausalLM.from_config(config).save_pretrained(work / "llm")
    AutoTokenizer.from_pretrained(clips / "llm").save_pretrained(work / "llm")
    for name in LLM_FILES:
        if (clips / "llm" / name).exists() and not (work / "llm" / name).exists():
            shutil.copy(clips / "llm" / name, work / "llm" / name)
    shutil.copytree(SHIPPED, work / "omni", ignore=shutil.ignore_patterns("*.png", "*.md", "quality.json"))
    cfg = json.loads((work / "omni" / "omni_e2e.json").read_text())
    cfg |= {"encoder_source": str(work / "tiny.en.pt"), "llm_source": str(work / "llm")}
    (work / "omni" / "omni_e2e.json").write_text(json.dumps(cfg))
    return load_omni(work / "omni", device)


def timed(steps, profile: bool = False) -> dict:
    """Preparation (until the first step ends, less that step) and the median later step."""
    import contextlib

    start = time.perf_counter()
    marks = []
    with contextlib.ExitStack() as stack:
        for _ in steps:
            marks.append(time.perf_counter())
            if profile and len(marks) == 3:  # steps 4 on, past the warm-up
                from torch.profiler import ProfilerActivity, profile as torch_profile

                activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
                prof = stack.enter_context(torch_profile(activities=activities))
    if profile and len(marks) > 3:
        key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14), flush=True)
        print(prof.key_averages().table(sort_by=key, row_limit=8), flush=True)
    gaps = np.diff([start] + marks)
    step = float(np.median(gaps[3:])) if len(gaps) > 3 else float(gaps[-1])
    return {"prep_s": round(float(gaps[0]) - step, 2), "step_s": round(step, 4), "steps": len(marks)}


def infer(model, rows: list[dict], n: int = 6) -> dict:
    """The model's inference path on this device (encoder, adaptor, LLM streaming 40 tokens,
    speech decoder streaming units): first-token and per-token times, medians over n clips."""
    from omni_cli.audio import load_audio
    from omni_cli.e2e.speech_generator import SpeechDecoderStream
    from omni_cli.llm import GenerationOptions

    first, per_token = [], []
    options = GenerationOptions(max_new_tokens=40)
    for r in rows[: n + 1]:
        audio = load_audio(r["audio"])
        decoder = SpeechDecoderStream(model.speech_generator)
        start = time.perf_counter()
        marks, units = [], 0
        for step in model.stream(audio, options):
            units += len(decoder.push(step.hidden, model.token_embedding(step.token_id)))
            marks.append(time.perf_counter())
        first.append(marks[0] - start)
        per_token.append((marks[-1] - marks[0]) / max(1, len(marks) - 1))
        model.transcribe(audio)  # the repeat task (omni transcribe --asr-backend e2e) on this device
    # the first clip warms up (kernels, allocator): left out
    return {"first_token_s": round(float(np.median(first[1:])), 4), "per_token_s": round(float(np.median(per_token[1:])), 4),
            "clips": len(first) - 1}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="example: python -m evals.train_speed --clips .gpu/clips --device cuda")
    ap.add_argument("--clips", type=Path, required=True, help="folder of clips (made with --make-clips)")
    ap.add_argument("--make-clips", type=Path, metavar="DATA", help="make the clips folder from a built training set, then stop")
    ap.add_argument("--count", type=int, default=64, help="clips to take (with --make-clips)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per stage")
    ap.add_argument("--stages", default="infer,1,1b,2")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--profile", action="store_true", help="print the busiest operations of each stage (torch.profiler)")
    args = ap.parse_args(argv)
    if args.make_clips:
        make_clips(args.make_clips, args.clips, args.count)
        return 0

    from omni_cli.e2e.lora import LoraConfig
    from omni_cli.e2e.train import TrainOptions, train_ctc_adaptor, train_llm, train_speech_decoder, training_device

    rows = [json.loads(line) for line in (args.clips / "rows.jsonl").read_text().splitlines()]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for r in rows:  # encode_rows caches features beside the audio folder: keep the clips folder clean
            (work / "audio").mkdir(exist_ok=True)
            shutil.copy(args.clips / r["audio"], work / "audio" / r["audio"])
            r["audio"] = str(work / "audio" / r["audio"])
        device = training_device(args.device)  # as `omni train` picks it (and sets the backends up)
        model = random_model(args.clips, work, device)
        opts = dict(steps=args.steps, lr=1e-4, warmup=1, save_every=10**9)
        result = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)",
                  "torch": torch.__version__, "clips": len(rows)}
        stages = args.stages.split(",")
        if "infer" in stages:
            result["inference"] = infer(model, rows)
        if "1" in stages:
            result["stage1_ctc_b32"] = timed(train_ctc_adaptor(model, rows, work / "s1", TrainOptions(batch_size=32, **opts)), args.profile)
        if "1b" in stages:
            result["stage1b_lora_b8"] = timed(train_llm(model, rows, work / "s1b", TrainOptions(batch_size=8, **opts),
                                                        lora=LoraConfig(rank=8, alpha=16.0)))
        if "2" in stages:
            model.llm.model.eval()
            result["stage2_decoder_b16"] = timed(train_speech_decoder(model, rows, work / "s2", TrainOptions(batch_size=16, **opts),
                                                                      from_text=True))
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
