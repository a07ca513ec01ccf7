"""`omni talk`: the conversation engine driven by a file as if it were the microphone (turns,
history, barge-in, the two-sided recording) on tiny random LLMs, the CLI's session file and
its no-device message, and the real CLI in a terminal under tmux."""

import json
import shlex
import shutil
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import soundfile as sf

from baselines.cascade import CascadeOptions, CascadePipeline
from omni_cli.audio import SAMPLE_RATE, resample, write_wav
from omni_cli.events import AudioChunk, Done
from omni_cli.llm import GenerationOptions
from omni_cli.talk import (
    SPOKEN_TURN,
    Conversation,
    KeySegmenter,
    StateChanged,
    TurnEnded,
    TurnStarted,
)
from omni_cli.talk_audio import FileSource
from tests.conftest import EXAMPLE_QUESTION, ROOT

GEN = GenerationOptions(max_new_tokens=12)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


@pytest.fixture(scope="module")
def questions(piper):
    def say(text):
        return resample(piper.synthesize(text), piper.sample_rate, SAMPLE_RATE)

    return say("What is the capital of France?"), say("What language do people speak there?")


@pytest.fixture(scope="module")
def two_questions(questions):
    """Two questions with a long pause between them: room for the first answer to be played."""
    q1, q2 = questions
    return np.concatenate([silence(0.5), q1, silence(12.0), q2, silence(1.0)])


@pytest.fixture(scope="module")
def tiny_cascade(real_asr, tiny_llm, piper):
    return CascadePipeline(real_asr, tiny_llm, piper, CascadeOptions(generation=GEN))


class RecordingSink:
    def __init__(self):
        self.played, self.stops = [], 0

    def play(self, samples, sample_rate):
        self.played.append(len(samples) / sample_rate)

    def stop(self):
        self.stops += 1


def talk(pipeline, audio, sink=None):
    """Run a conversation from a file, as fast as the models allow; (conversation, events)."""
    conversation = Conversation(pipeline, sink)
    events = list(conversation.run(FileSource(audio, speed=None, holds_for_answers=True)))
    return conversation, events


def spy_history(monkeypatch, obj, name, position):
    """Record the `history` argument of each call of obj.name."""
    seen, original = [], getattr(obj, name)

    def spy(*args, **kwargs):
        seen.append(list(args[position] if len(args) > position else kwargs.get("history") or []))
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, spy)
    return seen


def assert_two_answered_turns(conversation, events):
    turns = conversation.turns
    assert [t.index for t in turns] == [1, 2]
    assert not any(t.interrupted or t.error for t in turns)
    assert all(t.text and t.spoken_s > 0 and t.metrics["first_audio_latency_s"] is not None for t in turns)
    assert [t.history_len for t in turns] == [0, 2]
    kinds = [type(e) for e in events]
    assert kinds.count(TurnStarted) == kinds.count(TurnEnded) == kinds.count(Done) == 2
    states = [e.state for e in events if isinstance(e, StateChanged)]
    assert states[:5] == ["listening", "hearing", "thinking", "speaking", "listening"]
    assert turns[0].speech_end_s < turns[0].answer_start_s < turns[1].speech_start_s


def test_two_questions_make_two_turns_through_the_cascade(tiny_cascade, two_questions, monkeypatch):
    calls = spy_history(monkeypatch, tiny_cascade.llm, "stream_chat", 0)
    conversation, events = talk(tiny_cascade, two_questions)
    assert_two_answered_turns(conversation, events)
    first, second = conversation.turns
    assert "capital" in first.transcript.lower() and "speak" in second.transcript.lower()
    # the second question reaches the LLM after the first turn, as text
    assert calls[1][1:3] == [{"role": "user", "content": first.transcript}, {"role": "assistant", "content": first.text}]
    assert conversation.history[-1] == {"role": "assistant", "content": second.text}
    # each answer began in the silence before the VAD ended the turn, on the turn's own audio
    assert conversation.early_used == conversation.early_starts == 2 and len(calls) == 2


