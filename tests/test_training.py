"""Training on tiny random models and a handful of items: both stages learn (loss goes
down), checkpoints save, resume continues, loss curves are written; data building filters,
is deterministic and resumes."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from omni_cli.e2e.build_data import (BuildOptions, BuildProgress, build, build_set, heldout_texts, read_manifest,
                                     select_instructions, speakable)
from omni_cli.e2e.checkpoint import load_omni
from omni_cli.e2e.train import TrainOptions, start_stage, train_adaptor, train_speech_decoder
from omni_cli.errors import ConfigError
from tests.conftest import EXAMPLE_QUESTION, TEST_DEVICE


def test_speakable_filter():
    assert speakable("What is the tallest mountain in Europe?", 160)
    assert not speakable("Write a python function that reverses a list", 160)
    assert not speakable("Solve 3 + 4 * x = 19 for x", 160)
    assert not speakable("Summarize https://example.com for me", 160)
    assert not speakable("Hi", 160)
    assert not speakable("Where was Alice?s Adventures published?", 160)
    assert not speakable("word " * 60, 160)


INSTRUCTIONS = [
    {"id": str(i), "source": "test", "instruction": text}
    for i, text in enumerate([
        "What is the capital of France?", "Tell me a fun fact about cats.", "How do birds fly?",
        "What is the capital of France?", "Write code to sort a list in python", "Why is the sky blue?",
    ])
]


def test_selection_dedupes_filters_and_is_seeded():
    a = select_instructions(INSTRUCTIONS, BuildOptions(size=10, seed=1))
    b = select_instructions(INSTRUCTIONS, BuildOptions(size=10, seed=1))
    assert a == b and len(a) == 4  # one duplicate and one code request dropped
    assert {x["instruction"] for x in a} == {"What is the capital of France?", "Tell me a fun fact about cats.",
                                             "How do birds fly?", "Why is the sky blue?"}


def test_a_new_set_leaves_out_what_another_set_holds_out(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    rows = [{"id": "a", "instruction": "Why is the sky blue?", "split": "heldout"},
            {"id": "b", "instruction": "How do birds fly?", "split": "train"}]
    (other / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    held = heldout_texts([other])
    assert held == {"why is the sky blue?"}
    chosen = {x["instruction"] for x in select_instructions(INSTRUCTIONS, BuildOptions(size=10, seed=1), held)}
    assert chosen == {"What is the capital of France?", "Tell me a fun fact about cats.", "How do birds fly?"}
    with pytest.raises(ConfigError, match="not a built set"):
        heldout_texts([tmp_path / "missing"])


def test_build_speaks_answers_resumes_and_holds_a_voice_family_out(tmp_path):
    chosen = select_instructions(INSTRUCTIONS, BuildOptions(size=4))
    options = BuildOptions(size=4, heldout_fraction=0.5, seed=3)
    answers = []

    def answer(texts):
        answers.extend(texts)
        return [f"An answer to: {text}" for text in texts]

    def to_units(text):
        return [len(w) for w in text.split()]

    first = list(build(chosen[:2], tmp_path / "set", answer, to_units, options))
    rows = list(build(chosen, tmp_path / "set", answer, to_units, options))  # resumes: only the rest
    # each pass yields the new manifest rows, then the new answer rows
    assert len(first) == 4 and len(rows) == 4 and len(answers) == 4
    assert [("audio" in r, "response" in r) for r in rows] == [(True, True), (True, True), (False, True), (False, True)]
    manifest = read_manifest(tmp_path / "set")
    assert len(manifest) == 4 and len({r["id"] for r in manifest}) == 4
    for r in manifest:
        assert r["response"].startswith("An answer to:") and r["units"]
        assert r["voice"].split(":")[0] == ("espeak-heldout" if r["split"] == "heldout" else r["voice"].split(":")[0])
        assert r["split"] == "train" or r["voice"].startswith("espeak-heldout")
        assert not (r["split"] == "train" and r["voice"].startswith("espeak-heldout"))
    import soundfile as sf

    assert all(sf.info(r["audio"]).samplerate == 16000 and sf.info(r["audio"]).duration > 0.5 for r in manifest)
    # deterministic: a fresh build with the same seed picks the same voices and splits
    again = list(build(chosen, tmp_path / "again", answer, to_units, options, batch=3, workers=2))
    assert [(r["voice"], r["split"]) for r in again if "voice" in r] == [(r["voice"], r["split"]) for r in manifest]
    assert read_manifest(tmp_path / "again") == [{**r, "audio": r["audio"].replace("/set/", "/again/")} for r in manifest]


def test_an_item_the_synthesizer_crashes_on_is_recorded_and_the_build_goes_on(tmp_path):
    import subprocess

    from omni_cli.e2e.build_data import Speaker

    chosen = select_instructions(INSTRUCTIONS, BuildOptions(size=4))
    bad = chosen[1]["instruction"]
    spoken = []

    class Crashing(Speaker):  # a voice that segfaults on one text, as Festival's kal voice did on a real one
        def speak(self, text, voice):
            spoken.append(text)
            if text == bad:
                subprocess.run(["sh", "-c", "kill -SEGV $$"], check=True)
            return super().speak(text, voice)

    options = BuildOptions(size=4, seed=3)
    rows = list(build(chosen, tmp_path / "set", lambda texts: ["Yes." for _ in texts], lambda t: [1], options, speaker=Crashing()))
    failed = [r for r in rows if "failed" in r]
    assert [r["instruction"] for r in failed] == [bad] and "signal 11" in failed[0]["failed"]
    manifest = read_manifest(tmp_path / "set")
    assert len(manifest) == 3 and bad not in {r["instruction"] for r in manifest}
    assert all(r["response"] == "Yes." for r in manifest)  # the three spoken ones answered; none for the failed one
    assert len((tmp_path / "set" / "answers.jsonl").read_text().splitlines()) == 3
    assert [json.loads(line)["instruction"] for line in (tmp_path / "set" / "failed.jsonl").read_text().splitlines()] == [bad]
    spoken.clear()
    assert list(build(chosen, tmp_path / "set", lambda texts: ["Yes." for _ in texts], lambda t: [1], options, speaker=Crashing())) == []
    assert spoken == []  # resumed: nothing left to do, the failed item is not retried


def test_a_synthesizer_that_writes_no_audio_fails_only_its_item(tmp_path, monkeypatch):
    import subprocess

    from omni_cli.e2e import build_data

    item = select_instructions(INSTRUCTIONS, BuildOptions(size=1))[0]
    run = subprocess.run
    monkeypatch.setattr(build_data.subprocess, "run", lambda cmd, **kw: run(["true"], **kw))  # exits 0, writes nothing
    row = build_data.speak_or_fail(item, tmp_path, BuildOptions(seed=3, heldout_fraction=0.9))  # an eSpeak voice
    assert row["failed"] == "espeak-ng: no audio written" and row["instruction"] == item["instruction"]


def test_build_answers_only_the_first_items_when_asked(tmp_path):
    chosen = select_instructions(INSTRUCTIONS, BuildOptions(size=4))
    options = BuildOptions(size=4, answered=1, seed=3)
    list(build(chosen, tmp_path / "set", lambda texts: ["Yes." for _ in texts], lambda t: [1, 2], options, batch=2))
    rows = read_manifest(tmp_path / "set")
    assert [r["response"] for r in rows] == ["Yes.", None, None, None]
    assert [r["units"] for r in rows] == [[1, 2], None, None, None]
    assert len(read_manifest(tmp_path / "set", answered=True)) == 1 and len(rows) == 4
    # answering more later needs no new speech: the same set, a larger `answered`
    more = list(build(chosen, tmp_path / "set", lambda texts: ["No." for _ in texts], lambda t: [3], BuildOptions(size=4, answered=3, seed=3)))
    assert [r["response"] for r in more] == ["No.", "No."]
    assert [r["response"] for r in read_manifest(tmp_path / "set")] == ["Yes.", "No.", "No.", None]


class Letters:
    """A unit vocoder's text-to-units for the tiny models: a text's letters (their unit vocabulary is small)."""

    label = "letters"

    def text_to_units(self, text):
        return [1 + ord(c) % 20 for c in text if c.isalpha()]


@pytest.fixture(scope="module")
def peaked_omni(tmp_path_factory, tiny_e2e_parts):
    """The tiny model with an LLM initialised wider (peaked outputs), so inputs can steer it."""
    import dataclasses

    from omni_cli.e2e.checkpoint import build_encoder, save_omni
    from omni_cli.e2e.speech_llm import SpeechLLM
    from omni_cli.llm import ChatLLM
    from tests.conftest import make_tiny_llm

    root = tmp_path_factory.mktemp("peaked")
    llm = make_tiny_llm(init_range=0.3)
    llm.model.save_pretrained(root / "llm")
    llm.tokenizer.save_pretrained(root / "llm")
    base = tiny_e2e_parts["model"]
    config = dataclasses.replace(base.config, llm_source=str(root / "llm"))
    model = SpeechLLM(config, build_encoder(config.encoder, config.encoder_source), base.speech_projector,
                      ChatLLM.load(str(root / "llm")), base.speech_generator)
    return save_omni(model, root / "omni")


@pytest.fixture()
def rows(tmp_path):
    out = []
    for i, text in enumerate(["the moon is bright", "cats like to sleep", "birds can fly high"]):
        path = tmp_path / f"{i}.wav"
        shutil.copy(EXAMPLE_QUESTION, path)
        out.append({"audio": str(path), "instruction": "Tell me about the moon.", "response": text,
                    "units": [5 + i, 9, 12, 30 + i, 40]})
    return out


def test_stage1_adaptor_learns_saves_and_resumes(peaked_omni, rows, tmp_path):
    model = load_omni(peaked_omni, TEST_DEVICE)
    frozen = {k: v.clone() for k, v in model.llm.model.state_dict().items()}
    opts = TrainOptions(steps=25, batch_size=3, lr=5e-3, warmup=2, save_every=10)
    progress = list(train_adaptor(model, rows, tmp_path / "s1", opts))
    losses = [p.loss for p in progress]
    # a frozen random 16-wide LLM bounds how far the adaptor can steer it; the drop is real (seeded run)
    assert len(losses) == 25 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.15
    assert all((model.llm.model.state_dict()[k] == v).all() for k, v in frozen.items())  # the LLM stays frozen
    assert (tmp_path / "s1" / "loss.png").stat().st_size > 1000
    saved = load_omni(tmp_path / "s1" / "model", TEST_DEVICE)
    import torch

    torch.testing.assert_close(saved.speech_projector.linear1.weight, model.speech_projector.linear1.weight)
    more = list(train_adaptor(load_omni(tmp_path / "s1" / "model", TEST_DEVICE), rows, tmp_path / "s1",
                              TrainOptions(steps=30, batch_size=3, lr=5e-3, warmup=2, save_every=10), resume=True))
    assert [p.step for p in more] == [26, 27, 28, 29, 30]
    assert len(json.loads((tmp_path / "s1" / "losses.json").read_text())) == 30


def test_stage1_asr_prealignment_keeps_the_answer_prompt(peaked_omni, rows, tmp_path):
    model = load_omni(peaked_omni, TEST_DEVICE)
    before = model.config.prompt
    list(train_adaptor(model, rows, tmp_path / "asr", TrainOptions(steps=3, batch_size=2, warmup=1, save_every=3), task="asr"))
    assert load_omni(tmp_path / "asr" / "model", TEST_DEVICE).config.prompt == before


def test_stage2_speech_decoder_learns_the_units(peaked_omni, rows, tmp_path):
    model = load_omni(peaked_omni, TEST_DEVICE)
    opts = TrainOptions(steps=40, batch_size=3, lr=3e-3, warmup=2, save_every=20)
    losses = [p.loss for p in train_speech_decoder(model, rows, tmp_path / "s2", opts)]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert (tmp_path / "s2" / "loss.png").exists()


def test_a_stage_stopped_early_keeps_its_schedule_and_resumes_to_the_end(peaked_omni, rows, tmp_path):
    from omni_cli.e2e.train import _lr_at

    long = TrainOptions(steps=30, batch_size=3, lr=3e-3, warmup=2, save_every=10)
    model = load_omni(peaked_omni, TEST_DEVICE)
    first = list(train_speech_decoder(model, rows, tmp_path / "s2", dataclasses.replace(long, stop_at=13)))
    assert [p.step for p in first] == list(range(1, 14))
    state = torch.load(tmp_path / "s2" / "train_state.pt", weights_only=False)
    # a checkpoint at the stop, its last step taken at the 30-step schedule's rate, not at a 13-step one's end
    assert state["step"] == 13 and state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(_lr_at(12, long))
    assert _lr_at(12, long) > 2 * _lr_at(12, dataclasses.replace(long, steps=13))
    more = list(train_speech_decoder(load_omni(tmp_path / "s2" / "model", TEST_DEVICE), rows, tmp_path / "s2", long, resume=True))
    assert [p.step for p in more] == list(range(14, 31))
    assert len(json.loads((tmp_path / "s2" / "losses.json").read_text())) == 30


def test_stage2_reads_back_unanswered_instructions(peaked_omni, rows, tmp_path, monkeypatch):
    import omni_cli.e2e.unit_vocoder as uv

    spoken: list[str] = []

    class Heard(Letters):  # and the texts it was given
        def text_to_units(self, text):
            spoken.append(text)
            return super().text_to_units(text)

    monkeypatch.setattr(uv, "load_unit_vocoder", lambda spec: Heard())
    unanswered = [{"audio": rows[0]["audio"], "instruction": f"read this back {i}"} for i in range(3)]
    model = load_omni(peaked_omni, TEST_DEVICE)
    opts = TrainOptions(steps=4, batch_size=5, warmup=1, save_every=4)
    progress = list(train_speech_decoder(model, rows + unanswered, tmp_path / "s2", opts, from_text=True, read_back=2))
    assert spoken == ["read this back 0", "read this back 1"] and len(progress) == 4
    assert all(np.isfinite(p.loss) for p in progress)
    monkeypatch.setattr(uv, "load_unit_vocoder", lambda spec: type("HuBERT", (), {"label": "hubert"})())
    with pytest.raises(ConfigError, match="need units computed from text"):
        next(train_speech_decoder(load_omni(peaked_omni, TEST_DEVICE), rows + unanswered, tmp_path / "s3", opts, from_text=True, read_back=1))


def test_decoder_texts_pair_answers_quiz_the_questions_and_leave_held_out_items_out():
    from omni_cli.e2e.build_data import QUIZ_PROMPT, decoder_texts

    chat = [{"source": "chitchat-turns", "instruction": f"how was day {i}?", "answer": f"It was a long and quiet day number {i}."}
            for i in range(6)]
    chat += [{"source": "chitchat-turns", "instruction": "hi", "answer": "lol ok"},  # too short: no answer, no question
             {"source": "chitchat-turns", "instruction": "again", "answer": "It was a long and quiet day number 0."}]  # duplicate
    questions = [{"source": "dpr-questions", "instruction": f"who painted picture {i}", "answer": "X"} for i in range(7)]
    texts = decoder_texts(chat + questions, 100, exclude={"who painted picture 6?", "how was day 5?"})
    answers = sorted(t["response"] for t in texts if t["instruction"] != QUIZ_PROMPT)
    assert answers == [f"It was a long and quiet day number {i}." for i in range(5)]
    quiz = [t["response"] for t in texts if t["instruction"] == QUIZ_PROMPT]
    assert len(quiz) == 2 and all(q.count("?") == 3 for q in quiz)  # six questions, three at a time; the held-out one left out
    assert not any("picture 6" in q for q in quiz)
    assert decoder_texts(chat + questions, 100, seed=3) == decoder_texts(chat + questions, 100, seed=3)
    few = decoder_texts(chat + questions, 4)
    assert len(few) == 4 and sum(t["instruction"] == QUIZ_PROMPT for t in few) == 2  # drawn in turn from each source


def test_stage2_learns_extra_texts_and_reuses_the_llm_states_it_has(peaked_omni, rows, tmp_path, monkeypatch):
    import omni_cli.e2e.train as train
    import omni_cli.e2e.unit_vocoder as uv

    monkeypatch.setattr(uv, "load_unit_vocoder", lambda spec: Letters())
    texts = [{"instruction": "say something", "response": f"something new number {i}"} for i in range(3)]
    opts = TrainOptions(steps=4, batch_size=4, warmup=1, save_every=2)
    with pytest.raises(ConfigError, match="with --from-text"):
        next(train_speech_decoder(load_omni(peaked_omni, TEST_DEVICE), rows, tmp_path / "s0", opts, texts=texts))
    calls = []
    real = train.emitting_states_batch
    monkeypatch.setattr(train, "emitting_states_batch", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    reports = []
    with train.preparation_progress(lambda *a: reports.append(a)):
        first = list(train_speech_decoder(load_omni(peaked_omni, TEST_DEVICE), rows, tmp_path / "s2",
                                          TrainOptions(steps=2, batch_size=4, warmup=1, save_every=2), from_text=True, texts=texts))
    n = len([r for r in rows if r.get("units")]) + 3
    assert calls == [n] and len(first) == 2
    assert reports[-1] == ("LLM states", n, n) and all(0 < done <= total == n for _, done, total in reports)  # the pass showed its progress
    assert (tmp_path / "s2" / "decoder-states.pt").is_file()
    resumed = list(train_speech_decoder(load_omni(tmp_path / "s2" / "model", TEST_DEVICE), rows, tmp_path / "s2", opts,
                                        resume=True, from_text=True, texts=texts))
    assert [p.step for p in resumed] == [3, 4] and len(calls) == 1  # the states came from the run's file
    other = [{"instruction": "say something", "response": "a different text"}]
    list(train_speech_decoder(load_omni(tmp_path / "s2" / "model", TEST_DEVICE), rows, tmp_path / "s2", opts,
                              resume=True, from_text=True, texts=other))
    assert calls[1:] == [1]  # one new item: only it computed, the others from the file
    changed = load_omni(tmp_path / "s2" / "model", TEST_DEVICE)
    with torch.no_grad():
        next(changed.llm.model.parameters()).add_(0.01)
    list(train_speech_decoder(changed, rows, tmp_path / "s2", opts, resume=True, from_text=True, texts=other))
    assert calls[2:] == [len([r for r in rows if r.get("units")]) + 1]  # other LLM weights: all computed again
    assert all(np.isfinite(p.loss) for p in first + resumed)


def test_unit_lm_counts_the_registry_texts_stage2_reads_and_leaves_held_out_ones_out(rows, tmp_path, monkeypatch):
    """`omni train unit-lm`: an n-gram over the units of the registry texts (and the set's
    answered training items), a held-out instruction's text left out, written where asked."""
    from typer.testing import CliRunner

    from omni_cli import data
    from omni_cli.cli import app
    import omni_cli.e2e.unit_vocoder as uv
    from omni_cli.e2e.unit_lm import UnitNgram

    letters = Letters()
    letters.num_units = 21
    monkeypatch.setattr(uv, "load_unit_vocoder", lambda spec: letters)
    chat = [{"source": "chitchat-turns", "instruction": f"how was day {i}?", "answer": f"It was a long and quiet day number {i}."}
            for i in range(5)]
    chat.append({"source": "chitchat-turns", "instruction": "how was day zzz?", "answer": "Zzz zzz zzz, zzz zzz zzz zzz."})
    monkeypatch.setattr(data, "load", lambda name: chat if name == "chitchat-turns" else [])
    heldout = built_set([{**rows[0], "instruction": "how was day zzz?"}], tmp_path / "set", splits=["heldout"])
    out = tmp_path / "lm" / "unit.npz"
    result = CliRunner().invoke(app, ["train", "unit-lm", "--data", str(heldout), "--out", str(out), "--order", "3"])
    assert result.exit_code == 0, result.stderr
    assert "5 texts" in result.stderr
    lm = UnitNgram.load(out)
    z = letters.text_to_units("zz")
    quiet = letters.text_to_units("qui")
    assert lm.order == 3 and lm.num_units == 21
    assert lm.logprobs(tuple(quiet[:2]))[quiet[2]] > np.log(0.5)  # "qu" -> "i", every time it was seen
    assert lm.logprobs(tuple(z))[z[0]] < np.log(0.2)  # "zzz" was only in the held-out item's text
    bad = CliRunner().invoke(app, ["train", "unit-lm", "--data", str(tmp_path / "nope"), "--out", str(out)])
    assert bad.exit_code == 2 and "no manifest.jsonl" in bad.stderr


