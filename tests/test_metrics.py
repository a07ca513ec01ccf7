import numpy as np
import pytest

from omni_cli.events import AudioChunk, Done, SpeechEnded, StageTiming, TextDelta, Transcript, latency_metrics
from omni_cli.metrics import normalize, wer, wer_counts


def test_wer_uses_whisper_normalizer_on_both_sides():
    assert wer(["Mr. Smith has 20 dollars."], ["mister smith has twenty dollars"]) == 0.0
    assert normalize("Hello, World!") == "hello world"


def test_wer_counts_edits_against_reference_words():
    assert wer_counts("the cat sat", "the cat sat down") == (1, 3)
    assert wer_counts("the cat sat", "a cat") == (2, 3)
    # corpus WER is total edits over total words, not a mean of per-file rates
    assert wer(["a b c d", "e"], ["a b c d", "x"]) == pytest.approx(1 / 5)


def test_wer_needs_a_reference():
    with pytest.raises(ValueError):
        wer([""], ["anything"])


def test_latency_metrics_come_from_event_timestamps():
    audio = AudioChunk(samples=np.zeros(22050, dtype=np.float32), sample_rate=22050, index=0, t=12.0)
    events = [
        SpeechEnded(duration_s=2.0, t=10.0),
        StageTiming(stage="asr", seconds=0.5, t=10.5),
        Transcript(text="hi", t=10.5),
        TextDelta(text=" ", t=10.9),  # whitespace is not the first token of the answer
        TextDelta(text="Hello", t=11.0),
        audio,
        TextDelta(text=" there.", t=12.5),
        AudioChunk(samples=np.zeros(11025, dtype=np.float32), sample_rate=22050, index=1, t=13.0),
        Done(text="Hello there.", transcript="hi", t=14.0),
    ]
    m = latency_metrics(events)
    assert m["asr_s"] == pytest.approx(0.5)
    assert m["first_token_s"] == pytest.approx(1.0)
    assert m["first_audio_latency_s"] == pytest.approx(2.0)
    assert m["total_s"] == pytest.approx(4.0)
    assert m["audio_s"] == pytest.approx(1.5)
    assert m["rtf"] == pytest.approx(4.0 / 1.5)


def test_latency_metrics_need_the_end_of_speech():
    with pytest.raises(ValueError):
        latency_metrics([Done(text="x")])