def test_two_questions_make_two_turns_end_to_end(tiny_e2e_parts, two_questions, monkeypatch):
    from omni_cli.e2e.pipeline import E2EOptions, E2EPipeline
    from omni_cli.e2e.unit_vocoder import PiperUnitVocoder

    model = tiny_e2e_parts["model"]
    pipeline = E2EPipeline(model, PiperUnitVocoder(), E2EOptions(omega=10, generation=GEN))
    calls = spy_history(monkeypatch, model, "prompt_embeds", 1)
    conversation, events = talk(pipeline, two_questions)
    assert_two_answered_turns(conversation, events)
    first = conversation.turns[0]
    assert first.transcript is None  # e2e hears the speech itself
    assert calls[0] == [] and calls[1] == [{"role": "user", "content": SPOKEN_TURN}, {"role": "assistant", "content": first.text}]


def test_an_answer_begun_in_a_pause_is_dropped_when_the_user_speaks_on(tiny_cascade, questions):
    """A pause shorter than the turn-ending silence starts an early run on the audio so far;
    speech after it cancels that run, and the turn answers the whole utterance."""
    q1, q2 = questions
    audio = np.concatenate([silence(0.5), q1, silence(0.5), q2, silence(12.0)])
    conversation, events = talk(tiny_cascade, audio)
    assert len(conversation.turns) == 1 and not conversation.turns[0].error
    transcript = conversation.turns[0].transcript.lower()
    assert "capital" in transcript and "speak" in transcript
    assert conversation.early_starts == 2 and conversation.early_used == 1


def test_the_recording_holds_both_sides_on_one_clock(tiny_cascade, two_questions):
    conversation, _ = talk(tiny_cascade, two_questions)
    audio = conversation.recording.audio(22050)
    assert audio.ndim == 2 and audio.shape[1] == 2
    assert len(audio) >= len(two_questions) * 22050 // SAMPLE_RATE

    def loud(channel, start_s, end_s):
        return np.abs(audio[int(start_s * 22050) : int(end_s * 22050), channel]).max() > 0.05

    first, second = conversation.turns
    assert loud(0, first.speech_start_s, first.speech_end_s) and not loud(1, first.speech_start_s, first.speech_end_s)
    answer_end = first.answer_start_s + first.spoken_s
    assert loud(1, first.answer_start_s, answer_end) and not loud(0, first.answer_start_s, answer_end)
    assert not loud(1, answer_end + 0.05, second.answer_start_s)  # silence until the next answer


def test_speech_during_the_answer_stops_it_and_starts_a_new_turn(tiny_cascade, questions):
    q1, q2 = questions
    _, events = talk(tiny_cascade, np.concatenate([silence(0.5), q1, silence(2.0)]))
    answer_s = sum(e.duration_s for e in events if isinstance(e, AudioChunk))
    assert answer_s > 1.5, "the first answer must be long enough to speak over"
    # the second question starts about a third into the first answer (the answer starts
    # when the VAD ends the turn: 0.7 s of silence after the question)
    audio = np.concatenate([silence(0.5), q1, silence(0.7 + answer_s / 3), q2, silence(1.0)])
    sink = RecordingSink()
    conversation, events = talk(tiny_cascade, audio, sink)
    first, second = conversation.turns
    assert first.interrupted and not second.interrupted
    assert 0 < first.spoken_s < first.metrics["audio_s"]
    assert sink.stops == 1
    assert "speak" in second.transcript.lower() and second.history_len == 2
    # the history keeps what the user heard of the first answer, marked as cut off
    kept = conversation.history[1]
    assert kept["interrupted"] and second.history[1] == kept
    heard = kept["content"].split()
    assert 0 < len(heard) < len(first.text.split()) and heard == first.text.split()[: len(heard)] == first.heard.split()
    states = [e.state for e in events if isinstance(e, StateChanged)]
    assert states[3:5] == ["speaking", "hearing"]  # straight from speaking to hearing the user
    # the recording keeps only the part of the first answer that was played
    played = conversation.recording.audio(SAMPLE_RATE)[:, 1]
    cut = int((first.answer_start_s + first.spoken_s) * SAMPLE_RATE)
    assert np.abs(played[cut + 160 : int(second.answer_start_s * SAMPLE_RATE)]).max() < 1e-6


