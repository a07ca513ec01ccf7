"""`omni eval`: metrics on hand-made cases, the results file (resume after a kill, Ctrl-C), a
bad item among good ones, the report files and their numbers, and workers / Ray giving the
same per-item results as one process; tiny random LLMs, the real tiny.en Whisper and Piper."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from omni_cli import evaluate as ev
from omni_cli.cli import app
from omni_cli.errors import ConfigError, InputError, ModelNotFoundError
from omni_cli.events import AudioChunk, Done, Response, SpeechEnded, StageTiming, TextDelta, Transcript
from tests.conftest import EXAMPLE_QUESTION

runner = CliRunner()


# -- metrics on hand-made cases ----------------------------------------------------------------


def hand_made_response(text="The moon is bright tonight.", transcript="tell me about the mon"):
    two_seconds = np.zeros(2 * 16000, dtype=np.float32)
    events = (SpeechEnded(duration_s=3.0, t=10.0), StageTiming(stage="asr", seconds=0.5, t=10.5),
              Transcript(text=transcript, t=10.5), TextDelta(text="The", t=11.0),
              AudioChunk(samples=two_seconds, sample_rate=16000, index=0, t=11.5), TextDelta(text=" moon", t=11.6),
              Done(text=text, transcript=transcript, t=13.0))
    return Response(transcript, text, two_seconds, 16000, events)


def test_score_from_event_timestamps_and_word_errors():
    row = ev.score(hand_made_response(), reference="Tell me about the moon.", heard="the moon is bright to night")
    m = row["metrics"]
    assert (m["asr_s"], m["first_token_s"], m["first_audio_latency_s"], m["total_s"]) == (0.5, 1.0, 1.5, 3.0)
    assert m["audio_s"] == 2.0 and m["rtf"] == 1.5
    assert m["answer_words"] == 5 and m["wps"] == 2.5
    assert row["counts"]["wer"] == [1, 5] and m["wer"] == 0.2  # "mon" for "moon"
    assert row["counts"]["asr_wer"] == [2, 5] and m["asr_wer"] == 0.4  # "tonight" -> "to night": 1 sub + 1 ins
    no_ref = ev.score(hand_made_response(), reference=None, heard=None)
    assert "wer" not in no_ref["metrics"] and "asr_wer" not in no_ref["metrics"] and no_ref["counts"] == {}


def _answers(condition: str, texts: list[str], latency: float, reference_answers: list[str | None]) -> list[dict]:
    mode = "cascade" if condition == "cascade" else "e2e"
    return [{"id": f"q{i}", "condition": condition, "mode": mode, "omega": None, "error": None, "text": t,
             "reference_answer": ref, "metrics": {"first_audio_latency_s": latency + i / 10, "asr_wer": 0.1},
             "counts": {"asr_wer": [1, 10]}} for i, (t, ref) in enumerate(zip(texts, reference_answers, strict=True))]


def test_answer_quality_is_chrf_against_the_cascade_and_the_reference_answers():
    cascade = ["The moon orbits the Earth once a month.", "Paris is the capital of France."]
    rows = (_answers("cascade", cascade, 1.0, [None, "Paris is the capital of France."])
            + _answers("e2e@40", ["The moon orbits the Earth once a month.", "I like turtles very much."], 0.5, [None, None]))
    s = ev.summarize(rows)["conditions"]
    assert s["cascade"]["chrf_vs_cascade"] is None and s["cascade"]["chrf_vs_reference_answer"] == pytest.approx(100)
    assert 20 < s["e2e@40"]["chrf_vs_cascade"] < 80  # one answer the same, one off topic
    assert s["e2e@40"]["chrf_vs_reference_answer"] is None
    header, table = ev.table_rows(ev.summarize(rows))
    assert [r for r in table if r[0] == "answer chrF vs the cascade's answer"][0][1:] == ["-", f"{s['e2e@40']['chrf_vs_cascade']:.1f}"]


def test_compare_shows_what_changed_between_two_runs(tmp_path):
    from typer.testing import CliRunner

    from omni_cli.cli import app

    for name, latency, texts in (("a", 1.0, ["The moon is far away.", "Paris."]), ("b", 0.6, ["The moon is far away.", "Paris."])):
        (tmp_path / name).mkdir()
        rows = _answers("e2e@40", texts, latency, [None, None]) + [{"id": "only-in-" + name, "condition": "e2e@40", "error": "x"}]
        (tmp_path / name / ev.RESULTS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code == 0, result.stderr
    comparison = json.loads(result.stdout)
    first_audio = comparison["conditions"]["e2e@40"]["figures"]["first_audio_latency_s"]
    assert comparison["items"] == 2 and first_audio["delta"] == pytest.approx(-0.4) and first_audio["b_better"] is True
    assert comparison["conditions"]["e2e@40"]["figures"]["corpus_asr_wer"]["b_better"] is None  # unchanged
    assert "better" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = CliRunner().invoke(app, ["eval", "--compare", str(tmp_path / "a"), str(empty)])
    assert bad.exit_code == 2 and "no results.jsonl" in bad.stderr


def test_summary_statistics_failures_and_corpus_wer():
    rows = [{"id": f"i{n}", "condition": "cascade", "mode": "cascade", "omega": None, "error": None,
             "metrics": {"first_audio_latency_s": float(n), "wer": n / 10}, "counts": {"wer": [n, 10]}} for n in range(1, 11)]
    rows.append({"id": "bad", "condition": "cascade", "mode": "cascade", "omega": None, "error": "bad.wav: corrupt"})
    s = ev.summarize(rows)["conditions"]["cascade"]
    assert (s["items"], s["ok"], s["failed"]) == (11, 10, 1)
    assert s["failures"] == [{"id": "bad", "error": "bad.wav: corrupt"}]
    lat = s["metrics"]["first_audio_latency_s"]
    assert (lat["n"], lat["median"], lat["mean"]) == (10, 5.5, 5.5) and lat["p90"] == pytest.approx(9.1)
    assert s["corpus_wer"] == pytest.approx(55 / 100)
    header, table = ev.table_rows(ev.summarize(rows))
    assert header[1:] == ["cascade"]
    assert ["items ok / failed", "10 / 1"] in table
    assert ["first audio (s)", "5.500 / 9.100 / 5.500"] in table and ["WER of what was heard (%)", "55.0 / 91.0 / 55.0"] in table
    assert ["corpus WER (%)", "55.0"] in table


def test_items_from_folders_and_manifests(tmp_path):
    d = tmp_path / "set"
    (d / "sub").mkdir(parents=True)
    shutil.copy(EXAMPLE_QUESTION, d / "sub" / "q.wav")
    (d / "sub" / "q.txt").write_text("Tell me about the moon.\n")
    shutil.copy(EXAMPLE_QUESTION, d / "plain.wav")
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "audio": "set/plain.wav", "text": "hi", "answer": "hello"}) + "\n")
    (tmp_path / "m.tsv").write_text("set/sub/q.wav\tTell me\tIt is a moon.\nset/plain.wav\n")
    items = ev.items_from_paths([d, tmp_path / "m.jsonl", tmp_path / "m.tsv", tmp_path / "missing"])
    by_id = {i.id: i for i in items}
    assert by_id["a"] == ev.EvalItem("a", str(tmp_path / "set/plain.wav"), "hi", "hello")
    assert by_id["set/sub/q.wav"].reference == "Tell me" and by_id["set/sub/q.wav"].answer == "It is a moon."
    assert by_id["set/plain.wav"].reference is None
    assert by_id[f"{d}/sub/q.wav"].reference == "Tell me about the moon."
    assert "no such file" in by_id[str(tmp_path / "missing")].problem
    with pytest.raises(InputError, match="no audio found"):
        ev.items_from_paths([tmp_path / "missing"])


def test_manifests_with_wrong_types_duplicates_or_a_bom(tmp_path):
    shutil.copy(EXAMPLE_QUESTION, tmp_path / "q.wav")
    bad = {
        '{"audio": 5}': "1: 'audio' must be a string",
        '{"audio": "q.wav", "text": 5}': "1: 'text' must be a string",
        '["q.wav", "hi"]': "1: expected a JSON object",
        '{"audio": "q.wav", "id": [1]}': "1: 'id' must be a string or a number",
        '{"id": "a", "audio": "q.wav"}\n{"id": "a", "audio": "q.wav"}': "2: id 'a' is used twice (also on line 1)",
    }
    for n, (text, message) in enumerate(bad.items()):
        path = tmp_path / f"m{n}.jsonl"
        path.write_text(text + "\n")
        with pytest.raises(InputError, match=re.escape(message)):
            ev.items_from_paths([path])
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "b", "audio": "q.wav", "text": "hi"}).encode() + b"\n")
    assert ev.items_from_paths([bom]) == [ev.EvalItem("b", str(tmp_path / "q.wav"), "hi")]  # JSON, not TSV


def test_odd_entries_in_a_folder_are_failed_items_not_skipped(tmp_path):
    import os

    d = tmp_path / "set"
    d.mkdir()
    shutil.copy(EXAMPLE_QUESTION, d / "good.wav")
    (d / "folder.wav").mkdir()
    os.symlink(d / "nowhere.wav", d / "broken.wav")
    os.mkfifo(d / "pipe.wav")
    odd_name = os.fsencode(d) + b"/caf\xe9.wav"  # not UTF-8
    shutil.copy(EXAMPLE_QUESTION, os.fsdecode(odd_name))
    shutil.copy(EXAMPLE_QUESTION, d / "latin.wav")
    (d / "latin.txt").write_bytes("Tell me about the mo\xf6n".encode("latin-1"))
    items = {i.id.rsplit("/", 1)[-1]: i for i in ev.items_from_paths([d])}
    assert items["good.wav"].problem is None
    assert "is a folder" in items["folder.wav"].problem
    assert "broken link" in items["broken.wav"].problem
    assert "not a regular file" in items["pipe.wav"].problem
    assert "not UTF-8" in items["latin.wav"].problem
    odd = items["caf\\xe9.wav"]
    assert odd.problem is None and os.fsencode(odd.audio) == odd_name  # the file itself, by its own bytes
    from omni_cli.audio import load_audio

    assert load_audio(odd.audio).size > 0


def test_a_results_file_that_is_not_ours_is_refused_with_its_line(tmp_path):
    for n, content in enumerate([b'{"id": "a", "condition": "cascade"}\n{"condition": "cascade"}\n{"id": "b", "condition": "cascade"}\n',
                                 b'{"id": "a", "condition": "cascade"}\n[1, 2]\n{"id": "b", "condition": "cascade"}\n',
                                 b'{"id": "a", "condition": "cascade"}\n\xff\xfe\n']):
        out = tmp_path / f"run{n}"
        out.mkdir()
        (out / "results.jsonl").write_bytes(content)
        with pytest.raises(InputError, match="results.jsonl(:2: a results row needs|: not UTF-8)"):
            ev.ResultsFile(out, resume=True)


def test_bad_arguments_give_one_clear_line(tmp_path):
    cases = [(["--modes", "cascade,talk", str(tmp_path)], "unknown mode 'talk'"),
             (["--omega", "10,x", str(tmp_path)], "--omega must be a number"),
             ([str(tmp_path)], "no audio found"),
             (["--bench", "nope"], "unknown bench 'nope'"),
             ([], "give audio folders")]
    for args, message in cases:
        result = runner.invoke(app, ["eval", *args, "--out", str(tmp_path / "out")])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and result.stderr.strip().startswith("error:")
    assert ev.parse_omegas("10,20,all,10") == (10, 20, None)
    with pytest.raises(ConfigError, match=">= 1"):
        ev.parse_omegas("0")  # not a quiet synonym of 'all'
    help_text = runner.invoke(app, ["eval", "--help"])
    assert help_text.exit_code == 0 and "Examples" in help_text.stdout
    with pytest.raises(ConfigError):
        ev.parse_modes(" , ")


# -- tiny pipelines ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_config(tiny_e2e_parts):
    return ev.EvalConfig(modes=("cascade", "e2e"), omegas=(10, None), llm=str(tiny_e2e_parts["llm"]),
                         e2e_model=str(tiny_e2e_parts["omni"]), max_new_tokens=10, beam_size=1,
                         naturalness=False)


@pytest.fixture(scope="module")
def tiny_evaluator(tiny_config):
    return ev.Evaluator.load(tiny_config)


def test_every_pipeline_comes_from_the_one_loader(tiny_evaluator):
    from omni_cli.errors import ConfigError
    from omni_cli.pipelines import Pipeline, PipelineConfig, load_pipeline, omega_of, with_omega

    pipelines = tiny_evaluator.pipelines
    assert list(pipelines) == ["cascade", "e2e@10", "e2e@all"]
    assert all(isinstance(p, Pipeline) for p in pipelines.values())
    assert pipelines["e2e@10"].model is pipelines["e2e@all"].model  # one model, a condition per omega
    assert [omega_of(p) for p in pipelines.values()] == [None, 10, "all"]
    with pytest.raises(ConfigError, match="unknown mode 'telepathy'"):
        load_pipeline("telepathy", PipelineConfig())
    with pytest.raises(ConfigError, match="only an end-to-end pipeline"):
        with_omega(pipelines["cascade"], 5)


def test_llm_dtype_sets_both_pipelines_llm_whatever_the_default(tiny_config, monkeypatch):
    """`omni eval --llm-dtype`: both pipelines' LLM in the dtype asked for (float32 even where
    the answering default is bfloat16: the same text then gets the same answer in both), an
    unknown dtype refused before anything loads."""
    import torch

    from omni_cli.errors import ConfigError
    from omni_cli.pipelines import chat_llm

    monkeypatch.setenv("OMNI_LLM_DTYPE", "bfloat16")  # the default on a CPU with native bfloat16
    for dtype in ("float32", "bfloat16"):
        evaluator = ev.Evaluator.load(replace(tiny_config, omegas=(10,), llm_dtype=dtype))
        assert {next(chat_llm(p).model.parameters()).dtype for p in evaluator.pipelines.values()} == {getattr(torch, dtype)}
    monkeypatch.delenv("OMNI_LLM_DTYPE")
    with pytest.raises(ConfigError, match="float32 or bfloat16"):
        ev.Evaluator.load(replace(tiny_config, llm_dtype="half"))
    result = CliRunner().invoke(app, ["eval", "--bench", "real-speech", "--llm-dtype", "half"])
    assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.fixture()
def corpus(tmp_path, bad_inputs):
    """Two good spoken questions with references, a corrupt file and a silent one."""
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    for name in ("a.wav", "sub/b.wav"):
        shutil.copy(EXAMPLE_QUESTION, d / name)
        (d / name).with_suffix(".txt").write_text("Tell me about the moon.")
    shutil.copy(bad_inputs["corrupt"], d / "corrupt.flac")
    shutil.copy(bad_inputs["silence"], d / "silence.wav")
    return d


def test_bad_items_among_good_ones_and_the_report_files(tiny_config, tiny_evaluator, corpus, tmp_path):
    out = tmp_path / "run"
    items = ev.items_from_paths([corpus])
    with ev.EvalRun(out, items, tiny_config) as run:
        assert len(run.tasks) == 4 and run.skipped == 0 and tiny_config.conditions() == ["cascade", "e2e@10", "e2e@all"]
        run.start(evaluator=tiny_evaluator)
        for _ in run.rows():
            pass
    summary = run.summary
    assert summary == json.loads((out / "summary.json").read_text())

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and len({(r["id"], r["condition"]) for r in rows}) == 12
    failed = {(r["id"].rsplit("/", 1)[-1], r["condition"]): r["error"] for r in rows if r["error"]}
    assert len(failed) == 6
    assert all("corrupt" in failed[("corrupt.flac", c)] for c in tiny_config.conditions())
    assert all("no speech detected" in failed[("silence.wav", c)] for c in tiny_config.conditions())
    good = [r for r in rows if not r["error"]]
    for r in good:
        m = r["metrics"]
        assert 0 < m["first_token_s"] <= m["total_s"] and m["answer_words"] == len(r["text"].split())
        if r["mode"] == "cascade":
            assert "moon" in r["transcript"].lower() and m["wer"] == r["counts"]["wer"][0] / r["counts"]["wer"][1]
        else:  # what e2e heard: the model's own repeat, scored like the cascade's transcript
            assert isinstance(r["transcript"], str) and r["omega"] in (10, "all")
            assert m["wer"] == r["counts"]["wer"][0] / r["counts"]["wer"][1]

    # summary.json holds what results.jsonl holds
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for c, s in on_disk["conditions"].items():
        mine = [r for r in rows if r["condition"] == c]
        assert (s["items"], s["failed"], s["ok"]) == (4, 2, 2)
        lat = [r["metrics"]["total_s"] for r in mine if not r["error"]]
        assert s["metrics"]["total_s"]["median"] == pytest.approx(np.median(lat))
        assert s["metrics"]["total_s"]["mean"] == pytest.approx(np.mean(lat))
    cascade = on_disk["conditions"]["cascade"]
    counts = [r["counts"]["wer"] for r in good if r["mode"] == "cascade"]
    assert cascade["corpus_wer"] == pytest.approx(sum(e for e, _ in counts) / sum(n for _, n in counts))

    report = (out / "report.md").read_text()
    s = cascade["metrics"]["total_s"]
    assert f"| total time (s) | {s['median']:.3f} / {s['p90']:.3f} / {s['mean']:.3f} |" in report
    assert "| items ok / failed | 2 / 2 | 2 / 2 | 2 / 2 |" in report and "## Failed items" in report
    import csv

    with open(out / "results.csv", newline="") as f:
        csv_rows = list(csv.reader(f))  # (a random model's texts may hold newlines: quoted fields)
    assert len(csv_rows) == 13 and csv_rows[0][:6] == ["id", "condition", "mode", "omega", "error", "asr_s"]
    for png in ("latency.png", "omega_sweep.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in report

    # everything is rebuilt from results.jsonl alone
    for name in ("summary.json", "report.md", "results.csv"):
        (out / name).unlink()
    assert ev.write_reports(out) == summary and (out / "report.md").read_text() == report


def test_results_are_never_overwritten_without_resume(tmp_path):
    (tmp_path / "results.jsonl").write_text('{"id": "a", "condition": "cascade"}\n{"id": "b", "cond')
    with pytest.raises(ConfigError, match="--resume"):
        ev.ResultsFile(tmp_path)
    results = ev.ResultsFile(tmp_path, resume=True)  # the line cut off by a kill is dropped
    assert results.done == {("a", "cascade")}
    results.append([{"id": "b", "condition": "cascade"}])
    results.close()
    assert [json.loads(line)["id"] for line in (tmp_path / "results.jsonl").read_text().splitlines()] == ["a", "b"]


def test_ctrl_c_keeps_results_and_resume_finishes_the_rest(tiny_e2e_parts, tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    for n in range(6):
        shutil.copy(EXAMPLE_QUESTION, d / f"q{n}.wav")
    out = tmp_path / "run"
    args = ["eval", str(d), "--modes", "cascade", "--llm", str(tiny_e2e_parts["llm"]), "--max-new-tokens", "6",
            "--beam-size", "1", "--out", str(out)]
    # SIGINT back to its default in the child: a shell without job control (CI, nohup ... &) starts
    # background jobs with it ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "omni_cli", *args], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    results = out / "results.jsonl"
    deadline = time.time() + 180
    while not (results.is_file() and results.read_text().count("\n") >= 1) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "--resume" in stderr
    before = [json.loads(line) for line in results.read_text().splitlines()]
    assert 1 <= len(before) < 6
    assert json.loads((out / "summary.json").read_text())["conditions"]["cascade"]["items"] == len(before)

    with open(results, "a") as f:
        f.write('{"id": "cut off by a kill", "condi')  # a kill in the middle of a write
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert f"{len(before)} of 6 item(s) already done" in result.stderr
    after = [json.loads(line) for line in results.read_text().splitlines()]
    assert after[: len(before)] == before
    assert sorted(r["id"] for r in after) == sorted(str(d / f"q{n}.wav") for n in range(6))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["conditions"]["cascade"]["ok"] == 6 and summary["rows"] == 6


def _comparable(rows):
    """Per-item results without what depends on timing or on Piper's random noise."""
    keep = ("error", "transcript", "text", "reference")
    return {(r["id"], r["condition"]): ({k: r.get(k) for k in keep}, (r.get("metrics") or {}).get("wer"),
                                         (r.get("metrics") or {}).get("answer_words")) for r in rows}


