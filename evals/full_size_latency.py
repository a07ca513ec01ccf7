"""First-audio latency of the published end-to-end design at full size, random weights.

The LLaMA-Omni shapes (paper arXiv 2409.06666): Whisper large-v3 encoder (128 mels, 1280 wide,
32 layers, input padded to 30 s), the linear adaptor (k 5, 2048 hidden), a Llama-3.1-8B-shaped
LLM (4096 wide, 32 layers, 8 KV heads, 128256-token vocabulary), the 2-layer 4096-wide CTC
speech decoder (32 heads, FFN 11008, lambda 25, 1000 units) and a unit HiFi-GAN of the
CodeHiFiGAN shape (upsampling 5x4x4x2x2, 512 channels, 128-wide unit embeddings, duration
predictor) running through this project's own pipeline (`E2EPipeline`, Omega 10), as
`omni respond --mode e2e` runs a published checkpoint. Latency depends on shapes, not weights,
so random weights time it where the 16 GB checkpoint cannot travel (a lent GPU machine). The
published figure is 226 ms on an L40 GPU (Omega 10).

It also times the speech decoder at that size: our incremental decoding (KV cache, lambda new
positions per text token) against re-running the whole prefix after every token (the published
code's approach), per token at answers of 50 and 200 tokens.

    python -m evals.full_size_latency --device cuda --tokenizer .gpu/clips/llm --json full.json
    python -m evals.full_size_latency --scale tiny     # the same code path, small, on a CPU

The tokenizer (any chat tokenizer: the offline default's, by default) only renders the random
tokens as text; ids beyond it decode to nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from evals.report import emit

ROOT = Path(__file__).resolve().parents[1]
# CodeHiFiGAN (fairseq / speech-resynthesis unit vocoder) shape, mHuBERT 1000 units, 16 kHz
HIFIGAN = {
    "resblock": "1", "upsample_rates": [5, 4, 4, 2, 2], "upsample_kernel_sizes": [11, 8, 8, 4, 4],
    "upsample_initial_channel": 512, "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "num_embeddings": 1000, "embedding_dim": 128,
    "model_in_dim": 128, "code_hop_size": 320, "f0": False, "sampling_rate": 16000,
    "dur_predictor_params": {"encoder_embed_dim": 128, "var_pred_hidden_dim": 128, "var_pred_kernel_size": 3,
                             "var_pred_dropout": 0.5},
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def shapes(scale: str) -> dict:
    if scale == "full":
        return dict(enc_width=1280, enc_heads=20, enc_layers=32, proj_hidden=2048, llm_width=4096, llm_layers=32, llm_heads=32,
                    llm_kv=8, llm_ffn=14336, dec_width=4096, dec_heads=32, dec_ffn=11008, hifigan_channels=512)
    return dict(enc_width=64, enc_heads=1, enc_layers=2, proj_hidden=64, llm_width=64, llm_layers=2, llm_heads=4,
                llm_kv=2, llm_ffn=128, dec_width=64, dec_heads=4, dec_ffn=128, hifigan_channels=32)


def build(scale: str, device: str, llm_dtype: torch.dtype, rest_dtype: torch.dtype, tokenizer_dir: Path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from omni_cli.e2e.config import EncoderConfig, OmniConfig, ProjectorConfig, PromptConfig, SpeechDecoderConfig
    from omni_cli.e2e.speech_encoder import SpeechEncoder
    from omni_cli.e2e.speech_generator import SpeechGenerator
    from omni_cli.e2e.speech_llm import SpeechLLM
    from omni_cli.e2e.speech_projector import SpeechProjector
    from omni_cli.e2e.unit_hifigan import UnitHiFiGAN, UnitHiFiGANConfig, UnitHiFiGANVocoder
    from omni_cli.llm import ChatLLM

    s = shapes(scale)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    llm_config = LlamaConfig(vocab_size=128256, hidden_size=s["llm_width"], intermediate_size=s["llm_ffn"],
                             num_hidden_layers=s["llm_layers"], num_attention_heads=s["llm_heads"],
                             num_key_value_heads=s["llm_kv"], max_position_embeddings=131072, rms_norm_eps=1e-5,
                             rope_theta=500000.0, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    enc = EncoderConfig(n_mels=128, n_ctx=1500, width=s["enc_width"], n_heads=s["enc_heads"], n_layers=s["enc_layers"], padded=True)
    proj = ProjectorConfig(k=5, encoder_width=s["enc_width"], hidden=s["proj_hidden"], llm_width=s["llm_width"])
    dec = SpeechDecoderConfig(llm_width=s["llm_width"], width=s["dec_width"], n_layers=2, n_heads=s["dec_heads"],
                              n_kv_heads=s["dec_heads"], ffn=s["dec_ffn"], num_units=1000, upsample=25, rms_norm_eps=1e-5,
                              rope_theta=500000.0, max_positions=131072)
    config = OmniConfig(enc, proj, dec, PromptConfig(template="chat"), encoder_source="", llm_source="random", vocoder="")
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(llm_dtype)  # made in its own precision: an 8B float32 copy is 32 GB
        with torch.device(device):
            llm_model = LlamaForCausalLM(llm_config)
    finally:
        torch.set_default_dtype(default)
    llm = ChatLLM(llm_model, tokenizer, f"random Llama-3.1-8B shape ({scale})")
    with torch.device(device):
        encoder, projector, generator = SpeechEncoder(enc), SpeechProjector(proj), SpeechGenerator(dec)
    model = SpeechLLM(config, encoder.to(rest_dtype), projector.to(rest_dtype), llm, generator.to(rest_dtype)).eval()
    hifigan_cfg = dict(HIFIGAN, upsample_initial_channel=s["hifigan_channels"])
    vocoder = UnitHiFiGANVocoder(UnitHiFiGAN(UnitHiFiGANConfig.from_fairseq_json(hifigan_cfg)), device)
    return model, vocoder


def first_audio(model, vocoder, omega: int, runs: int) -> dict:
    from omni_cli.audio import load_audio
    from omni_cli.e2e.pipeline import E2EOptions, E2EPipeline
    from omni_cli.events import latency_metrics
    from omni_cli.llm import GenerationOptions

    audio = load_audio(ROOT / "examples" / "question.wav")
    pipeline = E2EPipeline(model, vocoder, E2EOptions(omega=omega, generation=GenerationOptions(max_new_tokens=12), check_speech=False))
    rows = []
    for _ in range(runs + 1):  # the first run warms up (kernels, allocator) and is left out
        rows.append(latency_metrics(list(pipeline.run(audio))))
    rows = rows[1:]

    def median(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return round(float(np.median(values)), 4) if values else None

    return {k: median(k) for k in ("first_audio_latency_s", "encoder_s", "speech_decoder_s", "vocoder_s", "total_s")} | {
        "runs": runs, "omega": omega}


def llm_steps(model) -> dict:
    """Where the time before the first audio goes: the prompt's length, the LLM's first token
    (prefill) and later tokens through our streaming generation, and the units each token gives."""
    from omni_cli.audio import load_audio
    from omni_cli.e2e.speech_generator import SpeechDecoderStream
    from omni_cli.llm import GenerationOptions

    audio = load_audio(ROOT / "examples" / "question.wav")
    dev = model.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    out = {}
    for attempt in range(2):  # the second is reported
        with torch.inference_mode():
            sync()
            t = time.perf_counter()
            features = model.speech_features(audio)
            sync()
            out["features_s"] = round(time.perf_counter() - t, 4)
            out["prompt_positions"] = int(model.prompt_embeds(features).shape[1])
            decoder, units, marks = SpeechDecoderStream(model.speech_generator), [], []
            t = time.perf_counter()
            for step in model.stream_features(features, GenerationOptions(max_new_tokens=12)):
                marks.append(time.perf_counter())
                units.append(len(decoder.push(step.hidden, model.token_embedding(step.token_id))))
        out["first_token_s"] = round(marks[0] - t, 4)
        out["per_token_s"] = round(float(np.median(np.diff(marks))), 4)
        out["units_per_token"] = units
    return out


def decoder_per_token(model, lengths: tuple[int, int] = (50, 200), window: int = 10) -> dict:
    """ms per text token: incremental (ours) vs re-running the prefix (published), same weights."""
    from omni_cli.e2e.speech_generator import SpeechDecoderStream

    gen = model.speech_generator
    dev = next(gen.parameters()).device
    hidden = torch.randn(max(lengths), gen.config.llm_width, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    stream, per_token = SpeechDecoderStream(gen), []
    with torch.inference_mode():
        for h in hidden:
            t = time.perf_counter()
            stream.push(h)
            sync()
            per_token.append(time.perf_counter() - t)
        rerun = {}
        for n in lengths:
            gen.predict(hidden[:n])  # warm
            sync()
            t = time.perf_counter()
            gen.predict(hidden[:n])
            sync()
            rerun[n] = 1000 * (time.perf_counter() - t)
    ours = {n: 1000 * float(np.mean(per_token[n - window : n])) for n in lengths}
    return {"incremental_ms_per_token": {str(n): round(v, 2) for n, v in ours.items()},
            "rerun_ms_per_token": {str(n): round(v, 2) for n, v in rerun.items()},
            "speedup_at_longest": round(rerun[lengths[-1]] / ours[lengths[-1]], 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="example: python -m evals.full_size_latency --device cuda --tokenizer .gpu/clips/llm")
    ap.add_argument("--scale", choices=("full", "tiny"), default="full")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokenizer", type=Path, help="a chat tokenizer folder (default: the offline default LLM's)")
    ap.add_argument("--llm-dtype", choices=DTYPES, default="float16", help="as the published loader runs it on a GPU")
    ap.add_argument("--rest-dtype", default="float32", help="encoder, adaptor, speech decoder; several: comma-separated")
    ap.add_argument("--omega", type=int, default=10)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.tokenizer is None:
        from omni_cli.registry import resolve_llm

        args.tokenizer = Path(resolve_llm(None))
    result: dict = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
                    "scale": args.scale, "published_first_audio_s": 0.226}
    for rest in args.rest_dtype.split(","):
        model, vocoder = build(args.scale, args.device, DTYPES[args.llm_dtype], DTYPES[rest], args.tokenizer)
        key = f"llm {args.llm_dtype}, rest {rest}"
        result[key] = first_audio(model, vocoder, args.omega, args.runs) | {"llm": llm_steps(model),
                                                                            "speech_decoder": decoder_per_token(model)}
        print(json.dumps({key: result[key]}), flush=True)
        del model, vocoder
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