def test_without_barge_in_speech_over_the_answer_is_ignored(tiny_cascade, questions):
    from omni_cli.talk import TalkOptions

    q1, q2 = questions
    audio = np.concatenate([silence(0.5), q1, silence(1.0), q2, silence(1.0)])
    conversation = Conversation(tiny_cascade, options=TalkOptions(barge_in=False))
    list(conversation.run(FileSource(audio, speed=None, holds_for_answers=True)))
    assert len(conversation.turns) == 1 and not conversation.turns[0].interrupted


def test_push_to_talk_cuts_turns_at_the_key():
    class Key:
        held = False

    key, frames = Key(), [np.full(512, i, dtype=np.float32) for i in range(6)]
    segmenter, out = KeySegmenter(key), []
    for i, frame in enumerate(frames):
        key.held = i in (1, 2, 3)
        out.append(segmenter.push(frame))
    assert out[:2] == [None, "start"] and out[2:4] == [None, None] and out[5] is None
    assert out[4].start == 512 and out[4].end == 4 * 512
    np.testing.assert_array_equal(out[4].audio, np.concatenate(frames[1:4]))


# -- the command line ---------------------------------------------------------------------


@pytest.fixture()
def cli_with_tiny_cascade(tiny_cascade, monkeypatch):
    from typer.testing import CliRunner

    from omni_cli import cli

    monkeypatch.setattr(cli, "_load_pipeline", lambda *a, **k: tiny_cascade)
    runner = CliRunner()
    return lambda *args: runner.invoke(cli.app, ["talk", *map(str, args)])


def test_cli_writes_the_conversation_and_the_session(cli_with_tiny_cascade, tiny_cascade, two_questions, tmp_path):
    wav = write_wav(tmp_path / "two.wav", two_questions, SAMPLE_RATE)
    result = cli_with_tiny_cascade("--input", wav, "--fast", "--output", tmp_path / "c.wav", "--save", tmp_path / "s")
    assert result.exit_code == 0, result.stderr
    assert "turn 2" in result.stderr and "first audio" in result.stderr
    assert "[listening]" in result.stderr and "[thinking]" in result.stderr  # not a terminal: the states as lines
    lines = [json.loads(line) for line in (tmp_path / "s" / "session.jsonl").read_text().splitlines()]
    assert [t["index"] for t in lines] == [1, 2] and lines[1]["history_len"] == 2
    assert "capital" in lines[0]["transcript"].lower() and lines[0]["text"]
    assert {"first_audio_latency_s", "asr_s", "total_s"} <= set(lines[0]["metrics"])
    audio, sr = sf.read(tmp_path / "c.wav")
    assert audio.shape[1] == 2 and sr == tiny_cascade.sample_rate and len(audio) / sr >= len(two_questions) / SAMPLE_RATE


def test_ctrl_c_keeps_what_was_recorded(cli_with_tiny_cascade, tiny_cascade, two_questions, tmp_path, monkeypatch):
    original = tiny_cascade.run

    def run(audio, history=None, **kw):
        if history:  # the second turn: the user presses Ctrl-C
            raise KeyboardInterrupt
        yield from original(audio, history, **kw)

    monkeypatch.setattr(tiny_cascade, "run", run)
    wav = write_wav(tmp_path / "two.wav", two_questions, SAMPLE_RATE)
    result = cli_with_tiny_cascade("--input", wav, "--fast", "--output", tmp_path / "c.wav", "--save", tmp_path / "s")
    assert result.exit_code == 130
    turns = [json.loads(line) for line in (tmp_path / "s" / "session.jsonl").read_text().splitlines()]
    assert len(turns) == 2 and not turns[0]["interrupted"] and turns[1]["interrupted"]
    assert sf.info(tmp_path / "c.wav").duration > 14