def test_token_lm_counts_registry_instructions_and_answers_and_leaves_held_out_and_excluded_ones_out(rows, peaked_omni, tmp_path, monkeypatch):
    """`omni train token-lm`: an n-gram over the LLM's tokens of the registry instructions (as a
    set writes them), the answer texts and the set's training items; a held-out instruction and
    those of an `--exclude` manifest are left out; a bad manifest is one clear error."""
    from typer.testing import CliRunner

    from omni_cli import data
    from omni_cli.cli import app
    from omni_cli.e2e.checkpoint import load_omni
    from omni_cli.e2e.unit_lm import UnitNgram

    chat = [{"source": "chitchat-turns", "instruction": f"how was day {i}?", "answer": f"It was a long and quiet day number {i}."}
            for i in range(5)]
    chat += [{"source": "chitchat-turns", "instruction": "zebra zebra zebra?", "answer": "No."},
             {"source": "chitchat-turns", "instruction": "walrus walrus walrus?", "answer": "No."}]
    monkeypatch.setattr(data, "load", lambda name: chat if name == "chitchat-turns" else [])
    heldout = built_set([{**rows[0], "instruction": "zebra zebra zebra?"}], tmp_path / "set", splits=["heldout"])
    (tmp_path / "tune.jsonl").write_text(json.dumps({"instruction": "Walrus walrus walrus?"}) + "\n")
    out = tmp_path / "lm" / "token.npz"
    args = ["train", "token-lm", "--data", str(heldout), "--out", str(out), "--model", str(peaked_omni),
            "--exclude", str(tmp_path / "tune.jsonl")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    lm = UnitNgram.load(out)
    tok = load_omni(peaked_omni).llm.tokenizer
    assert lm.order == 3 and lm.num_units == len(tok)

    def per_token(text, model=lm):  # the n-gram's mean log-probability of a text's tokens, the end included
        ids = tok(text, add_special_tokens=False).input_ids + [model.num_units]
        return sum(model.logprob(tuple(ids[max(0, i - 2):i]), t) for i, t in enumerate(ids)) / len(ids)

    assert per_token("How was day 3?") > np.log(0.5)  # an instruction as a set writes it (capital, "?")
    assert per_token("It was a long and quiet day number 4.") > np.log(0.5)  # an answer text
    assert per_token("Zebra zebra zebra?") < per_token("How was day 3?") - 2  # held out: never counted
    result = CliRunner().invoke(app, args[:-2] + ["--out", str(tmp_path / "all.npz")])  # no --exclude
    assert result.exit_code == 0, result.stderr
    everything = UnitNgram.load(tmp_path / "all.npz")
    assert per_token("Walrus walrus walrus?") < per_token("Walrus walrus walrus?", everything) - 1
    (tmp_path / "bad.jsonl").write_text("not json\n")
    for bad in (["--exclude", str(tmp_path / "bad.jsonl")], ["--exclude", str(tmp_path / "missing.jsonl")]):
        result = CliRunner().invoke(app, ["train", "token-lm", "--data", str(heldout), "--out", str(out), "--model", str(peaked_omni), *bad])
        assert result.exit_code == 2 and "Traceback" not in result.stderr, bad
    assert CliRunner().invoke(app, ["train", "token-lm", "--data", str(tmp_path / "nope"), "--out", str(out),
                                    "--model", str(peaked_omni)]).exit_code == 2


def test_stage2_gives_the_decoder_the_said_tokens_of_a_markdown_answer(peaked_omni, monkeypatch):
    """A list's numbers and markdown never reach the decoder in the pipeline; stage 2 cuts them
    out of its states, ids and units alike (the units of the text said, not of "1." and "**")."""
    import omni_cli.e2e.unit_vocoder as uv
    from omni_cli.e2e.train import _keep_said, said_answer

    monkeypatch.setattr(uv, "load_unit_vocoder", lambda spec: Letters())
    model = load_omni(peaked_omni)
    answers = ["Two:\n1. **Cats**\n2. Dogs", "plain words"]
    spoken = [said_answer(model, a) for a in answers]
    ids = [torch.tensor(i) for i, _, _ in spoken]
    states = [torch.randn(len(i), 4) for i in ids]
    units = [torch.tensor([1]), torch.tensor([2])]
    before = [s.clone() for s in states]
    _keep_said(model, spoken, states, ids, units, answers)
    assert " ".join(model.llm.tokenizer.decode(ids[0].tolist(), skip_special_tokens=True).split()) == "Two: Cats Dogs"
    assert len(states[0]) == len(ids[0]) < len(before[0]) and units[0].tolist() == Letters().text_to_units("Two:\nCats\n Dogs")
    assert torch.equal(states[1], before[1]) and units[1].tolist() == [2]  # nothing to cut: as it was


def test_the_text_a_kept_token_says_has_no_markdown_marks(peaked_omni, monkeypatch):
    """SmolLM2 writes "Goods:** Baked" with ":**" one token, kept for its colon: the units the
    decoder learns for it are those of "Goods: Baked", never of a read-out "asterisk asterisk"."""
    import omni_cli.e2e.train as train
    import omni_cli.e2e.unit_vocoder as uv

    model = load_omni(peaked_omni)
    monkeypatch.setattr(train, "said_tokens", lambda model, ids: [True] * len(ids))  # as where ":**" is one token
    ids, keep, said = train.said_answer(model, "Baked Goods:** Baked goods like `pizza`.")
    assert all(keep) and said.split() == ["Baked", "Goods:", "Baked", "goods", "like", "pizza", "."]
    voc = uv.PiperUnitVocoder()
    assert voc.text_to_units(said) == voc.text_to_units("Baked Goods: Baked goods like pizza .")


def test_stage2_on_registry_texts_alone_leaves_the_sets_held_out_texts_out(peaked_omni, rows, tmp_path, monkeypatch):
    """A set with held-out items only (no training audio) is enough for stage 2 on registry texts."""
    from omni_cli import data
    import omni_cli.e2e.unit_vocoder as uv

    monkeypatch.setattr(uv, "load_unit_vocoder", lambda spec: Letters())
    chat = [{"source": "chitchat-turns", "instruction": f"how was day {i}?", "answer": f"It was a long and quiet day number {i}."}
            for i in range(5)]
    monkeypatch.setattr(data, "load", lambda name: chat if name == "chitchat-turns" else [])
    heldout = built_set([{**rows[0], "instruction": "how was day 3?"}], tmp_path / "heldout", splits=["heldout"])
    with pytest.raises(ConfigError, match="continues a model"):
        start_stage("speech-decoder", heldout, tmp_path / "s2", from_text=True, extra_texts=10)
    texts, steps = start_stage("speech-decoder", heldout, tmp_path / "s2", start=peaked_omni, from_text=True, extra_texts=10,
                               options=TrainOptions(steps=2, batch_size=2, warmup=1, save_every=2))
    assert texts == []  # no spoken training item
    progress = list(steps)
    assert len(progress) == 2 and all(np.isfinite(p.loss) for p in progress)
    known = torch.load(tmp_path / "s2" / "decoder-states.pt", weights_only=True)["items"]
    assert len(known) == 4  # the five texts less the held-out one
    with pytest.raises(ConfigError, match="no training items"):
        start_stage("speech-decoder", heldout, tmp_path / "s3", start=peaked_omni)


def test_cli_data_build_refuses_the_evaluation_set(tmp_path):
    from typer.testing import CliRunner

    from omni_cli.cli import app

    result = CliRunner().invoke(app, ["data", "build", "--out", str(tmp_path / "d"), "--sources", "mt-bench,alpaca-eval"])
    assert result.exit_code == 2 and "evaluation set" in result.stderr


def built_set(rows, folder, splits=None):
    """`rows` as a set `omni data build` made in `folder` (all in the train split unless `splits` says)."""
    (folder / "audio").mkdir(parents=True)
    with open(folder / "manifest.jsonl", "w") as f:
        for i, r in enumerate(rows):
            shutil.copy(r["audio"], folder / "audio" / f"{i}.wav")
            split = splits[i] if splits else "train"
            f.write(json.dumps({**r, "id": str(i), "audio": f"audio/{i}.wav", "split": split}) + "\n")
    return folder


def test_cli_train_both_stages_from_a_model_folder(peaked_omni, rows, tmp_path):
    """The train commands on a tiny model and a tiny built set: run, checkpoint, resume."""
    from typer.testing import CliRunner

    from omni_cli.cli import app

    data_dir = built_set(rows, tmp_path / "data")
    runner = CliRunner()
    wrong = runner.invoke(app, ["train", "adaptor", "--data", str(data_dir), "--out", str(tmp_path / "s0"), "--from", str(peaked_omni)])
    assert wrong.exit_code == 2 and "use --task answer, asr or align" in wrong.stderr  # a linear adaptor has no CTC head
    s1 = runner.invoke(app, ["train", "adaptor", "--data", str(data_dir), "--out", str(tmp_path / "s1"), "--from", str(peaked_omni),
                             "--task", "answer", "--steps", "4", "--batch-size", "2", "--save-every", "2", "--device", TEST_DEVICE])
    assert s1.exit_code == 0, s1.stderr
    assert (tmp_path / "s1" / "model" / "omni_e2e.json").exists() and (tmp_path / "s1" / "loss.png").exists()
    again = runner.invoke(app, ["train", "adaptor", "--data", str(data_dir), "--out", str(tmp_path / "s1"), "--task", "answer", "--steps", "6",
                                "--batch-size", "2", "--save-every", "2", "--resume", "--device", TEST_DEVICE])
    assert again.exit_code == 0, again.stderr
    assert len(json.loads((tmp_path / "s1" / "losses.json").read_text())) == 6
    s2 = runner.invoke(app, ["train", "speech-decoder", "--data", str(data_dir), "--out", str(tmp_path / "s2"),
                             "--from", str(tmp_path / "s1" / "model"), "--steps", "3", "--batch-size", "2", "--device", TEST_DEVICE])
    assert s2.exit_code == 0, s2.stderr
    assert "preparing: LLM states" in s2.stderr  # the frozen passes before the first step show their progress
    before = load_omni(tmp_path / "s2" / "model").speech_generator.config.upsample
    wider = runner.invoke(app, ["train", "speech-decoder", "--data", str(data_dir), "--out", str(tmp_path / "s2w"), "--from-text",
                                "--from", str(tmp_path / "s2" / "model"), "--steps", "2", "--batch-size", "2", "--upsample", str(before + 2),
                                "--device", TEST_DEVICE])
    assert wider.exit_code == 0, wider.stderr
    assert load_omni(tmp_path / "s2w" / "model").speech_generator.config.upsample == before + 2
    again = runner.invoke(app, ["train", "speech-decoder", "--data", str(data_dir), "--out", str(tmp_path / "s2w"), "--from-text",
                                "--steps", "3", "--batch-size", "2", "--upsample", str(before + 3), "--resume", "--device", TEST_DEVICE])
    assert again.exit_code == 2 and "start a new run" in again.stderr
    missing = runner.invoke(app, ["train", "speech-decoder", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "s3")])
    assert missing.exit_code == 2 and "omni data build" in missing.stderr


