"""The command line, through typer's runner: data on stdout, diagnostics on stderr,
one clear line and a non-zero exit for every kind of bad input."""

import json
import shutil

import pytest
import soundfile as sf
from typer.testing import CliRunner

from omni_cli.cli import app
from tests.conftest import EXAMPLE_QUESTION

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("command", [[], ["transcribe"], ["respond"], ["talk"], ["eval"], ["models"], ["models", "prepare"], ["data"],
                                     ["data", "fetch"], ["data", "list"], ["data", "build"], ["train"], ["train", "adaptor"],
                                     ["train", "llm"], ["train", "speech-decoder"], ["train", "unit-lm"], ["train", "export"]])
def test_every_command_has_help_with_an_example(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout


def test_models_lists_roles_licenses_and_status():
    result = invoke("models", "--json")
    assert result.exit_code == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["whisper-tiny.en"]["license"] == "MIT"
    assert rows["smollm2-135m-instruct"]["role"] == "llm"
    assert all(r["status"] in ("installed", "cached", "missing", "installed (converted on first use)", "remote (network)")
               for r in rows.values())
    table = invoke("models")
    assert table.exit_code == 0 and "piper-en_US-joe-medium" in table.stderr


@pytest.fixture()
def corpus(tmp_path, bad_inputs):
    """A folder with a real spoken question + its reference, and a broken file beside it."""
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    shutil.copy(EXAMPLE_QUESTION, d / "sub" / "question.wav")
    (d / "sub" / "question.txt").write_text("Tell me about the moon.")
    shutil.copy(bad_inputs["not_audio"], d / "broken.mp3")
    return d


def test_transcribe_json_with_references_and_a_failed_item(corpus):
    result = invoke("transcribe", corpus, "--format", "json")
    assert result.exit_code == 1  # one item failed; the other was still transcribed
    items = {r["path"].split("/")[-1]: r for r in json.loads(result.stdout)}
    assert "not an audio file" in items["broken.mp3"]["error"]
    good = items["question.wav"]
    assert "moon" in good["text"].lower() and good["wer"] == 0.0
    assert "1 of 2 file(s) failed" in result.stderr


def test_transcribe_manifest_reference_and_subtitles(corpus, tmp_path):
    manifest = tmp_path / "refs.tsv"
    manifest.write_text("corpus/sub/question.wav\tTell me about the sun.\n")
    result = invoke("transcribe", corpus / "sub" / "question.wav", "--ref", manifest, "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)[0]["wer"] == pytest.approx(0.2)  # moon vs sun: 1 of 5 words
    srt = invoke("transcribe", corpus / "sub" / "question.wav", "-f", "srt")
    assert srt.stdout.startswith("1\n00:00:00,000 --> ")
    out = tmp_path / "subs"
    vtt = invoke("transcribe", corpus, "-f", "vtt", "--out", out)
    assert (out / "sub" / "question.vtt").read_text().startswith("WEBVTT")  # mirrors corpus/sub/
    assert vtt.exit_code == 1  # the broken file


def test_txt_to_stdout_only(corpus):
    result = invoke("transcribe", corpus / "sub" / "question.wav")
    assert result.exit_code == 0
    assert result.stdout.strip().lower().startswith("tell me about the moon")
    assert "loading" not in result.stdout


BAD = ["missing", "empty", "not_audio", "corrupt", "truncated", "zero_length", "silence", "too_long", "no_audio_dir"]


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize("command", ["transcribe", "respond"])
def test_bad_input_one_line_and_nonzero_exit(bad_inputs, kind, command, tmp_path):
    args = [command, bad_inputs[kind]] + (["--out", tmp_path / "r.wav"] if command == "respond" else [])
    result = invoke(*args)
    assert result.exit_code != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "r.wav").exists()


def test_non_utf8_name_is_transcribed_and_printed(bad_inputs):
    result = invoke("transcribe", bad_inputs["non_utf8"], "-f", "json")
    assert result.exit_code == 0, result.stderr
    item = json.loads(result.stdout)[0]
    assert item["path"].endswith("caf\\xe9.wav") and "moon" in item["text"].lower()


def test_unknown_option_values_are_refused():
    result = invoke("respond", EXAMPLE_QUESTION, "--mode", "telepathy")
    assert result.exit_code == 2


def test_srt_for_many_files_needs_an_output_folder(corpus):
    result = invoke("transcribe", corpus, "-f", "srt")
    assert result.exit_code == 2 and "needs --out" in result.stderr


@pytest.mark.real
def test_respond_cascade_json(tmp_path):
    out = tmp_path / "answer.wav"
    result = invoke("respond", EXAMPLE_QUESTION, "--mode", "cascade", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert {"mode", "input", "transcript", "text", "audio", "metrics"} <= payload.keys()
    assert payload["mode"] == "cascade" and "moon" in payload["transcript"].lower() and payload["text"]
    m = payload["metrics"]
    for key in ("asr_s", "first_token_s", "first_audio_latency_s", "total_s", "audio_s", "rtf"):
        assert m[key] is not None and m[key] > 0, key
    assert m["first_audio_latency_s"] <= m["total_s"]
    data, sr = sf.read(payload["audio"])
    assert sr == 22050 and len(data) / sr == pytest.approx(m["audio_s"], abs=0.01)


@pytest.mark.real
def test_respond_with_espeak_voice_streams_text_to_stdout(tmp_path):
    out = tmp_path / "answer.wav"
    result = invoke("respond", EXAMPLE_QUESTION, "--tts", "espeak", "--out", out, "--max-new-tokens", "30")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() and "heard:" in result.stderr and "first_audio_latency_s" in result.stderr
    assert "Audio saved" not in result.stdout  # the answer's channel holds only the answer
    assert sf.info(out).duration > 0.5


@pytest.mark.real
def test_a_reader_that_stops_early_loses_the_text_but_not_the_spoken_answer(tmp_path):
    """`omni respond q.wav --out a.wav | head -c 1`: the text has nowhere to go once head exits,
    but the spoken answer is still written and the command ends well, with nothing on stderr
    about the pipe."""
    import os
    import subprocess
    import sys

    out = tmp_path / "answer.wav"
    omni = os.path.join(os.path.dirname(sys.executable), "omni")
    proc = subprocess.Popen([omni, "respond", str(EXAMPLE_QUESTION), "--tts", "espeak", "--out", str(out),
                             "--max-new-tokens", "40"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(1)  # the first byte of the answer, then the reader goes away
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, stderr
    assert "pipe" not in stderr.lower() and "Traceback" not in stderr
    assert sf.info(out).duration > 0.5


def test_out_folder_mirrors_inputs_so_equal_names_do_not_collide(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        shutil.copy(EXAMPLE_QUESTION, tmp_path / "in" / sub / "q.wav")
    result = invoke("transcribe", tmp_path / "in", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.txt")) == ["a/q.txt", "b/q.txt"]


@pytest.mark.parametrize("args", [["respond", "nope.wav"], ["train", "adaptor", "--data", "nope", "--out", "run"]])
def test_debug_flag_shows_the_traceback_only_when_asked(args, tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "omni_cli"] + [str(tmp_path / a) if a in ("nope.wav", "nope", "run") else a for a in args]
    plain = subprocess.run(cmd, capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines()[-1].startswith("error:")
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_e2e_without_trained_weights_says_how_to_get_them(tmp_path, monkeypatch):
    from omni_cli import registry

    monkeypatch.setattr(registry, "_shipped_e2e", lambda: None)  # as if the shipped weights were deleted
    result = invoke("respond", EXAMPLE_QUESTION, "--mode", "e2e", "--out", tmp_path / "r.wav")
    assert result.exit_code == 3
    assert "train_default.sh" in result.stderr and "--e2e-model" in result.stderr
    assert not (tmp_path / "r.wav").exists()  # never speaks noise from random weights


def test_respond_e2e_runs_a_tiny_model_end_to_end(tiny_e2e_parts, tmp_path):
    out = tmp_path / "e2e.wav"
    result = invoke("respond", EXAMPLE_QUESTION, "--mode", "e2e", "--e2e-model", tiny_e2e_parts["omni"],
                    "--omega", "5", "--max-new-tokens", "20", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["mode"] == "e2e" and payload["transcript"] is None
    m = payload["metrics"]
    assert m["encoder_s"] > 0 and m["first_token_s"] > 0 and m["total_s"] >= m["first_token_s"]
    assert m["audio_s"] > 0 and m["first_audio_latency_s"] <= m["total_s"]
    assert sf.info(out).duration == pytest.approx(m["audio_s"], abs=0.01)


def test_ctrl_c_during_respond_keeps_the_answer_so_far(tiny_e2e_parts, tmp_path, monkeypatch):
    from omni_cli import cli
    from omni_cli.events import AudioChunk
    from omni_cli.pipelines import load_pipeline

    def interrupted_after_the_first_chunk(mode, config):
        pipeline = load_pipeline(mode, config)
        run = pipeline.run

        def run_until_ctrl_c(audio, history=None, **kw):
            for e in run(audio, history, **kw):
                yield e
                if isinstance(e, AudioChunk):
                    raise KeyboardInterrupt

        pipeline.run = run_until_ctrl_c
        return pipeline

    monkeypatch.setattr(cli, "_load_pipeline", interrupted_after_the_first_chunk)
    out = tmp_path / "partial.wav"
    result = invoke("respond", EXAMPLE_QUESTION, "--mode", "e2e", "--e2e-model", tiny_e2e_parts["omni"], "--omega", "5",
                    "--max-new-tokens", "30", "--out", out)
    assert result.exit_code == 130
    assert "the answer so far" in result.stderr and sf.info(out).frames > 0


def test_respond_both_compares_the_pipelines(tiny_e2e_parts, tmp_path):
    out = tmp_path / "reply.wav"
    result = invoke("respond", EXAMPLE_QUESTION, "--mode", "both", "--e2e-model", tiny_e2e_parts["omni"],
                    "--max-new-tokens", "20", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["mode"] == "both" and set(payload["results"]) == {"cascade", "e2e"}
    assert (tmp_path / "reply.cascade.wav").exists() and (tmp_path / "reply.e2e.wav").exists()
    table = invoke("respond", EXAMPLE_QUESTION, "--mode", "both", "--e2e-model", tiny_e2e_parts["omni"],
                   "--max-new-tokens", "10", "--out", out)
    assert table.exit_code == 0 and "side by side" in table.stderr


@pytest.mark.parametrize("omega", ["0x", "-3", "0"])
def test_bad_omega_is_refused(tiny_e2e_parts, omega):
    result = invoke("respond", EXAMPLE_QUESTION, "--mode", "e2e", "--e2e-model", tiny_e2e_parts["omni"], "--omega", omega)
    assert result.exit_code == 2 and "--omega" in result.stderr


def test_paths_with_markup_characters_are_shown_as_they_are(tmp_path, bad_inputs):
    """Names holding rich markup ([red], [/x]) are plain text: no crash, the batch goes on."""
    folder = tmp_path / "x["
    folder.mkdir()
    shutil.copy(EXAMPLE_QUESTION, folder / "[red]q.wav")
    shutil.copy(bad_inputs["corrupt"], folder / "y]bad.flac")  # its path reads "x[/y]bad.flac": a closing tag
    result = invoke("transcribe", folder)
    assert result.exit_code == 1, result.output
    assert "Tell me about the moon" in result.stdout
    assert "x[/y]bad.flac" in result.stderr and "[red]q.wav" in result.stderr and "corrupt" in result.stderr
    missing = invoke("transcribe", tmp_path / "[bold]missing[/].wav")
    assert missing.exit_code != 0 and "[bold]missing[/].wav" in missing.stderr



# -- bad output paths, bad option values, signals -------------------------------------------------


def test_output_paths_are_checked_before_any_work(tmp_path):
    folder = tmp_path / "existing"
    folder.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["respond", EXAMPLE_QUESTION, "--out", folder], "is a folder"),
        (["respond", EXAMPLE_QUESTION, "--out", a_file / "r.wav"], "is a file, not a folder"),
        (["talk", "--input", EXAMPLE_QUESTION, "--fast", "--output", folder, "--save", tmp_path / "s"], "is a folder"),
        (["talk", "--input", EXAMPLE_QUESTION, "--fast", "--save", a_file], "is a file, not a folder"),
        (["transcribe", EXAMPLE_QUESTION, "--out", a_file], "is a file, not a folder"),
        (["eval", EXAMPLE_QUESTION, "--out", a_file / "run"], "is a file, not a folder"),
    ]
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and result.stderr.strip().startswith("error:"), (args, result.stderr)
        assert not (tmp_path / "s").exists()


def test_unknown_voice_and_device_are_refused(tiny_e2e_parts):
    import torch

    voice = invoke("respond", EXAMPLE_QUESTION, "--tts", "espeak", "--voice", "zz-bogus")
    assert voice.exit_code == 2 and "unknown eSpeak NG voice 'zz-bogus'" in voice.stderr
    if not torch.cuda.is_available():
        for mode in ("cascade", "e2e"):
            result = invoke("respond", EXAMPLE_QUESTION, "--mode", mode, "--e2e-model", tiny_e2e_parts["omni"], "--device", "cuda")
            assert result.exit_code == 2 and "no CUDA GPU" in result.stderr, result.output
    bad = invoke("transcribe", EXAMPLE_QUESTION, "--device", "tpu")
    assert bad.exit_code == 2 and "--device is cpu, cuda or cuda:N" in bad.stderr


def test_sigterm_keeps_what_ctrl_c_keeps(tmp_path):
    """transcribe --format json, stopped by SIGTERM after some files: those results reach stdout."""
    import os
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(300):
        shutil.copy(EXAMPLE_QUESTION, folder / f"q{i:03d}.wav")
    omni = os.path.join(os.path.dirname(sys.executable), "omni")
    proc = subprocess.Popen([omni, "transcribe", str(folder), "--format", "json", "--beam-size", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def reading_a_later_file() -> bool:  # the process has a file past the first two open
        try:
            targets = [os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{proc.pid}/fd")]
        except OSError:
            return False
        # a file in the folder (not the folder itself, open while it is listed) past the first two
        return any(t.startswith(f"{folder}/") and not t.endswith(("q000.wav", "q001.wav")) for t in targets)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not reading_a_later_file():
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130
    done = json.loads(out)
    assert 1 <= len(done) < 300 and all("moon" in r["text"].lower() for r in done)


def test_a_long_transcript_is_shortened_in_the_table_only():
    """A 2-hour file's transcript would flood the summary table: the table shows its beginning,
    the data (stdout, --out) the whole text."""
    from pathlib import Path

    from rich.console import Console

    from omni_cli.render import TABLE_TEXT_CHARS, transcribe_table
    from omni_cli.transcribe import FileResult

    text = " ".join(f"word{n}" for n in range(2000))
    result = FileResult(Path("long.wav"), text=text, duration_s=7200.0, reference=text, errors=0, ref_words=2000)
    console = Console(width=400, record=True, file=__import__("io").StringIO())
    console.print(transcribe_table([result], 0.0))
    shown = console.export_text()
    assert "word0 word1" in shown and "word1999" not in shown and "…" in shown
    assert len(shown) < 3 * TABLE_TEXT_CHARS + 2000
    assert result.to_json()["text"] == text


def test_respond_passes_e2e_beam_to_the_model(tiny_e2e_parts, tmp_path):
    """--e2e-beam travels to the model: the tiny linear-adaptor model has no beam to set, and says so."""
    result = invoke("respond", EXAMPLE_QUESTION, "--mode", "e2e", "--e2e-model", tiny_e2e_parts["omni"], "--e2e-beam", "2",
                    "--out", tmp_path / "r.wav")
    assert result.exit_code != 0 and "--e2e-beam is for a model with a ctc adaptor" in result.stderr
    assert not (tmp_path / "r.wav").exists()
