"""The cascade pipeline: event stream mechanics on a tiny random LLM, streaming and
answer fidelity on the real embedded models."""

import numpy as np
import pytest

from baselines.cascade import CascadeOptions, CascadePipeline
from omni_cli.audio import resample
from omni_cli.errors import InputError
from omni_cli.events import AudioChunk, Done, SpeechEnded, StageTiming, TextDelta, TextSegment, Transcript
from omni_cli.llm import GenerationOptions
from omni_cli.metrics import wer


@pytest.fixture(scope="module")
def tiny_cascade(real_asr, tiny_llm, piper):
    return CascadePipeline(real_asr, tiny_llm, piper, CascadeOptions(generation=GenerationOptions(max_new_tokens=40)))


def test_event_stream_order_and_consistency(tiny_cascade, question_audio):
    events = list(tiny_cascade.run(question_audio))
    assert isinstance(events[0], SpeechEnded) and isinstance(events[-1], Done)
    kinds = [type(e) for e in events]
    assert kinds.index(StageTiming) < kinds.index(Transcript) < kinds.index(TextDelta)
    assert all(a.t <= b.t for a, b in zip(events, events[1:])), "timestamps go forward"
    done = events[-1]
    assert done.transcript and "moon" in done.transcript.lower()
    assert done.text == "".join(e.text for e in events if isinstance(e, TextDelta)).strip()
    segments = [e for e in events if isinstance(e, TextSegment)]
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert [c.index for c in chunks] == [s.index for s in segments if any(ch.isalnum() for ch in s.text)][: len(chunks)]
    assert all(c.sample_rate == 22050 and c.samples.dtype == np.float32 for c in chunks)


def test_respond_drains_the_same_stream(tiny_cascade, question_audio):
    streamed = list(tiny_cascade.run(question_audio))
    response = tiny_cascade.respond(question_audio)
    assert response.text == streamed[-1].text
    # Piper's VITS samples noise, so compare the drained audio with its own run's chunks
    chunks = [e.samples for e in response.events if isinstance(e, AudioChunk)]
    np.testing.assert_array_equal(response.audio, np.concatenate(chunks))
    assert [type(e) for e in response.events if not isinstance(e, AudioChunk)] == [
        type(e) for e in streamed if not isinstance(e, AudioChunk)
    ]
    m = response.metrics
    assert m["first_audio_latency_s"] is not None and 0 < m["first_token_s"] <= m["first_audio_latency_s"] <= m["total_s"]
    assert m["audio_s"] == pytest.approx(len(response.audio) / 22050)


def test_history_reaches_the_llm(tiny_cascade, question_audio, monkeypatch):
    seen = {}
    original = tiny_cascade.llm.stream_chat

    def spy(messages, options):
        seen["messages"] = messages
        return original(messages, options)

    monkeypatch.setattr(tiny_cascade.llm, "stream_chat", spy)
    history = [{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Hello Ada."}]
    list(tiny_cascade.run(question_audio, history=history))
    assert seen["messages"][1:3] == history and seen["messages"][-1]["role"] == "user"


def test_a_request_longer_than_the_llm_reads_is_refused_out_loud(tiny_cascade, question_audio):
    """A request whose text (with the conversation so far) leaves the LLM no room to answer is
    an error saying so, not an answer to its truncated end."""
    from omni_cli.events import ErrorEvent

    context = tiny_cascade.llm.context_length  # 512 for the tiny LLM
    long_history = [{"role": "user", "content": "word " * context}, {"role": "assistant", "content": "Yes."}]
    events = list(tiny_cascade.run(question_audio, history=long_history))
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and "the LLM reads at most 472 before its answer" in errors[0].message
    assert not any(isinstance(e, (TextDelta, AudioChunk)) for e in events)
    fine = list(tiny_cascade.run(question_audio, history=long_history[:0]))
    assert not any(isinstance(e, ErrorEvent) for e in fine)


def test_silence_is_refused_before_any_model_runs(tiny_cascade):
    with pytest.raises(InputError, match="no speech detected"):
        next(tiny_cascade.run(np.zeros(16000 * 2, dtype=np.float32)))


@pytest.mark.real
def test_first_sentence_is_spoken_while_the_llm_is_still_writing(real_cascade, question_audio):
    events = list(real_cascade.run(question_audio))
    first_audio = next(i for i, e in enumerate(events) if isinstance(e, AudioChunk))
    last_text = max(i for i, e in enumerate(events) if isinstance(e, TextDelta))
    assert sum(isinstance(e, AudioChunk) for e in events) >= 2, "a multi-sentence answer"
    assert first_audio < last_text


@pytest.mark.real
def test_spoken_answer_says_what_the_text_answer_says(real_cascade, real_asr, question_audio):
    """ASR-WER: Whisper's transcript of the reply audio against the reply text."""
    response = real_cascade.respond(question_audio)
    assert response.audio.size > response.sample_rate  # more than a second of speech
    heard = real_asr.transcribe(resample(response.audio, response.sample_rate, 16000)).text
    assert wer([response.text], [heard]) <= 0.20, (response.text, heard)