def test_selection_draws_from_every_source():
    items = [{"id": str(i), "source": "big", "instruction": f"What is the population of town number {'abcdefghij'[i % 10]}{i}?"} for i in range(200)]
    items += [{"id": str(i), "source": "small", "instruction": f"Tell me something nice about the colour {c}."} for i, c in enumerate(["red", "blue", "green"])]
    chosen = select_instructions(items, BuildOptions(size=10))
    assert sum(c["source"] == "small" for c in chosen) == 3 and len(chosen) == 10


def test_stage1_align_pulls_adaptor_outputs_to_the_transcript_embeddings(peaked_omni, rows, tmp_path):
    """The LLM-free pre-alignment: CTC loss falls, and the encoder features are cached on disk for later stages."""
    model = load_omni(peaked_omni, TEST_DEVICE)
    for i, r in enumerate(rows):
        r["instruction"] = ["the moon is bright", "cats like to sleep", "birds can fly high"][i]
    losses = [p.loss for p in train_adaptor(model, rows, tmp_path / "align",
                                            TrainOptions(steps=40, batch_size=3, lr=5e-3, warmup=2, save_every=40), task="align")]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    from pathlib import Path

    cached = sorted((Path(rows[0]["audio"]).parent.parent / "features").rglob("*.pt"))
    assert [c.stem for c in cached] == ["0", "1", "2"]


