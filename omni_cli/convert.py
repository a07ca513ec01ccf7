"""One-time conversions of the embedded models into formats our code loads.

- CTranslate2 Whisper (`model.bin`, as shipped for faster-whisper) -> an openai-whisper
  checkpoint (`{"dims": ..., "model_state_dict": ...}`): the reference backend then runs
  the very same weights. CT2 fuses attention projections (q|k|v, and k|v in cross
  attention) and stores the key bias as zeros; we split them back.
- GGUF LLM -> a transformers folder (safetensors + tokenizer), dequantized once by
  transformers' own GGUF reader, so later loads take a second instead of twenty.

Outputs are written through `omni_cli.cache` (atomic). This module knows nothing about
the registry or the CLI.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import torch

from omni_cli.cache import atomic_dir, atomic_file
from omni_cli.errors import ConfigError

# DataType enum order of CTranslate2 (include/ctranslate2/types.h)
_CT2_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, "bfloat16")


def read_ct2_model(path: Path) -> dict[str, np.ndarray]:
    """Read every variable of a CTranslate2 `model.bin` (binary version >= 5), aliases resolved."""
    data = Path(path).read_bytes()
    offset = 0

    def take(fmt: str):
        nonlocal offset
        (value,) = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return value

    def take_string() -> str:
        nonlocal offset
        n = take("H")
        s = data[offset : offset + n - 1].decode("utf-8")
        offset += n
        return s

    version = take("I")
    if version < 5:
        raise ConfigError(f"unsupported CTranslate2 binary version {version} (need >= 5)")
    take_string()  # spec name
    take("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = take_string()
        shape = [take("I") for _ in range(take("B"))]
        dtype = _CT2_DTYPES[take("B")]
        nbytes = take("I")
        raw = data[offset : offset + nbytes]
        offset += nbytes
        if dtype == "bfloat16":
            as_int = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            array = as_int.view(np.float32)
        else:
            array = np.frombuffer(raw, dtype=dtype)
        variables[name] = array.reshape(shape)
    for _ in range(take("I")):
        alias, target = take_string(), take_string()
        variables[alias] = variables[target]
    return variables


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


def ct2_whisper_to_openai(model_dir: Path) -> dict:
    """Build an openai-whisper checkpoint dict from a CTranslate2 Whisper folder."""
    v = read_ct2_model(Path(model_dir) / "model.bin")
    n_enc = len({m.group(1) for k in v if (m := re.match(r"encoder/layer_(\d+)/", k))})
    n_dec = len({m.group(1) for k in v if (m := re.match(r"decoder/layer_(\d+)/", k))})
    dims = {
        "n_mels": int(v["encoder/conv1/weight"].shape[1]),
        "n_audio_ctx": int(v["encoder/position_encodings/encodings"].shape[0]),
        "n_audio_state": int(v["encoder/conv1/weight"].shape[0]),
        "n_audio_head": int(v["encoder/num_heads"]),
        "n_audio_layer": n_enc,
        "n_vocab": int(v["decoder/embeddings/weight"].shape[0]),
        "n_text_ctx": int(v["decoder/position_encodings/encodings"].shape[0]),
        "n_text_state": int(v["decoder/embeddings/weight"].shape[1]),
        "n_text_head": int(v["decoder/num_heads"]),
        "n_text_layer": n_dec,
    }
    sd: dict[str, torch.Tensor] = {}

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = _t(v[f"{src}/gamma"])
        sd[f"{dst}.bias"] = _t(v[f"{src}/beta"])

    def linear(dst: str, src: str, rows: slice = slice(None), bias: bool = True) -> None:
        sd[f"{dst}.weight"] = _t(v[f"{src}/weight"][rows])
        if bias:
            sd[f"{dst}.bias"] = _t(v[f"{src}/bias"][rows])

    def attention(dst: str, src_qkv: str | None, src_q: str | None, src_kv: str | None, src_out: str, width: int) -> None:
        q, k, vv = slice(0, width), slice(width, 2 * width), slice(2 * width, 3 * width)
        if src_qkv is not None:
            linear(f"{dst}.query", src_qkv, q)
            linear(f"{dst}.key", src_qkv, k, bias=False)
            linear(f"{dst}.value", src_qkv, vv)
        else:
            linear(f"{dst}.query", src_q)
            linear(f"{dst}.key", src_kv, slice(0, width), bias=False)
            linear(f"{dst}.value", src_kv, slice(width, 2 * width))
        linear(f"{dst}.out", src_out)

    for side, width in (("encoder", dims["n_audio_state"]), ("decoder", dims["n_text_state"])):
        n = n_enc if side == "encoder" else n_dec
        for i in range(n):
            src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
            attention(f"{dst}.attn", f"{src}/self_attention/linear_0", None, None, f"{src}/self_attention/linear_1", width)
            if side == "decoder":
                norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
                attention(f"{dst}.cross_attn", None, f"{src}/attention/linear_0", f"{src}/attention/linear_1", f"{src}/attention/linear_2", width)
            norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
            linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
            linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
    for conv in ("conv1", "conv2"):
        sd[f"encoder.{conv}.weight"] = _t(v[f"encoder/{conv}/weight"])
        sd[f"encoder.{conv}.bias"] = _t(v[f"encoder/{conv}/bias"])
    sd["encoder.positional_embedding"] = _t(v["encoder/position_encodings/encodings"])
    norm("encoder.ln_post", "encoder/layer_norm")
    sd["decoder.token_embedding.weight"] = _t(v["decoder/embeddings/weight"])
    sd["decoder.positional_embedding"] = _t(v["decoder/position_encodings/encodings"])
    norm("decoder.ln", "decoder/layer_norm")

    checkpoint = {"dims": dims, "model_state_dict": sd}
    config_path = Path(model_dir) / "config.json"
    if config_path.exists():
        heads = json.loads(config_path.read_text()).get("alignment_heads")
        if heads:
            checkpoint["alignment_heads"] = [list(map(int, h)) for h in heads]
    return checkpoint


def convert_ct2_whisper(model_dir: Path, out_path: Path) -> Path:
    """Write the openai-whisper checkpoint of a CT2 Whisper folder to `out_path`, atomically."""
    checkpoint = ct2_whisper_to_openai(model_dir)
    with atomic_file(out_path) as tmp:
        torch.save(checkpoint, tmp)
    return out_path


def convert_gguf_llm(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF causal LM into a transformers folder at `out_dir`, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    # The weights are plain float32 now; drop the record of the GGUF quantizer so the
    # model saves (and later loads) as an ordinary transformers checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "omni-source.json").write_text(json.dumps({"converted_from": gguf_path.name}))
    return out_dir