@pytest.fixture()
def many_items(corpus):
    items = ev.items_from_paths([corpus])
    return ev.pending(items, ["cascade", "e2e@10"], set())


def test_workers_give_the_same_results_as_one_process(tiny_config, tiny_evaluator, many_items):
    config = replace(tiny_config, omegas=(10,), asr_wer=False)
    single = [r for rows in ev.run_tasks(many_items, config, evaluator=tiny_evaluator) for r in rows]
    pooled = [r for rows in ev.run_tasks(many_items, config, workers=2) for r in rows]
    assert len(pooled) == len(single) == 8
    assert _comparable(pooled) == _comparable(single)


def test_a_worker_that_cannot_load_its_models_says_why(many_items, tmp_path):
    config = ev.EvalConfig(modes=("e2e",), e2e_model=str(tmp_path / "no-such-model"))
    with pytest.raises(ModelNotFoundError, match="not an end-to-end model folder"):
        list(ev.run_tasks(many_items, config, workers=2))


def test_ray_shards_items_and_gives_the_same_results(tiny_config, tiny_evaluator, many_items):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'omni[ray]')")
    config = replace(tiny_config, omegas=(10,), asr_wer=False)
    single = [r for rows in ev.run_tasks(many_items, config, evaluator=tiny_evaluator) for r in rows]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # a local Ray instance
    try:
        sharded = [r for rows in ev.run_tasks(many_items, config, workers=2, ray_address="auto") for r in rows]
    finally:
        ray.shutdown()
    assert _comparable(sharded) == _comparable(single)


