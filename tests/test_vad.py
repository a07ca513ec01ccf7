"""The silence check before the models run: real speech passes however it is spoken (a
whisper, a creaky voice), noise and hum do not."""

import numpy as np
import pytest

from omni_cli.audio import SAMPLE_RATE, load_audio
from omni_cli.vad import has_speech


def noise(kind: str, seconds: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    n = int(seconds * SAMPLE_RATE)
    x = {"silence": np.zeros(n), "white": rng.normal(0, 0.05, n), "brown": np.cumsum(rng.normal(0, 0.01, n)),
         "hum": 0.3 * np.sin(2 * np.pi * 50 * np.arange(n) / SAMPLE_RATE)}[kind]
    return (x - x.mean()).astype(np.float32)


@pytest.mark.parametrize("kind", ["silence", "white", "brown", "hum"])
def test_noise_is_not_speech(kind):
    assert not has_speech(noise(kind))


@pytest.mark.real
def test_every_real_utterance_is_speech_even_whispered_or_creaky():
    from omni_cli import data

    items = [i for name in ("pocketsphinx", "mfa") for i in data.load(name)]
    assert any("whisper" in i["audio"] for i in items) and any("creaky" in i["audio"] for i in items)
    missed = [i["audio"] for i in items if not has_speech(load_audio(i["audio"]))]
    assert missed == []  # at Silero's usual 0.5 the whispered and the creaky clip were refused as silence


def test_around_speech_keeps_the_speech_and_its_margin_only():
    from omni_cli.vad import SPEECH_CHECK, around_speech, speech_segments
    from tests.conftest import EXAMPLE_QUESTION

    speech = load_audio(EXAMPLE_QUESTION)
    padded = np.concatenate([noise("white", 1.5), speech, noise("silence", 2.0)])
    spans = speech_segments(padded, SPEECH_CHECK)
    assert spans and spans[0][0] >= 1.4 and spans[-1][1] <= 1.5 + len(speech) / SAMPLE_RATE + 0.2
    cut = around_speech(padded, 0.25)
    assert len(cut) == pytest.approx((spans[-1][1] - spans[0][0] + 0.5) * SAMPLE_RATE, abs=2)
    assert np.array_equal(cut, padded[int((spans[0][0] - 0.25) * SAMPLE_RATE):][: len(cut)])
    assert len(around_speech(padded, 0.25, [(1.0, 2.0)])) == int(1.5 * SAMPLE_RATE)  # the spans given are used
    hum = noise("hum")
    assert around_speech(hum, 0.25) is hum  # no speech found: all of it


def test_the_vad_leaves_torch_its_threads():
    """Importing silero_vad sets torch to one thread for the whole process: every model after the
    first silence check ran on one core. A fresh process, so the import happens here."""
    import subprocess
    import sys

    from tests.conftest import EXAMPLE_QUESTION

    code = ("import torch; torch.set_num_threads(2)\n"
            "from omni_cli.audio import load_audio\nfrom omni_cli.vad import has_speech\n"
            f"assert has_speech(load_audio({str(EXAMPLE_QUESTION)!r}))\nprint(torch.get_num_threads())")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[-1] == "2"