def test_stage1_answer_task_skips_items_without_an_answer(peaked_omni, rows, tmp_path):
    model = load_omni(peaked_omni, TEST_DEVICE)
    rows[1]["response"] = None
    seen = []
    import omni_cli.e2e.train as train_mod

    original = train_mod.encode_rows
    train_mod.encode_rows = lambda m, rs: seen.extend(rs) or original(m, rs)
    try:
        list(train_adaptor(model, rows, tmp_path / "s", TrainOptions(steps=2, batch_size=2, warmup=1, save_every=2)))
    finally:
        train_mod.encode_rows = original
    assert len(seen) == 2 and all(r["response"] is not None for r in seen)


def test_stage1_loss_with_the_cached_prompt_prefix_equals_the_full_pass(peaked_omni, rows):
    """The training loss reuses the KV cache of the prompt before the speech; it must be the
    loss of running the whole prompt, as inference does."""
    import torch

    from omni_cli.e2e.train import _answer_ids, _llm_loss, encode_rows

    model = load_omni(peaked_omni, TEST_DEVICE)
    encoded = encode_rows(model, rows)
    loss = _llm_loss(model, rows, encoded, "answer")
    for i, r in enumerate(rows):
        prompt = model.prompt_embeds(model.speech_projector(encoded[i].float().unsqueeze(0).to(model.device))[0])
        ids = torch.tensor([_answer_ids(model, r["response"])], device=model.device)
        x = torch.cat([prompt, model.llm.model.get_input_embeddings()(ids)], dim=1)
        logits = model.llm.model(inputs_embeds=x).logits[0, prompt.shape[1] - 1 : -1]
        torch.testing.assert_close(loss(i), torch.nn.functional.cross_entropy(logits, ids[0]), rtol=1e-4, atol=1e-5)