@pytest.mark.real
def test_real_cascade_on_two_spoken_questions(tmp_path):
    from omni_cli import data

    if not data.is_cached("pocketsphinx"):
        pytest.skip("run `omni data fetch pocketsphinx` first")
    item = next(i for i in data.load("pocketsphinx") if i["id"].startswith("librivox"))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "moon", "audio": str(EXAMPLE_QUESTION), "text": "Tell me about the moon."}) + "\n"
                        + json.dumps({"id": "librivox", "audio": item["audio"], "text": item["text"]}) + "\n")
    result = runner.invoke(app, ["eval", str(manifest), "--modes", "cascade", "--out", str(tmp_path / "run"), "--max-new-tokens", "60"])
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "run" / "results.jsonl").read_text().splitlines())}
    assert rows["moon"]["metrics"]["wer"] == 0.0 and rows["librivox"]["metrics"]["wer"] <= 0.25
    for r in rows.values():
        m = r["metrics"]
        assert 0 < m["asr_s"] < m["first_token_s"] < m["first_audio_latency_s"] < m["total_s"]
        assert m["asr_wer"] <= 0.35, (r["text"], r["answer_heard"])  # the voice says what the text says
        assert 1.0 < m["wps"] < 5.0


def test_auto_omega_suits_the_unit_vocoder(tiny_e2e_parts, tmp_path):
    """'auto' picks the Omega measured for the model's kind of units: phonemes (Piper) or 50 Hz HuBERT units."""
    from omni_cli.e2e.unit_hifigan import DEFAULT_OMEGA
    from omni_cli.e2e.unit_vocoder import PIPER_DEFAULT_OMEGA

    assert ev.parse_omegas("auto,all") == (PIPER_DEFAULT_OMEGA, None)  # the shipped default speaks through Piper
    assert ev.parse_omegas("auto", str(tiny_e2e_parts["omni"])) == (PIPER_DEFAULT_OMEGA,)
    assert ev.parse_omegas("auto", str(tiny_e2e_parts["omni"]), str(tmp_path / "unit-hifigan")) == (DEFAULT_OMEGA,)


