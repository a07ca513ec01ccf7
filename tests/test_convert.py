"""Conversions: CTranslate2 Whisper -> openai-whisper, and atomic writes into the cache."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from omni_cli.cache import atomic_dir, atomic_file
from omni_cli.convert import convert_ct2_whisper, read_ct2_model


@pytest.fixture(scope="module")
def tiny_whisper_pair(tmp_path_factory):
    """A tiny random transformers Whisper, and the same weights converted to CTranslate2 by ctranslate2's own converter."""
    import ctranslate2
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=51864, num_mel_bins=80, d_model=16, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,  # openai-whisper: MLP = 4 x width
        max_source_positions=1500, max_target_positions=32,
    )
    hf = WhisperForConditionalGeneration(config).eval()
    root = tmp_path_factory.mktemp("whisper")
    hf.save_pretrained(root / "hf")
    ctranslate2.converters.TransformersConverter(str(root / "hf")).convert(str(root / "ct2"), quantization="float32")
    return hf, root / "ct2"


def test_ct2_reader_sees_every_variable(tiny_whisper_pair):
    _, ct2 = tiny_whisper_pair
    v = read_ct2_model(ct2 / "model.bin")
    assert v["encoder/conv1/weight"].shape == (16, 80, 3)
    assert int(v["encoder/num_heads"]) == 2
    assert v["decoder/projection/weight"] is v["decoder/embeddings/weight"]  # alias resolved


def test_converted_checkpoint_computes_what_the_original_computes(tiny_whisper_pair, tmp_path):
    import whisper

    hf, ct2 = tiny_whisper_pair
    pt = convert_ct2_whisper(ct2, tmp_path / "tiny.pt")
    model = whisper.load_model(str(pt), device="cpu").eval()
    assert model.dims.n_audio_layer == 2 and model.dims.n_text_head == 2 and not model.is_multilingual
    mel = torch.randn(1, 80, 3000)
    tokens = torch.tensor([[50257, 50362, 400, 401, 402]])
    with torch.no_grad():
        ours_audio = model.encoder(mel)
        ref_audio = hf.model.encoder(mel).last_hidden_state
        torch.testing.assert_close(ours_audio, ref_audio, atol=1e-4, rtol=1e-4)
        ours_logits = model.logits(tokens, ours_audio)
        ref_logits = hf(input_features=mel, decoder_input_ids=tokens).logits
        torch.testing.assert_close(ours_logits, ref_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.real
def test_embedded_tiny_en_conversion_matches_ctranslate2_encoder(tmp_cache):
    """The real embedded model: our openai-whisper encoder equals CTranslate2's on the same features."""
    import ctranslate2
    import whisper

    from omni_cli.registry import WHISPER_TINY_EN, resolve_whisper

    resolved = resolve_whisper(None, need="openai")
    assert resolved.openai_checkpoint.exists() and resolved.openai_checkpoint.parent.parent == tmp_cache
    model = whisper.load_model(str(resolved.openai_checkpoint), device="cpu")
    torch.manual_seed(1)
    mel = torch.randn(1, 80, 3000) * 0.3
    ct2 = ctranslate2.models.Whisper(str(WHISPER_TINY_EN.require()), device="cpu", compute_type="float32")
    theirs = np.array(ct2.encode(ctranslate2.StorageView.from_array(mel.numpy()), to_cpu=True))
    with torch.no_grad():
        ours = model.encoder(mel).numpy()
    # CT2 keeps fp16-rounded weights; ours are the same fp16 values in float32
    assert np.abs(ours - theirs).max() < 1e-2
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.9999


def test_atomic_file_keeps_nothing_on_failure(tmp_path):
    target = tmp_path / "model.pt"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half a model")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_publishes_only_complete_folders(tmp_path):
    target = tmp_path / "llm"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("killed")
    assert not target.exists()
    with atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("{}")
    assert (target / "config.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["llm"]


def test_a_conversion_killed_half_way_leaves_no_loadable_file(tmp_path):
    """SIGKILL during the write: the final name never appears, so the next run converts again."""
    target = tmp_path / "tiny.pt"
    code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from omni_cli.cache import atomic_file
        with atomic_file(Path({str(target)!r})) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"x" * 1000); f.flush()
                print("writing", flush=True)
                time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not target.exists()
    assert all(p.name.endswith(".partial") for p in tmp_path.iterdir())
