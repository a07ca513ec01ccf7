"""From a model spec to a ready end-to-end pipeline.

A spec is the registry name of our offline default, a folder in our format
(`omni_e2e.json`), a folder in the published format (`config.json` of type
omni_speech2s_llama), or a hub id of a published-format model (network).
"""

from __future__ import annotations

from pathlib import Path

from omni_cli.e2e.checkpoint import OMNI_CONFIG, load_omni, load_published
from omni_cli.e2e.pipeline import E2EOptions, E2EPipeline
from omni_cli.e2e.speech_llm import SpeechLLM
from omni_cli.e2e.unit_vocoder import load_unit_vocoder
from omni_cli.errors import ConfigError, ModelNotFoundError
from omni_cli.registry import OMNI_E2E_DEFAULT, lookup


def load_speech_llm(spec: str | None, device: str = "cpu") -> SpeechLLM:
    entry = lookup(spec or OMNI_E2E_DEFAULT.name)
    if entry is not None and entry.role == "e2e" and not entry.remote:
        return load_omni(entry.require(), device)  # require() says how to get it when absent
    spec = entry.name if entry is not None else spec
    assert spec is not None
    path = Path(spec).expanduser()
    if path.is_dir() and (path / OMNI_CONFIG).is_file():
        return load_omni(path, device)
    if path.is_dir() and (path / "config.json").is_file():
        return load_published(path, device, _llm_dtype(device))
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"{spec}: not an end-to-end model folder ({OMNI_CONFIG}, or a published config.json)")
    return load_published(spec, device, _llm_dtype(device))  # a hub id


def _llm_dtype(device: str):
    import torch

    return torch.float16 if device.startswith("cuda") else torch.float32


def default_omega(spec: str | None, vocoder: str | None = None) -> int:
    """The units per chunk that suit the model's unit vocoder (`vocoder`, else the one its
    config names; the published model's is the unit HiFi-GAN), read without loading weights."""
    import json

    from omni_cli.e2e.unit_hifigan import DEFAULT_OMEGA
    from omni_cli.e2e.unit_vocoder import PIPER_DEFAULT_OMEGA

    if vocoder is None:
        entry = lookup(spec or OMNI_E2E_DEFAULT.name)
        folder = Path(entry.installed_path() or "") if entry is not None and entry.role == "e2e" and not entry.remote \
            else Path(spec or "").expanduser()
        config = folder / OMNI_CONFIG
        vocoder = json.loads(config.read_text()).get("vocoder", "") if config.is_file() else ""
    is_piper = vocoder in ("piper",) or vocoder.startswith("piper:") or vocoder.endswith(".onnx")
    return PIPER_DEFAULT_OMEGA if is_piper else DEFAULT_OMEGA


def parse_omega(text: str, spec: str | None = None, vocoder: str | None = None) -> int | None:
    """'40' -> 40; 'all' -> None (vocode once, at the end); 'auto' -> the default for the model
    `spec`'s unit vocoder (`default_omega`)."""
    if text.strip().lower() == "auto":
        return default_omega(spec, vocoder)
    if text.strip().lower() in ("all", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"--omega must be a number of units or 'all', got {text!r}") from None
    if value < 1:
        raise ConfigError(f"--omega must be >= 1 or 'all', got {value}")
    return value


def load_e2e_pipeline(spec: str | None, vocoder: str | None, options: E2EOptions, device: str = "cpu") -> E2EPipeline:
    model = load_speech_llm(spec, device)
    vocoder_spec = vocoder or model.config.vocoder
    if not vocoder_spec:
        raise ConfigError(
            "this model predicts units for a unit HiFi-GAN (mHuBERT 1000 units): give it with --vocoder DIR "
            "(its config.json and checkpoint, e.g. g_00500000)"
        )
    return E2EPipeline(model, load_unit_vocoder(vocoder_spec), options)