def _chromium_dom(page, fragment: str = "") -> str:
    """The page's DOM after its scripts ran, from a real headless Chromium."""
    import shutil as sh
    import subprocess

    browser = sh.which("chromium") or sh.which("chromium-browser") or sh.which("google-chrome")
    if browser is None:
        pytest.fail("no Chromium: the set-up installs it (apt-get install chromium)")
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required",
                           "--virtual-time-budget=8000", "--dump-dom", page.as_uri() + fragment],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_html_report_plays_every_answer_in_a_real_browser(tiny_config, tiny_evaluator, corpus, tmp_path):
    """report.html from a real run: it loads in headless Chromium without a script error, every
    player (questions and spoken answers) decodes, user text is escaped, and sorting and
    filtering work."""
    import re

    out = tmp_path / "run"
    (corpus / "sub" / "b.txt").write_text("<b>Tell</b> me about the moon & [bold]stars[/bold].")
    items = ev.items_from_paths([corpus])
    tiny_evaluator.answers_dir = out / "answers"
    tiny_evaluator.naturalness = True
    try:
        results = ev.ResultsFile(out)
        for rows in ev.run_tasks(ev.pending(items, tiny_config.conditions(), set()), tiny_config, evaluator=tiny_evaluator):
            results.append(rows)
        results.close()
    finally:
        tiny_evaluator.answers_dir, tiny_evaluator.naturalness = None, False
    ev.write_reports(out)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    kept = [r["answer_audio"] for r in rows if not r["error"]]
    assert len(kept) == 6 and all((out / k).read_bytes()[:4] == b"OggS" for k in kept)
    assert all(1 <= r["metrics"]["dnsmos_ovrl"] <= 5 and 1 <= r["metrics"]["dnsmos_p808"] <= 5 for r in rows if not r["error"])

    page = out / "report.html"
    text = page.read_text()
    assert "&lt;b&gt;Tell&lt;/b&gt; me about the moon &amp; [bold]stars[/bold]." in text and "<b>Tell</b>" not in text
    dom = _chromium_dom(page)
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', body))
    assert "error" not in attrs and "broken" not in attrs, attrs
    # 2 good questions + 2 bad ones that still decode or not, and 6 answers: every player that exists loads
    players = dom.count("<audio")
    assert players >= 8 and attrs["ready"] == str(players) and attrs["playable"] == str(players)

    # sorted by the cascade's answer length, longest first; filtered to the second item
    dom = _chromium_dom(page, "#sort=cascade%3A%20words&dir=down")
    assert 'data-sorted="cascade: words"' in dom
    body_rows = dom.split("<tbody>")[-1].split("</tr>")[:-1]
    words = [re.search(r'<td data-condition="cascade" data-figure="answer_words" class="num" data-v="([^"]*)"', r).group(1)
             for r in body_rows]
    assert len(words) == 4 and words[2:] == ["", ""]  # the failed items last
    assert float(words[0]) >= float(words[1]) and words[:2] != ["", ""]
    dom = _chromium_dom(page, "#filter=stars")
    assert 'data-shown="1"' in dom
    header = dom.split("<thead>")[-1].split("</thead>")[0]
    columns = re.findall(r"<th[^>]*>([^<]*)</th>", header)
    assert columns[:4] == ["item", "question", "cascade: heard", "cascade: answer"]  # the answers side by side, then
    assert columns[columns.index("cascade: words") + 1] == "e2e@10: words"  # each figure side by side
    assert "cascade: chrF" not in columns and "e2e@10: chrF" in columns  # no column that no row has


