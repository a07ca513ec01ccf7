"""Loading and saving end-to-end models.

Our format: a folder with `omni_e2e.json` (the `OmniConfig`, naming the encoder and LLM
by registry name, path or hub id) and `model.safetensors` holding only what we train:
`speech_projector.*` and `speech_generator.*` (a few MB for the small default), the LLM's LoRA
adapters (`llm_lora.*`) and a second ear's ctc adaptor (`partner_projector.*`) where it has them.

The published format (ICTNLP/Llama-3.1-8B-Omni): an HF folder whose `config.json` has
`model_type` "omni_speech2s_llama" and the speech fields (`speech_encoder_ds_rate`,
`speech_encoder_hidden_size`, `ctc_decoder_config` "(layers,dim,heads,ffn)",
`ctc_upsample_factor`, `unit_vocab_size`, ...), with weights under `model.*`/`lm_head.*`
(the LLM), `model.speech_encoder.*`, `model.speech_projector.*` and `speech_generator.*`.
Every key is placed; a missing or unexpected key is an error that names it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch

from omni_cli.e2e.config import (
    EncoderConfig,
    OmniConfig,
    ProjectorConfig,
    PromptConfig,
    SpeechDecoderConfig,
)
from omni_cli.e2e.lora import LoraConfig, check_lora, merge_lora
from omni_cli.e2e.speech_encoder import SpeechEncoder
from omni_cli.e2e.speech_generator import SpeechGenerator
from omni_cli.e2e.speech_llm import SpeechLLM
from omni_cli.e2e.speech_projector import SpeechProjector, build_projector
from omni_cli.e2e.state import CheckpointError, strict_load
from omni_cli.e2e.unit_lm import UnitNgram
from omni_cli.errors import ModelNotFoundError

OMNI_CONFIG = "omni_e2e.json"
OMNI_WEIGHTS = "model.safetensors"
PUBLISHED_MODEL_TYPE = "omni_speech2s_llama"
SPEECH_CONFIG_FIELDS = (
    "speech_encoder", "speech_encoder_type", "speech_encoder_ds_rate", "speech_encoder_hidden_size",
    "speech_projector_type", "speech_generator_type", "ctc_decoder_config", "ctc_upsample_factor",
    "ctc_loss_weight", "unit_vocab_size", "speech_normalize", "tune_speech_generator_only",
)


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# -- our own format --------------------------------------------------------------------------


def save_omni(model: SpeechLLM, folder: Path, dtype: torch.dtype | None = None) -> Path:
    """Write the config and the trained parts (adaptor + speech decoder) to `folder`, atomically;
    with `dtype` (e.g. torch.float16 for shipping), the tensors are stored in it."""
    from safetensors.torch import save_file

    from omni_cli.cache import atomic_dir

    folder = Path(folder)
    state = {f"speech_projector.{k}": v.detach().contiguous().cpu() for k, v in model.speech_projector.state_dict().items()}
    state |= {f"speech_generator.{k}": v.detach().contiguous().cpu() for k, v in model.speech_generator.state_dict().items()}
    state |= {f"llm_lora.{k}": v.contiguous() for k, v in model.lora_weights().items()}
    if model.config.partner is not None:
        if model.partner_projector is None:
            raise CheckpointError("the model's config names a partner, but it has none loaded (set_partner)")
        state |= {f"partner_projector.{k}": v.detach().contiguous().cpu() for k, v in model.partner_projector.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    staged = folder.with_name(folder.name + ".new")
    if staged.exists():
        shutil.rmtree(staged)
    with atomic_dir(staged) as tmp:
        save_file(state, str(tmp / OMNI_WEIGHTS), metadata={"format": "omni-e2e"})
        lm_name = model.config.speech_decoder.lm
        if lm_name and model.speech_generator.unit_lm is not None:
            model.speech_generator.unit_lm.save(tmp / lm_name)
        ngram = model.config.projector.ngram
        if ngram and getattr(model.speech_projector, "token_lm", None) is not None:
            model.speech_projector.token_lm.save(tmp / ngram)
        (tmp / OMNI_CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    # swap: the previous checkpoint stays complete until the new one is in place
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        os.rename(folder, old)
    os.rename(staged, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def side_files(config: dict) -> list[str]:
    """The files beside the weights a model's config (`omni_e2e.json` as a dict) names: its
    token n-gram and unit LM, if any."""
    return [name for name in (config.get("projector", {}).get("ngram"), config.get("speech_decoder", {}).get("lm")) if name]


def build_encoder(config: EncoderConfig, whisper_spec: str, device: str = "cpu") -> SpeechEncoder:
    from omni_cli.registry import resolve_whisper

    resolved = resolve_whisper(whisper_spec or None, need="openai")
    if resolved.openai_checkpoint is None:
        import whisper

        ckpt_path = None
        try:
            model = whisper.load_model(resolved.remote_name, device="cpu")
        except Exception as exc:  # noqa: BLE001
            raise ModelNotFoundError(f"could not load the speech encoder '{whisper_spec}' ({type(exc).__name__})") from exc
        state = model.encoder.state_dict()
    else:
        ckpt_path = resolved.openai_checkpoint
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        state = _prefixed(ckpt["model_state_dict"], "encoder.")
    encoder = SpeechEncoder(config)
    strict_load(encoder.whisper, state, f"speech encoder from {ckpt_path or whisper_spec}")
    return encoder.to(device).eval()


def read_omni_config(folder: Path) -> OmniConfig:
    """The `OmniConfig` of a model folder saved by `save_omni`, without loading its weights."""
    return OmniConfig.from_dict(json.loads((Path(folder) / OMNI_CONFIG).read_text()))


def load_omni(folder: Path, device: str = "cpu"):
    """Load a model saved by `save_omni` (encoder and LLM from their registry names/paths)."""
    from safetensors.torch import load_file

    from omni_cli.llm import ChatLLM

    folder = Path(folder)
    if not (folder / OMNI_CONFIG).is_file() or not (folder / OMNI_WEIGHTS).is_file():
        raise ModelNotFoundError(f"{folder}: not an omni end-to-end model (needs {OMNI_CONFIG} and {OMNI_WEIGHTS})")
    config = read_omni_config(folder)
    state = load_file(str(folder / OMNI_WEIGHTS))
    projector = build_projector(config.projector)
    generator = SpeechGenerator(config.speech_decoder)
    parts = ("speech_projector.", "speech_generator.") + (("llm_lora.",) if config.llm_lora else ()) \
        + (("partner_projector.",) if config.partner else ())
    unexpected = [k for k in state if not k.startswith(parts)]
    if unexpected:
        raise CheckpointError(f"{folder / OMNI_WEIGHTS}: unexpected key(s): {', '.join(unexpected[:6])}")
    strict_load(projector, _prefixed(state, "speech_projector."), f"{folder}: speech_projector")
    strict_load(generator, _prefixed(state, "speech_generator."), f"{folder}: speech_generator")
    if config.speech_decoder.lm:
        if not (folder / config.speech_decoder.lm).is_file():
            raise CheckpointError(f"{folder}: the config names the unit LM {config.speech_decoder.lm!r}, which is not there")
        generator.unit_lm = UnitNgram.load(folder / config.speech_decoder.lm)
    if config.projector.ngram:
        if not (folder / config.projector.ngram).is_file():
            raise CheckpointError(f"{folder}: the config names the token n-gram {config.projector.ngram!r}, which is not there")
        projector.token_lm = UnitNgram.load(folder / config.projector.ngram)
    llm = ChatLLM.load(config.llm_source or None, device=device)
    lora = _prefixed(state, "llm_lora.")
    if config.llm_lora:
        if not lora:
            raise CheckpointError(f"{folder / OMNI_WEIGHTS}: the config names LoRA adapters but there are no llm_lora.* weights")
        lora_config = LoraConfig.from_dict(config.llm_lora)
        if "answer" in config.lora_tasks:
            merge_lora(llm.model, lora, lora_config)
        else:  # for the repeat task alone: checked against the LLM now, merged while it runs
            check_lora(llm.model, lora)
    encoder = build_encoder(config.encoder, config.encoder_source, device)
    model = SpeechLLM(dataclasses.replace(config, partner=None), encoder, projector.to(device), llm, generator.to(device)).eval()
    model.loaded_lora = lora
    if config.partner is not None:
        partner = build_projector(config.partner.projector)
        strict_load(partner, _prefixed(state, "partner_projector."), f"{folder}: partner_projector")
        model.set_partner(build_encoder(config.partner.encoder, config.partner.encoder_source, device), partner.to(device),
                          config.partner.encoder_source, config.partner.weight)
    return model


# -- the published format ----------------------------------------------------------------------


def parse_ctc_decoder_config(text: str) -> tuple[int, int, int, int]:
    """The published "(layers,dim,heads,ffn)" string."""
    try:
        layers, dim, heads, ffn = (int(x) for x in text.strip().strip("()").split(","))
    except ValueError as exc:
        raise CheckpointError(f"ctc_decoder_config {text!r}: expected '(layers,dim,heads,ffn)'") from exc
    return layers, dim, heads, ffn


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF checkpoint folder (safetensors shards, or pytorch_model*.bin)."""
    from safetensors.torch import load_file

    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state |= load_file(str(shard))
        return state
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise CheckpointError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
    state = {}
    for b in bins:
        state |= torch.load(b, map_location="cpu", weights_only=True)
    return state