def test_cli_export_writes_a_half_precision_copy_that_loads(peaked_omni, tmp_path):
    from safetensors import safe_open
    from typer.testing import CliRunner

    from omni_cli.cli import app

    result = CliRunner().invoke(app, ["train", "export", str(peaked_omni), str(tmp_path / "shipped")])
    assert result.exit_code == 0, result.stderr
    with safe_open(str(tmp_path / "shipped" / "model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
    original, shipped = load_omni(peaked_omni), load_omni(tmp_path / "shipped")
    import torch

    assert shipped.speech_projector.linear1.weight.dtype == torch.float32  # loaded back as float32
    torch.testing.assert_close(shipped.speech_projector.linear1.weight, original.speech_projector.linear1.weight,
                               atol=1e-3, rtol=1e-3)


def test_a_line_cut_off_by_a_kill_is_dropped_and_the_build_goes_on(tmp_path):
    chosen = select_instructions(INSTRUCTIONS, BuildOptions(size=4))
    options = BuildOptions(size=4, answered=2, seed=3)
    list(build(chosen[:2], tmp_path / "set", lambda texts: ["Yes." for _ in texts], lambda t: [1], options))
    for name in ("manifest.jsonl", "answers.jsonl"):  # a kill in the middle of writing a line
        with open(tmp_path / "set" / name, "a") as f:
            f.write('{"id": "cut')
    assert len(read_manifest(tmp_path / "set")) == 2  # a reader leaves it out, and leaves the file alone
    list(build(chosen, tmp_path / "set", lambda texts: ["No." for _ in texts], lambda t: [2], options))
    rows = read_manifest(tmp_path / "set")
    assert len(rows) == 4 and [r["response"] for r in rows] == ["Yes.", "Yes.", None, None]


def test_start_stage_refuses_what_cannot_be_trained_before_loading_a_model(rows, tmp_path, monkeypatch):
    import omni_cli.e2e.train as train_mod

    monkeypatch.setattr(train_mod, "load_omni", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ConfigError, match="no manifest.jsonl .*omni data build"):
        start_stage("adaptor", tmp_path / "nope", tmp_path / "out", task="answer")
    heldout_only = built_set(rows, tmp_path / "heldout", splits=["heldout"] * 3)
    with pytest.raises(ConfigError, match="no training items"):
        start_stage("speech-decoder", heldout_only, tmp_path / "out")
    with pytest.raises(ConfigError, match="--task is"):
        start_stage("adaptor", heldout_only, tmp_path / "out", task="answers")
    with pytest.raises(ConfigError, match="--augment trains the ctc adaptor"):
        start_stage("adaptor", heldout_only, tmp_path / "out", task="asr", augment=True)
    with pytest.raises(ConfigError, match="with --from-text"):
        start_stage("speech-decoder", heldout_only, tmp_path / "out", extra_texts=10)
    with pytest.raises(ConfigError, match="'alpaca-eval' is an evaluation set"):
        start_stage("speech-decoder", heldout_only, tmp_path / "out", from_text=True, extra_texts=10, text_sources=("alpaca-eval",))
    assert not (tmp_path / "out").exists()


def test_start_stage_picks_the_runs_own_model_on_resume(peaked_omni, rows, tmp_path, monkeypatch):
    import omni_cli.e2e.train as train_mod

    data_dir = built_set(rows, tmp_path / "data", splits=["train", "train", "heldout"])
    loaded = []
    load = train_mod.load_omni
    monkeypatch.setattr(train_mod, "load_omni", lambda folder, *a: loaded.append(folder) or load(folder, *a))
    opts = TrainOptions(steps=2, batch_size=2, warmup=1, save_every=2)
    run = tmp_path / "run"
    got, steps = start_stage("adaptor", data_dir, run, start=peaked_omni, options=opts, task="answer", device=TEST_DEVICE)
    assert [r["id"] for r in got] == ["0", "1"] and loaded == [peaked_omni]  # the train split only
    assert not run.exists()  # the steps have not started
    assert [p.step for p in steps] == [1, 2] and (run / "model").is_dir()
    loaded.clear()
    _, steps = start_stage("adaptor", data_dir, run, start=peaked_omni, resume=True, options=dataclasses.replace(opts, steps=3),
                           task="answer", device=TEST_DEVICE)
    assert loaded == [run / "model"] and [p.step for p in steps] == [3]
    loaded.clear()
    start_stage("speech-decoder", data_dir, tmp_path / "fresh", start=peaked_omni, resume=True, options=opts, device=TEST_DEVICE)
    assert loaded == [peaked_omni]  # nothing to resume there: the given model


def test_stages_train_on_several_sets_together_leaving_out_what_any_of_them_holds_out(peaked_omni, rows, tmp_path):
    first = built_set([{**r, "instruction": t} for r, t in zip(rows, ["one", "two", "three"])], tmp_path / "a",
                      splits=["train", "train", "heldout"])
    second = built_set([{**r, "instruction": t} for r, t in zip(rows, ["Two", "four", "five"])], tmp_path / "b",
                       splits=["heldout", "train", "train"])
    opts = TrainOptions(steps=2, batch_size=2, warmup=1, save_every=2)
    got, steps = start_stage("adaptor", [first, second], tmp_path / "run", start=peaked_omni, options=opts, task="answer",
                             device=TEST_DEVICE)
    assert [(r["audio"].split("/")[-3], r["instruction"]) for r in got] == [("a", "one"), ("b", "four"), ("b", "five")]
    assert [p.step for p in steps] == [1, 2]
    alone, _ = start_stage("adaptor", first, tmp_path / "run2", start=peaked_omni, options=opts, task="answer", device=TEST_DEVICE)
    assert [r["instruction"] for r in alone] == ["one", "two"]  # alone, its own held-out texts only


def test_room_copies_are_a_set_of_their_own_that_keeps_the_sources_held_out_texts(rows, tmp_path):
    from omni_cli.audio import load_audio
    from omni_cli.e2e.build_data import room_set
    from omni_cli.e2e.train import training_rows

    src = built_set([{**r, "instruction": t} for r, t in zip(rows, ["one", "two", "three"])], tmp_path / "src",
                    splits=["train", "heldout", "train"])
    progress = list(room_set(src, tmp_path / "rooms", size=5, seed=1))
    assert [(p.done, p.total) for p in progress] == [(0, 2), (1, 2), (2, 2)]  # only two training items to copy
    copies = read_manifest(tmp_path / "rooms", split="train")
    assert sorted(r["instruction"] for r in copies) == ["one", "three"]
    assert all(r["id"].startswith("room-") and ";" in r["voice"] for r in copies)
    for r in copies:
        original = load_audio(src / "audio" / f"{r['id'][5:]}.wav")
        copy = load_audio(r["audio"])
        assert copy.shape == original.shape and not np.allclose(copy, original, atol=1e-2)
    assert [r["instruction"] for r in read_manifest(tmp_path / "rooms", split="heldout")] == ["two"]
    assert [(p.done, p.total) for p in room_set(src, tmp_path / "rooms", size=5, seed=1)] == [(2, 2)]  # resumed: nothing left
    assert len(read_manifest(tmp_path / "rooms")) == 3
    together, held = training_rows([src, tmp_path / "rooms"])
    assert len(together) == 4 and held == {"two"}
    with pytest.raises(ConfigError, match="folder of their own"):
        next(room_set(src, src, size=1))


def test_cli_room_copies_writes_the_copies_and_refuses_a_folder_that_is_no_set(rows, tmp_path):
    from typer.testing import CliRunner

    from omni_cli.cli import app

    src = built_set(rows, tmp_path / "src")
    result = CliRunner().invoke(app, ["data", "room-copies", str(src), "--out", str(tmp_path / "rooms"), "--size", "2"])
    assert result.exit_code == 0 and "2 room copies" in result.stderr
    assert len(read_manifest(tmp_path / "rooms", split="train")) == 2
    result = CliRunner().invoke(app, ["data", "room-copies", str(tmp_path / "nope"), "--out", str(tmp_path / "r2")])
    assert result.exit_code == 2 and "not a built set" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_start_stage_without_a_model_starts_a_fresh_default_with_the_stages_adaptor(peaked_omni, rows, tmp_path, monkeypatch):
    import omni_cli.e2e.defaults as defaults

    made = []

    def new_default_model(transcripts, seed=0, adaptor="ctc", units="tokens", **parts):
        made.append((transcripts, seed, adaptor, units, parts))
        return load_omni(peaked_omni)

    monkeypatch.setattr(defaults, "new_default_model", new_default_model)
    data_dir = built_set(rows, tmp_path / "data")
    opts = TrainOptions(seed=4)
    for stage, task, adaptor in (("adaptor", "align", "linear"), ("adaptor", "ctc", "ctc"), ("llm", "ctc", "ctc"),
                                 ("speech-decoder", "ctc", "ctc")):
        made.clear()
        start_stage(stage, data_dir, tmp_path / "run", options=opts, task=task, units="chars", device=TEST_DEVICE)
        assert made == [(["Tell me about the moon."] * 3, 4, adaptor, "chars", {})], stage
    made.clear()  # another Whisper and LLM for the fresh model (`train adaptor --encoder --llm`)
    start_stage("adaptor", data_dir, tmp_path / "other", options=opts, encoder="/models/whisper-base", llm="my-llm",
                device=TEST_DEVICE)
    assert made[0][4] == {"encoder": "/models/whisper-base", "llm": "my-llm"}
    with pytest.raises(ConfigError, match="--encoder and --llm choose the parts of a fresh model; --from"):
        start_stage("adaptor", data_dir, tmp_path / "other2", start=peaked_omni, encoder="/models/whisper-base", llm="my-llm")
    with pytest.raises(ConfigError, match="--encoder with --from moves a ctc adaptor onto another Whisper: train adaptor --task ctc"):
        start_stage("llm", data_dir, tmp_path / "other2", start=peaked_omni, encoder="/models/whisper-base")
    with pytest.raises(ConfigError, match="moves a ctc adaptor onto another Whisper; this model's adaptor is linear"):
        start_stage("adaptor", data_dir, tmp_path / "other2", start=peaked_omni, encoder="/models/whisper-base")


def test_build_set_refuses_an_evaluation_set_before_loading_anything(tmp_path, monkeypatch):
    from omni_cli import data

    monkeypatch.setattr(data, "load", lambda name: pytest.fail(f"{name} was loaded"))
    with pytest.raises(ConfigError, match="'alpaca-eval' is an evaluation set"):
        next(build_set(tmp_path / "set", BuildOptions(size=2), ["mt-bench", "alpaca-eval"]))
    assert not (tmp_path / "set").exists()


def test_build_set_answers_with_the_llm_and_counts_what_is_already_built(tiny_llm, tmp_path, monkeypatch):
    import omni_cli.e2e.unit_vocoder as uv
    from omni_cli import data
    from omni_cli.llm import ChatLLM

    monkeypatch.setattr(data, "load", lambda name: [{**item, "source": name} for item in INSTRUCTIONS])
    monkeypatch.setattr(ChatLLM, "load", staticmethod(lambda spec=None: tiny_llm))

    monkeypatch.setattr(uv, "PiperUnitVocoder", Letters)
    out = tmp_path / "set"
    options = BuildOptions(size=3, answered=1, seed=3)
    progress = list(build_set(out, options, ["mt-bench"]))
    assert progress[0] == BuildProgress(done=0, total=4, items=3, answered=1)  # once loaded, before any row
    assert [p.done for p in progress] == [0, 1, 2, 3, 4]
    rows = read_manifest(out)
    assert len(rows) == 3 and [r["response"] is not None for r in rows] == [True, False, False]
    assert all(r["source"] == "mt-bench" for r in rows)
    assert list(build_set(out, options, ["mt-bench"])) == [BuildProgress(4, 4, 3, 1)]  # all done already
    more = list(build_set(out, BuildOptions(size=3, answered=2, seed=3), ["mt-bench"]))
    assert [p.done for p in more] == [4, 5] and more[-1].total == 5
    # grown without answers (--answered 0): the answers it has are not counted against a total without them
    grown = list(build_set(out, BuildOptions(size=4, answered=0, seed=3), ["mt-bench"]))
    assert [(p.done, p.total) for p in grown] == [(3, 4), (4, 4)]


def test_the_cli_builds_from_the_librarys_default_sources():
    import inspect

    from omni_cli.cli_build import data_build
    from omni_cli.e2e.build_data import DEFAULT_SOURCES

    assert inspect.signature(data_build).parameters["sources"].default == ",".join(DEFAULT_SOURCES)


def test_a_build_of_only_the_held_out_items_makes_the_same_rows(tmp_path, monkeypatch):
    """heldout_only builds exactly the rows of the held-out split of the whole build, in its
    order, answering those among the first `answered`."""
    from omni_cli import data
    from omni_cli.e2e import build_data

    items = [{"id": str(i), "source": "test", "instruction": f"Tell me something about the number {i}, please."}
             for i in range(40)]
    monkeypatch.setattr(data, "load", lambda name: items)
    monkeypatch.setattr(build_data, "training_sources", lambda names: tuple(names))

    class Quiet:
        def speak(self, text, voice):
            return np.zeros(1600, dtype=np.float32)

    monkeypatch.setattr(build_data, "_SPEAKER", Quiet())
    monkeypatch.setattr("omni_cli.llm.ChatLLM.load", staticmethod(lambda llm=None: None))
    monkeypatch.setattr("omni_cli.llm.answer_texts", lambda chat, texts, gen, batch=1: [f"A: {t}" for t in texts])
    options = BuildOptions(size=40, answered=20, heldout_fraction=0.3, seed=4)
    list(build_set(tmp_path / "all", options, ("test",)))
    list(build_set(tmp_path / "held", options, ("test",), heldout_only=True))
    whole = read_manifest(tmp_path / "all", split="heldout")
    held = read_manifest(tmp_path / "held")
    assert [r["id"] for r in held] == [r["id"] for r in whole] and 0 < len(held) < 40
    assert [r.get("response") for r in held] == [r.get("response") for r in whole]
    assert any(r.get("response") for r in held) and not all(r.get("response") for r in held)


def test_gpu_stage2_kit_keeps_every_item_and_adopt_swaps_only_the_decoder(peaked_omni, tmp_path):
    """evals.gpu_stage2: the kit's packed ids and units are each item's own (the system prompt
    stored once, an item without units left out); `--adopt` replaces the decoder and nothing else."""
    from safetensors.torch import load_file, save_file

    from evals.gpu_stage2 import _pack, _unpack, adopt
    from omni_cli.e2e.train import _answer_ids

    model = load_omni(peaked_omni)
    items = [{"instruction": "Tell me about the moon.", "response": "the moon is bright"},
             {"instruction": "Why?", "response": "42"},  # no letters: no units, left out
             {"instruction": "Say something long about birds and cats.", "response": "birds can fly high"},
             {"instruction": "List two.", "response": "Two:\n1. **Cats**\n2. Dogs"}]  # the decoder gets no markdown
    packed = _unpack(_pack(model, Letters(), items))
    assert len(packed) == 3
    system = model.config.prompt.system
    tok = model.llm.tokenizer
    for (prompt, answer, units, said), item in zip(packed, [items[0], items[2], items[3]]):
        chat = [{"role": "system", "content": system}, {"role": "user", "content": item["instruction"]}]
        assert prompt.tolist() == model.llm.chat_ids(chat)[0].tolist()
        assert answer.tolist() == _answer_ids(model, item["response"])
        text = tok.decode(answer[said].tolist(), skip_special_tokens=True)
        assert " ".join(text.split()) == ("Two: Cats Dogs" if "Cats" in item["response"] else item["response"])
        assert units.tolist() == Letters().text_to_units(text) and said.sum() < len(said) * ("Cats" in item["response"]) + len(said) + 1
    assert not packed[2][3].all() and packed[0][3].all()
    # the embeddings the decoder reads there: `said_token_id`'s (":**" -> ":"), the LLM's states of the tokens as written
    from evals.gpu_stage2 import said_ids

    moon = tok("the moon", add_special_tokens=False).input_ids
    model._said_ids[moon[-1]] = moon[0]  # as if "moon" were said as "the"
    kit = _pack(model, Letters(), items)
    assert kit["said_ids"].tolist() == [[moon[-1], moon[0]]]
    table = said_ids(kit, len(tok))
    assert table[torch.tensor(moon)].tolist() == moon[:-1] + [moon[0]] and table[moon[1]] == moon[1]
    assert said_ids({}, len(tok)).equal(torch.arange(len(tok)))  # a kit made before them

    decoder = {k: v + 1.0 for k, v in model.speech_generator.state_dict().items()}
    save_file(decoder, str(tmp_path / "decoder.safetensors"))
    adopt(tmp_path / "decoder.safetensors", peaked_omni, tmp_path / "adopted")
    # a base reading its units with a unit LM: the adopted model has it too
    from omni_cli.e2e.checkpoint import save_omni
    from omni_cli.e2e.unit_lm import UnitNgram

    with_lm = load_omni(peaked_omni)
    k = with_lm.config.speech_decoder.num_units
    with_lm.set_unit_reading(UnitNgram.fit([list(range(k))], order=2, num_units=k), beam=4, lm="unit_lm.npz", lm_weight=0.5)
    save_omni(with_lm, tmp_path / "with-lm")
    adopt(tmp_path / "decoder.safetensors", tmp_path / "with-lm", tmp_path / "adopted-lm")
    assert load_omni(tmp_path / "adopted-lm").speech_generator.unit_lm is not None
    before, after = load_file(str(peaked_omni / "model.safetensors")), load_file(str(tmp_path / "adopted" / "model.safetensors"))
    assert before.keys() == after.keys()
    for k in before:
        if k.startswith("speech_generator."):
            torch.testing.assert_close(after[k], decoder[k.split(".", 1)[1]].to(after[k].dtype))
        else:
            assert torch.equal(after[k], before[k]), k
    assert load_omni(tmp_path / "adopted").speech_generator is not None
    bad = {k: v for k, v in decoder.items() if not k.startswith("layers.0.")}
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(SystemExit, match="differ"):
        adopt(tmp_path / "bad.safetensors", peaked_omni, tmp_path / "bad")
    misshapen = {**decoder, "output_proj.bias": torch.zeros(len(decoder["output_proj.bias"]) + 1)}
    save_file(misshapen, str(tmp_path / "misshapen.safetensors"))
    with pytest.raises(SystemExit, match="does not fit"):
        adopt(tmp_path / "misshapen.safetensors", peaked_omni, tmp_path / "misshapen")
    assert not (tmp_path / "misshapen" / "model.safetensors").exists()
    # a run that resampled the decoder writes its config beside it
    wide = model.speech_generator.resampled(model.speech_generator.config.upsample + 3)
    (tmp_path / "wide").mkdir()
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, str(tmp_path / "wide" / "decoder.safetensors"))
    (tmp_path / "wide" / "decoder.json").write_text(json.dumps(dataclasses.asdict(wide.config)))
    adopt(tmp_path / "wide" / "decoder.safetensors", peaked_omni, tmp_path / "wide_model")
    assert load_omni(tmp_path / "wide_model").speech_generator.config.upsample == wide.config.upsample