def test_judge_scores_parse_and_join_the_summary(tiny_config, tiny_evaluator, corpus, tmp_path):
    """A judge behind a real OpenAI-style HTTP endpoint grades every finished answer once (a
    second pass judges nothing again), the scores join the summary, and --compare sees them."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from omni_cli.judge import JUDGE_FILE, judge_run, load_judge_model, parse_score

    assert parse_score("4") == 4 and parse_score("Score: 5/5") == 5 and parse_score("10 of 10") is None
    assert parse_score("I would say 2.") == 2 and parse_score("none") is None

    asked = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            asked.append(body)
            answer = body["messages"][1]["content"].split("Answer:", 1)[1].split("Scale:", 1)[0]
            reply = {"choices": [{"message": {"content": "5" if "moon" in answer.lower() else "Score: 2"}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "run"
        results = ev.ResultsFile(out)
        for rows in ev.run_tasks(ev.pending(ev.items_from_paths([corpus]), tiny_config.conditions(), set()), tiny_config,
                                 evaluator=tiny_evaluator):
            results.append(rows)
        results.close()
        rows = ev.read_results(out)
        judge = load_judge_model("grader", f"http://127.0.0.1:{server.server_port}/v1")
        assert list(judge_run(out, judge, rows))[-1] == (6, 6)  # 2 good items x 3 conditions
        assert list(judge_run(out, judge, rows)) == []  # judged once
        assert len(asked) == 6 and all(b["model"] == "grader" and b["temperature"] == 0 for b in asked)
        assert all("Question: Tell me about the moon." in b["messages"][1]["content"] for b in asked)
        lines = [json.loads(line) for line in (out / JUDGE_FILE).read_text().splitlines()]
        expected = {(r["id"], r["condition"]): 5 if "moon" in r["text"].lower() else 2 for r in rows if not r["error"]}
        assert {(line["id"], line["condition"]): line["score"] for line in lines} == expected
        summary = ev.write_reports(out)
        for name, c in summary["conditions"].items():
            mine = [v for (i, cond), v in expected.items() if cond == name]
            assert c["metrics"]["judge_score"]["mean"] == pytest.approx(np.mean(mine))
        assert "judge score (1-5)" in (out / "report.md").read_text()
        assert summary["judges"] == [judge.name] and summary["judged"] == 6
        named = f"graded 1-5 by the judge {judge.name}: 6 of 6 finished answers got a score"
        assert named in (out / "report.md").read_text() and named in (out / "report.html").read_text()
        comparison = ev.compare_runs(out, out)
        assert comparison["conditions"]["cascade"]["figures"]["judge_score"]["delta"] == 0
    finally:
        server.shutdown()
    from omni_cli.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="judge endpoint"):
        load_judge_model("grader", f"http://127.0.0.1:{server.server_port}/v1").score("q?", "a.")


def test_dnsmos_rates_speech_above_noise(piper):
    """The naturalness figure tells real speech from noise (and from the same speech buried in it)."""
    from omni_cli.naturalness import dnsmos

    speech = piper.synthesize("The moon is about three hundred and eighty thousand kilometres away from the earth.")
    rng = np.random.default_rng(0)
    noise = (0.3 * rng.standard_normal(len(speech))).astype(np.float32)
    clean, noisy, pure_noise = (dnsmos(a, piper.sample_rate) for a in (speech, speech + noise, noise))
    assert clean["dnsmos_ovrl"] > noisy["dnsmos_ovrl"] + 0.5 and clean["dnsmos_ovrl"] > pure_noise["dnsmos_ovrl"] + 0.5
    assert clean["dnsmos_p808"] > pure_noise["dnsmos_p808"]
