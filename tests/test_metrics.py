import numpy as np
import pytest

from omni_cli.events import AudioChunk, Done, Response, SpeechEnded, StageTiming, TextDelta, Transcript, latency_metrics
from omni_cli.metrics import as_spoken, asr_wer, median_wer, normalize, wer, wer_counts


def test_wer_uses_whisper_normalizer_on_both_sides():
    assert wer(["Mr. Smith has 20 dollars."], ["mister smith has twenty dollars"]) == 0.0
    assert normalize("Hello, World!") == "hello world"


def test_wer_counts_edits_against_reference_words():
    assert wer_counts("the cat sat", "the cat sat down") == (1, 3)
    assert wer_counts("the cat sat", "a cat") == (2, 3)
    # corpus WER is total edits over total words, not a mean of per-file rates
    assert wer(["a b c d", "e"], ["a b c d", "x"]) == pytest.approx(1 / 5)


def test_median_wer_is_not_swayed_by_one_looping_transcript():
    refs = ["the cat sat", "a dog ran", "hello there friend"]
    hyps = ["the cat sat", "a dog ran fast", "hello " + "be " * 60]
    assert wer(refs, hyps) > 6  # the corpus figure: one loop decides it
    assert median_wer(refs, hyps) == pytest.approx(1 / 3)
    assert median_wer([""], ["words"]) is None


def test_asr_wer_counts_the_words_between_brackets_as_said():
    answer = "The UK has four countries: * England (the largest) * Wales [a nation]."
    heard = "The UK has four countries, England, the largest, Wales, a nation."
    # Whisper's normalizer drops bracketed words, as a transcript's "(laughs)": every word the
    # speech said between them would be an insertion
    assert wer([answer], [heard]) == pytest.approx(4 / 7)
    assert asr_wer([answer], [heard]) == 0.0
    assert as_spoken("(a) <b> [c]").split() == ["a", "b", "c"]
    # neither pipeline says a list's numbers or bullets, markdown or emoji (text.clean_for_speech)
    listed = "Some are:\n\n1. **Paris** 🗼\n2. Rome\n- Oslo"
    assert as_spoken(listed).split() == ["Some", "are:", "Paris", "Rome", "Oslo"]
    assert asr_wer([listed], ["Some are Paris, Rome, Oslo."]) == 0.0
    assert wer([listed], ["Some are Paris, Rome, Oslo."]) == pytest.approx(2 / 7)
    assert asr_wer(["the cat (sat)"], ["the cat"]) == pytest.approx(1 / 3)  # a bracketed word not said is missed
    with pytest.raises(TypeError, match="lists"):
        asr_wer("the cat", "the cat")


def test_evaluation_scores_asr_wer_as_spoken():
    from omni_cli.evaluate import score

    text = "Paris (the capital) is big."
    events = (SpeechEnded(duration_s=1.0, t=0.0), Transcript(text="where is paris", t=0.2), TextDelta(text=text, t=0.4),
              AudioChunk(samples=np.zeros(16000, dtype=np.float32), sample_rate=16000, index=0, t=0.5),
              Done(text=text, transcript="where is paris", t=1.6))
    response = Response(text=text, transcript="where is paris", audio=np.zeros(16000, dtype=np.float32),
                        sample_rate=16000, events=events)
    assert score(response, None, "Paris, the capital, is big.")["metrics"]["asr_wer"] == 0.0


def test_wer_refuses_strings_which_would_be_scored_character_by_character():
    with pytest.raises(TypeError, match="lists"):
        wer("Tell me about the moon.", "Tell me about the movie")


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
    assert m["longest_pause_s"] == 0.0 and m["pauses_over_1s"] == 0  # chunk 2 came while chunk 1 played


def test_pauses_are_the_waits_of_a_listener_playing_chunks_as_they_arrive():
    def chunk(seconds: float, t: float, index: int) -> AudioChunk:
        return AudioChunk(samples=np.zeros(int(1000 * seconds), dtype=np.float32), sample_rate=1000, index=index, t=t)

    events = [SpeechEnded(duration_s=1.0, t=0.0),
              chunk(0.5, 1.0, 0),   # plays 1.0-1.5
              chunk(1.0, 3.0, 1),   # waits 1.5 s, plays 3.0-4.0
              chunk(1.0, 3.5, 2),   # ready during the previous one: plays 4.0-5.0, no wait
              chunk(1.0, 5.8, 3),   # waits 0.8 s
              chunk(1.0, 8.0, 4),   # waits 1.2 s
              Done(text="x", t=8.0)]
    m = latency_metrics(events)
    assert m["longest_pause_s"] == pytest.approx(1.5)
    assert m["pauses_over_1s"] == 2
    silent = latency_metrics([SpeechEnded(duration_s=1.0, t=0.0), Done(text="x", t=1.0)])
    assert silent["longest_pause_s"] is None and silent["pauses_over_1s"] is None


def test_latency_metrics_need_the_end_of_speech():
    with pytest.raises(ValueError):
        latency_metrics([Done(text="x")])


def test_quality_report_is_scored_again_from_its_rows():
    """`evals.e2e_quality --rescore`: a saved report's figures recomputed from its items alone."""
    from evals.e2e_quality import rescore

    row = {"id": "a", "reference": "what are the uk countries", "repeat": "what are the uk countries",
           "adaptor": "what are the countries", "answer": "England (the largest) and Wales.",
           "text_answer": "England and Wales.", "heard": "England, the largest, and Wales.",
           "cascade_heard": "England and whales.", "cascade_answer": "England and Wales."}
    report = {"model": "m", "sets": {"s": {"summary": {"items": 1, "seconds": 2.0, "asr_wer": 80.0}, "rows": [row]},
                                     "real": {"summary": {"items": 1, "seconds": 1.0},
                                              "rows": [{"id": "b", "reference": "a cat", "repeat": "a hat"}]}}}
    s = rescore(report)["sets"]
    assert s["s"]["summary"]["items"] == 1 and s["s"]["summary"]["seconds"] == 2.0
    assert s["s"]["summary"]["asr_wer"] == 0.0 and s["s"]["summary"]["asr_wer_median"] == 0.0
    assert s["s"]["summary"]["cascade_asr_wer"] == pytest.approx(100 / 3, abs=0.01)
    assert s["s"]["summary"]["repeat_wer"] == 0.0 and s["s"]["summary"]["adaptor_wer"] == 20.0
    assert s["s"]["summary"]["chrf"] < 100 and s["s"]["summary"]["cascade_chrf"] == 100.0
    assert s["real"]["summary"] == {"items": 1, "seconds": 1.0, "repeat_wer": 50.0}
