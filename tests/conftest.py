"""Shared fixtures: tiny random models (no downloads, built in a second) and the real
embedded models (offline, from installed packages; the `real` marker)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_QUESTION = ROOT / "examples" / "question.wav"
# Where the training and end-to-end tests put their tiny models: `cpu` here and in CI;
# OMNI_TEST_DEVICE=cuda runs the same assertions on a GPU (evals/gpu_check.sh).
TEST_DEVICE = os.environ.get("OMNI_TEST_DEVICE", "cpu")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "The moon is a celestial body that orbits the Earth.",
    "Paris is the capital of France. It is a large city, with many museums!",
    "You are a helpful voice assistant. Answer in short sentences?",
] * 20


def make_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|im_start|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_llm(seed: int = 0, init_range: float = 0.02):
    """A random 2-layer Llama (hidden 16) with a real byte-level BPE tokenizer and chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from omni_cli.llm import ChatLLM

    tokenizer = make_tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        initializer_range=init_range,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return ChatLLM(model, tokenizer, "tiny-random-llama")


@pytest.fixture(scope="session")
def tiny_llm():
    return make_tiny_llm()


@pytest.fixture()
def tmp_cache(tmp_path, monkeypatch):
    """An empty, private omni cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("OMNI_CACHE_DIR", str(cache))
    return cache


def tone(seconds: float = 1.0, sr: int = 16000, freq: float = 220.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    mono = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


@pytest.fixture(scope="session")
def too_long_audio(tmp_path_factory) -> Path:
    """31 minutes of silence as FLAC (over the 30-minute limit), written once per session."""
    path = tmp_path_factory.mktemp("long") / "long.flac"
    sf.write(path, np.zeros(16000 * 60 * 31, dtype=np.int16), 16000, subtype="PCM_16")
    return path


@pytest.fixture()
def bad_inputs(tmp_path, too_long_audio) -> dict[str, Path]:
    """One file (or folder) for each kind of bad input the commands must refuse clearly."""
    d = tmp_path / "bad"
    d.mkdir()
    good = sf.read(str(EXAMPLE_QUESTION), dtype="float32")[0]
    paths = {
        "missing": d / "missing.wav",
        "empty": d / "empty.wav",
        "not_audio": d / "notes.wav",
        "corrupt": d / "corrupt.flac",
        "truncated": d / "truncated.wav",
        "zero_length": d / "zero.wav",
        "silence": d / "silence.wav",
        "too_long": too_long_audio,
        "no_audio_dir": d / "empty_folder",
        "non_utf8": Path(os.fsdecode(bytes(d / "caf") + b"\xe9.wav")),
    }
    paths["empty"].write_bytes(b"")
    paths["not_audio"].write_text("these are my notes, not audio\n")
    paths["corrupt"].write_bytes(b"fLaC" + os.urandom(2000))
    sf.write(paths["truncated"], good, 16000, subtype="PCM_16")
    data = paths["truncated"].read_bytes()
    paths["truncated"].write_bytes(data[: len(data) // 2])
    sf.write(paths["zero_length"], np.zeros(0, dtype=np.float32), 16000)
    sf.write(paths["silence"], np.zeros(3 * 16000, dtype=np.float32), 16000)
    paths["no_audio_dir"].mkdir()
    (paths["no_audio_dir"] / "readme.txt").write_text("nothing to hear")
    sf.write(os.fsencode(paths["non_utf8"]), good, 16000, subtype="PCM_16")
    return paths


@pytest.fixture(scope="session")
def real_asr():
    from omni_cli.asr import load_asr

    return load_asr()


@pytest.fixture(scope="session")
def piper():
    from omni_cli.tts import PiperTTS

    return PiperTTS()


@pytest.fixture(scope="session")
def real_cascade(real_asr, piper):
    from baselines.cascade import CascadePipeline
    from omni_cli.llm import ChatLLM

    return CascadePipeline(real_asr, ChatLLM.load(), piper)


@pytest.fixture(scope="session")
def question_audio():
    from omni_cli.audio import load_audio

    return load_audio(EXAMPLE_QUESTION)


# -- tiny end-to-end models --------------------------------------------------------------


def save_tiny_whisper(path: Path) -> Path:
    """A random openai-whisper checkpoint (width 64, 1 head of 64 like every Whisper, 2 layers), .pt format."""
    import dataclasses

    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(0)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=1, n_audio_layer=2,
                           n_vocab=51864, n_text_ctx=8, n_text_state=16, n_text_head=2, n_text_layer=1)
    model = Whisper(dims)
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": model.state_dict()}, path)
    return path


def tiny_omni_config(llm_width: int, num_units: int, encoder_source: str = "", llm_source: str = "", padded: bool = False):
    from omni_cli.e2e.config import EncoderConfig, OmniConfig, ProjectorConfig, PromptConfig, SpeechDecoderConfig

    return OmniConfig(
        encoder=EncoderConfig(n_mels=80, n_ctx=1500, width=64, n_heads=1, n_layers=2, padded=padded),
        projector=ProjectorConfig(k=5, encoder_width=64, hidden=32, llm_width=llm_width),
        speech_decoder=SpeechDecoderConfig(llm_width=llm_width, width=32, n_layers=2, n_heads=4, n_kv_heads=4, ffn=64,
                                           num_units=num_units, upsample=4),
        prompt=PromptConfig(),
        encoder_source=encoder_source,
        llm_source=llm_source,
        vocoder="piper",
    )


@pytest.fixture(scope="session")
def tiny_e2e_parts(tmp_path_factory):
    """A tiny random end-to-end model on disk: whisper .pt, LLM folder, and an omni folder."""
    from omni_cli.e2e.checkpoint import build_encoder, save_omni
    from omni_cli.e2e.speech_generator import SpeechGenerator
    from omni_cli.e2e.speech_llm import SpeechLLM
    from omni_cli.e2e.speech_projector import SpeechProjector
    from omni_cli.llm import ChatLLM

    root = tmp_path_factory.mktemp("tiny_e2e")
    whisper_pt = save_tiny_whisper(root / "tiny-whisper.pt")
    llm = make_tiny_llm()
    llm.model.save_pretrained(root / "llm")
    llm.tokenizer.save_pretrained(root / "llm")
    config = tiny_omni_config(16, 151, str(whisper_pt), str(root / "llm"))
    torch.manual_seed(3)
    model = SpeechLLM(config, build_encoder(config.encoder, str(whisper_pt)), SpeechProjector(config.projector),
                      ChatLLM.load(str(root / "llm")), SpeechGenerator(config.speech_decoder)).eval()
    save_omni(model, root / "omni")
    return {"root": root, "whisper": whisper_pt, "llm": root / "llm", "omni": root / "omni", "model": model}
