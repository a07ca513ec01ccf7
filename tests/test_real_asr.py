"""Real human speech (DATA.md sets) through both Whisper backends over the same tiny.en weights."""

import pytest

from omni_cli import data
from omni_cli.asr import AsrOptions, load_asr
from omni_cli.audio import load_audio
from omni_cli.metrics import wer

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def real_speech():
    utts = data.load("pocketsphinx") + data.load("mfa")
    return [u["text"] for u in utts], [load_audio(u["audio"]) for u in utts]


def test_sets_hold_real_speech_in_several_formats():
    utts = data.load("pocketsphinx") + data.load("mfa")
    assert len(utts) >= 60
    assert {u["audio"].rsplit(".", 1)[-1] for u in utts} >= {"wav", "flac", "mp3"}
    assert all(u["text"].strip() and "<" not in u["text"] and "[" not in u["text"] for u in utts)


def test_default_backend_is_as_accurate_as_the_reference(real_speech):
    """Same weights, same options; the temperature fallback samples, so it is off here to make
    the comparison reproducible (with it, either backend moves by about half a point run to run)."""
    refs, audios = real_speech
    options = AsrOptions(temperatures=(0.0,))
    default = load_asr(options=options)
    fast = wer(refs, [default.transcribe(a).text for a in audios])
    reference = load_asr(backend="openai-whisper", options=options)
    slow = wer(refs, [reference.transcribe(a).text for a in audios])
    assert default.backend == "faster-whisper"
    assert fast <= slow + 0.01, f"faster-whisper WER {fast:.3f} vs openai-whisper {slow:.3f}"
    assert slow < 0.5  # the reference itself understands the speech


def test_librivox_readings_are_recognized(real_asr):
    utts = [u for u in data.load("pocketsphinx") if "librivox" in u["audio"]]
    hyps = [real_asr.transcribe(load_audio(u["audio"])).text for u in utts]
    assert wer([u["text"] for u in utts], hyps) < 0.15