def test_no_audio_device_says_how_to_use_input(monkeypatch):
    from typer.testing import CliRunner

    from omni_cli.cli import app

    class PortAudioError(Exception):
        pass

    def query_devices(*a, **k):
        raise PortAudioError("Error querying device -1")

    monkeypatch.setitem(sys.modules, "sounddevice", types.SimpleNamespace(query_devices=query_devices, PortAudioError=PortAudioError))
    result = CliRunner().invoke(app, ["talk"])
    assert result.exit_code == 2
    assert "no microphone" in result.stderr and "--input FILE" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_named_device_that_is_not_there_is_one_line(monkeypatch):
    from typer.testing import CliRunner

    from omni_cli.cli import app

    def query_devices(device=None, kind=None):
        if device is not None:
            raise ValueError(f"No {kind} device matching {device!r}")  # what sounddevice says
        return {"name": "default", "default_samplerate": 16000}

    monkeypatch.setitem(sys.modules, "sounddevice", types.SimpleNamespace(query_devices=query_devices))
    result = CliRunner().invoke(app, ["talk", "--input-device", "bogus[/x]"])
    assert result.exit_code == 2, result.stderr
    assert "input device 'bogus[/x]'" in result.stderr and "python -m sounddevice" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_xruns_are_counted_and_reported():
    from omni_cli.talk_audio import Microphone, Speaker, xrun_note

    status = types.SimpleNamespace(input_overflow=True, output_underflow=True)
    fine = types.SimpleNamespace(input_overflow=False, output_underflow=False)
    mic = object.__new__(Microphone)
    mic.blocks, mic.xruns = __import__("queue").Queue(), 0
    speaker = object.__new__(Speaker)
    speaker.queued, speaker.lock, speaker.xruns = __import__("collections").deque([np.ones(4, np.float32)]), __import__("threading").Lock(), 0
    assert xrun_note(mic, speaker) is None
    for s in (status, fine, status):
        mic._callback(np.zeros((160, 1), np.float32), 160, None, s)
    out = np.full((8, 1), 9.0, np.float32)
    speaker._callback(out, 8, None, status)
    assert mic.xruns == 2 and speaker.xruns == 1 and mic.blocks.qsize() == 3
    assert out[:4, 0].tolist() == [1.0] * 4 and out[4:, 0].tolist() == [0.0] * 4
    note = xrun_note(mic, speaker)
    assert "2 microphone overflow" in note and "1 speaker underflow" in note


def test_played_answers_never_exceed_full_scale():
    from omni_cli.talk_audio import Speaker

    speaker = object.__new__(Speaker)
    speaker.queued, speaker.lock, speaker.rate = __import__("collections").deque(), __import__("threading").Lock(), 48000
    t = np.arange(2205) / 22050
    square = np.sign(np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # full scale: resampling rings past 1.0
    speaker.play(square, 22050)
    assert np.abs(speaker.queued[0]).max() <= 1.0


# -- the real CLI in a terminal -----------------------------------------------------------


@pytest.mark.real
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_the_terminal_shows_states_transcript_and_timings(two_questions, tmp_path):
    wav = write_wav(tmp_path / "two.wav", two_questions, SAMPLE_RATE)
    omni = ROOT / ".venv" / "bin" / "omni"
    command = f"{shlex.quote(str(omni))} talk --mode cascade --input {shlex.quote(str(wav))} --fast --max-new-tokens 48"
    tmux = ["tmux", "-L", f"omni-talk-test-{time.monotonic_ns()}"]  # a server of its own, with this environment
    subprocess.run([*tmux, "new-session", "-d", "-x", "120", "-y", "40", f"{command}; echo TALK-EXIT=$?; sleep 60"], check=True)
    screens: list[str] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            screens.append(subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True, check=False).stdout)
            if "TALK-EXIT=" in screens[-1]:
                break
            time.sleep(0.1)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, check=False)
    seen = "\n".join(screens)
    assert "TALK-EXIT=0" in screens[-1], screens[-1]
    for state in ("● listening", "● hearing you", "● thinking", "● speaking"):
        assert state in seen, f"{state!r} never shown"
    assert "you   What is the capital" in seen and "speak" in screens[-1]  # the transcripts
    assert "turn 2" in screens[-1] and "first audio" in screens[-1]


# -- real audio devices: PulseAudio with a virtual microphone and speaker ------------------