def _fetch_hub(repo_id: str) -> Path:
    from omni_cli.registry import hub_offline

    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the local hub cache
        if hub_offline():
            raise ModelNotFoundError(f"'{repo_id}' is not in the local hub cache and HF_HUB_OFFLINE is set; give a local folder") from None
    try:
        return Path(snapshot_download(repo_id))
    except Exception as exc:  # noqa: BLE001
        raise ModelNotFoundError(f"could not fetch '{repo_id}' ({type(exc).__name__}); offline, give a local folder") from exc


def load_published(source: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> SpeechLLM:
    """Load the published LLaMA-Omni checkpoint (or a replica) from a folder or hub id."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from omni_cli.llm import ChatLLM

    folder = Path(source).expanduser()
    if not folder.is_dir():
        folder = _fetch_hub(str(source))
    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("model_type") != PUBLISHED_MODEL_TYPE:
        raise CheckpointError(f"{folder}: config.json model_type is {cfg.get('model_type')!r}, expected {PUBLISHED_MODEL_TYPE!r}")
    if cfg.get("speech_projector_type", "linear") != "linear" or cfg.get("speech_generator_type", "ctc") != "ctc":
        raise CheckpointError(f"{folder}: only speech_projector_type 'linear' and speech_generator_type 'ctc' exist in the published design")
    state = read_state(folder)

    enc_state = _prefixed(state, "model.speech_encoder.")
    proj_state = _prefixed(state, "model.speech_projector.")
    gen_state = _prefixed(state, "speech_generator.")
    llm_state = {k: v for k, v in state.items() if not k.startswith(("model.speech_encoder.", "model.speech_projector.", "speech_generator."))}
    if not enc_state:
        raise CheckpointError(f"{folder}: no model.speech_encoder.* weights")

    width = int(cfg.get("speech_encoder_hidden_size", enc_state["conv1.weight"].shape[0]))
    n_layers = len({k.split(".")[1] for k in enc_state if k.startswith("blocks.")})
    encoder_cfg = EncoderConfig(
        n_mels=int(enc_state["conv1.weight"].shape[1]),
        n_ctx=int(enc_state["positional_embedding"].shape[0]),
        width=width,
        n_heads=width // 64,  # every Whisper size uses 64-wide heads
        n_layers=n_layers,
        padded=True,
    )
    llm_fields = {k: v for k, v in cfg.items() if k not in SPEECH_CONFIG_FIELDS and k not in ("model_type", "architectures", "auto_map")}
    llm_config = LlamaConfig(**llm_fields)
    projector_cfg = ProjectorConfig(
        k=int(cfg.get("speech_encoder_ds_rate", 5)),
        encoder_width=width,
        hidden=int(proj_state["linear1.weight"].shape[0]),
        llm_width=llm_config.hidden_size,
    )
    layers, dim, heads, ffn = parse_ctc_decoder_config(cfg["ctc_decoder_config"])
    rope = getattr(llm_config, "rope_parameters", None) or {}
    decoder_cfg = SpeechDecoderConfig(
        llm_width=llm_config.hidden_size, width=dim, n_layers=layers, n_heads=heads, n_kv_heads=heads, ffn=ffn,
        num_units=int(cfg["unit_vocab_size"]), upsample=int(cfg["ctc_upsample_factor"]),
        rms_norm_eps=float(llm_config.rms_norm_eps), rope_theta=float(rope.get("rope_theta", 10000.0)),
        rope_scaling={k: v for k, v in rope.items() if k != "rope_theta"} if rope.get("rope_type", "default") != "default" else None,
        max_positions=int(llm_config.max_position_embeddings),
    )
    config = OmniConfig(encoder_cfg, projector_cfg, decoder_cfg, PromptConfig(template="llama3-omni"),
                        encoder_source="", llm_source=str(folder), vocoder="")

    encoder = SpeechEncoder(encoder_cfg)
    strict_load(encoder.whisper, enc_state, f"{folder}: model.speech_encoder")
    projector = SpeechProjector(projector_cfg)
    strict_load(projector, proj_state, f"{folder}: model.speech_projector")
    generator = SpeechGenerator(decoder_cfg)
    strict_load(generator, gen_state, f"{folder}: speech_generator")
    llm_model = LlamaForCausalLM(llm_config)
    if llm_config.tie_word_embeddings and "lm_head.weight" not in llm_state:
        llm_state["lm_head.weight"] = llm_state["model.embed_tokens.weight"]
    strict_load(llm_model, llm_state, f"{folder}: LLM")
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # it warns that "omni_speech2s_llama" is not a type it knows
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    finally:
        hf_logging.set_verbosity(verbosity)
    llm = ChatLLM(llm_model.to(device=device, dtype=dtype), tokenizer, str(folder))
    model = SpeechLLM(config, encoder.to(device), projector.to(device), llm, generator.to(device))
    return model.eval()