@pytest.fixture()
def pulse(tmp_path):
    """A private PulseAudio server: a null sink as the speakers, and a second null sink whose
    monitor is the microphone (what is played into `micsink` is heard). PortAudio reaches it
    through ALSA's pulse plugin (libasound2-plugins); set-up installs all three packages."""
    if shutil.which("pulseaudio") is None or shutil.which("paplay") is None:
        pytest.skip("PulseAudio is not installed (scripts/setup.sh --dev installs it)")
    (tmp_path / "default.pa").write_text(
        f"load-module module-native-protocol-unix socket={tmp_path}/native auth-anonymous=1\n"
        "load-module module-null-sink sink_name=speaker rate=48000\n"
        "load-module module-null-sink sink_name=micsink rate=16000\n"
        "load-module module-remap-source source_name=mic master=micsink.monitor\n"
        "set-default-sink speaker\nset-default-source mic\n")
    env = {**__import__("os").environ, "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
    server = subprocess.Popen(["pulseaudio", "-n", "-F", str(tmp_path / "default.pa"), "--daemonize=no", "--exit-idle-time=-1",
                               "--use-pid-file=no", "--log-target=stderr"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = {**__import__("os").environ, "PULSE_SERVER": f"unix:{tmp_path}/native"}
    try:
        for _ in range(100):
            if subprocess.run(["pactl", "info"], env=client, capture_output=True, check=False).returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail("PulseAudio did not start")
        yield client
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.real
def test_talk_hears_the_microphone_and_answers_through_the_speakers(pulse, tmp_path):
    """The whole device path: a question played into the virtual microphone is heard, answered,
    and the answer arrives at the virtual speakers, where Whisper hears what the text says."""
    import threading

    from omni_cli.asr import load_judge
    from omni_cli.audio import load_audio
    from omni_cli.metrics import normalize

    heard_wav = tmp_path / "speakers.wav"
    recorder = subprocess.Popen(["parecord", "--device=speaker.monitor", "--rate=16000", "--channels=1", "--file-format=wav",
                                 str(heard_wav)], env=pulse)
    omni = ROOT / ".venv" / "bin" / "omni"
    # Ctrl-C as in a terminal: a suite started in the background (`cmd &`) hands its children SIGINT ignored
    talk = subprocess.Popen([str(omni), "talk", "--input-device", "pulse", "--output-device", "pulse", "--max-new-tokens", "32",
                             "--save", str(tmp_path / "session"), "--output", str(tmp_path / "conversation.wav")], env=pulse, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: __import__("signal").signal(__import__("signal").SIGINT, __import__("signal").SIG_DFL))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(talk.stderr), daemon=True)
    reader.start()

    def wait_for(text: str, after: int = 0, seconds: float = 240) -> int:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = [i for i, line in enumerate(list(lines)) if i >= after and text in line]
            if found:
                return found[0]
            if talk.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"{text!r} never came; talk said: {''.join(lines)[-2000:]}")

    try:
        wait_for("[listening]")
        question = write_wav(tmp_path / "question.wav", np.concatenate([silence(0.5), load_audio(EXAMPLE_QUESTION), silence(0.3)]),
                             SAMPLE_RATE)  # a breath before speaking, as people do
        subprocess.run(["paplay", "--device=micsink", str(question)], env=pulse, check=True)
        done = wait_for("turn 1")
        wait_for("[listening]", after=done)  # the answer has played
        time.sleep(0.5)
    finally:
        talk.send_signal(__import__("signal").SIGINT)
        try:
            talk.wait(timeout=60)
        except subprocess.TimeoutExpired:
            talk.send_signal(__import__("signal").SIGUSR1)  # its threads' stacks, on stderr
            time.sleep(2)
            talk.kill()
            talk.wait(timeout=10)
            reader.join(timeout=5)
            pytest.fail(f"talk did not end within 60 s of Ctrl-C; it said: {''.join(lines)[-8000:]}")
        finally:
            recorder.terminate()
            recorder.wait(timeout=10)
    reader.join(timeout=5)
    assert talk.returncode == 130, "".join(lines)[-2000:]  # Ctrl-C ends a live conversation
    turns = [json.loads(line) for line in (tmp_path / "session" / "session.jsonl").read_text().splitlines()]
    assert len(turns) == 1 and turns[0]["transcript"].strip() and turns[0]["text"], (turns, "".join(lines)[-2000:])
    # the microphone delivered the question sample for sample (Whisper tiny.en's reading of it
    # changes with where the turn starts, so the signal itself is compared)
    recorded, rate = sf.read(tmp_path / "conversation.wav", dtype="float32")
    mic, asked = resample(recorded[:, 0], rate, SAMPLE_RATE), load_audio(EXAMPLE_QUESTION)
    match = np.correlate(mic, asked, mode="valid")
    at = int(np.argmax(np.abs(match)))
    segment = mic[at : at + len(asked)]
    assert np.dot(segment, asked) / (np.linalg.norm(segment) * np.linalg.norm(asked)) > 0.99
    played = load_audio(heard_wav)
    assert np.sqrt(np.mean(played**2)) > 0.01 and len(played) / SAMPLE_RATE > 1.0  # sound arrived, not silence
    spoken = load_judge().transcribe(played).text
    # the answer's words that did not arrive (substituted or missing): Whisper tiny sometimes loops on
    # a recording ("... a beautiful sight, and the Moon is a beautiful sight, ..."), insertions that say
    # nothing about what the speakers played
    import jiwer

    missed = jiwer.process_words(normalize(turns[0]["text"]), normalize(spoken))
    assert (missed.substitutions + missed.deletions) / len(normalize(turns[0]["text"]).split()) < 0.35, (turns[0]["text"], spoken)
    assert "ALSA lib" not in "".join(lines)  # alsa-lib's own prints are kept out of the view


def test_help_has_examples():
    from typer.testing import CliRunner

    from omni_cli.cli import app

    result = CliRunner().invoke(app, ["talk", "--help"])
    assert result.exit_code == 0 and "Examples" in result.stdout and "--input" in result.stdout


def test_heard_text_counts_whole_chunks_and_the_played_share_of_the_last():
    from omni_cli.talk import heard_text

    chunks = ["One two.", "One two. Three four five six.", "One two. Three four five six. Seven."]
    played = [(0, 100), (100, 400), (500, 100)]
    assert heard_text(chunks, played, 0) == "" and heard_text(chunks, played, 50) == "One"  # half of "One two."
    assert heard_text(chunks, played, 100) == "One two."
    assert heard_text(chunks, played, 300) == "One two. Three four"  # half of the second chunk's 4 words
    assert heard_text(chunks, played, 10_000) == chunks[-1]


def test_the_next_turns_beginning_is_computed_while_the_user_speaks(tiny_e2e_parts, two_questions, monkeypatch):
    """After a turn, the pipeline computes the next turn's prompt up to the speech (system
    prompt and history) in the background: the next turn's own run then starts at the speech."""
    import threading

    from omni_cli.e2e.pipeline import E2EOptions, E2EPipeline
    from omni_cli.e2e.unit_vocoder import PiperUnitVocoder

    model = tiny_e2e_parts["model"]
    pipeline = E2EPipeline(model, PiperUnitVocoder(), E2EOptions(omega=10, generation=GEN))
    prepared = []
    original = pipeline.prepare
    monkeypatch.setattr(pipeline, "prepare", lambda history: prepared.append([dict(m) for m in history]) or original(history))
    forwards = []  # (thread, what it computed)
    handle = model.llm.model.register_forward_pre_hook(
        lambda m, args, kw: forwards.append((threading.current_thread(), "ids" if kw.get("input_ids") is not None else "speech")),
        with_kwargs=True)
    try:
        conversation, events = talk(pipeline, two_questions)
    finally:
        handle.remove()
    first, second = conversation.turns
    assert prepared[0] == second.history == [{"role": "user", "content": SPOKEN_TURN}, {"role": "assistant", "content": first.text}]
    run = conversation._last_run.thread  # the second turn's
    assert [what for thread, what in forwards if thread is run][0] == "speech"  # no history left to compute


def test_a_history_over_its_budget_loses_its_oldest_turns(tiny_cascade, two_questions):
    """With a small history budget the first turn leaves the history before the second is
    answered (said once, as an event); the system prompt is not part of it and stays."""
    from omni_cli.talk import HistoryTrimmed, TalkOptions

    conversation = Conversation(tiny_cascade, options=TalkOptions(history_tokens=5))
    events = list(conversation.run(FileSource(two_questions, speed=None, holds_for_answers=True)))
    trims = [e for e in events if isinstance(e, HistoryTrimmed)]
    assert len(trims) == 1 and trims[0].dropped_turns == 1 and trims[0].kept_turns == 0
    first, second = conversation.turns
    assert second.history == [] and conversation.trimmed == 1
    assert conversation.history[0] == {"role": "user", "content": second.transcript}
