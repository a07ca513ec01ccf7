"""An LLM judge of answers: each answer scored 1-5 for how well it helps with the question.

The judge is any chat model: a local transformers one (a hub id, a local folder, or a registry
name such as the embedded `smollm2-135m-instruct`, which is far too small to judge well and is
only the offline fallback), or a model behind an OpenAI-compatible endpoint (`--judge-url`,
e.g. a local vLLM or llama.cpp server; the key from OMNI_JUDGE_API_KEY or OPENAI_API_KEY).
The prompt is ours: the question as spoken (its reference transcript, or what the cascade
heard), the answer, a 1-5 scale with what each point means, and a request for the number
alone; the first digit 1-5 of the reply is the score (none: unscored). Greedy decoding, so a
local judge gives the same score to the same answer.

Scores go to `judge.jsonl` beside `results.jsonl` (one line per item and condition, with the
judge's name), so a run is judged once, resumably, and `evaluate.write_reports` joins them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from omni_cli.audio import shown
from omni_cli.errors import InputError, ModelNotFoundError

JUDGE_FILE = "judge.jsonl"

SYSTEM = "You grade the answers of a voice assistant. You are strict, fair and brief."
PROMPT = """A user asked a voice assistant a question out loud. Grade the assistant's answer.

Question: {question}

Answer: {answer}

Scale:
1 = off topic, wrong, or no answer at all
2 = on topic but mostly unhelpful or mostly wrong
3 = partly helpful: some of what was asked, or with mistakes
4 = helpful and correct, with small gaps
5 = fully answers the question, correct and clear

Reply with one number from 1 to 5 and nothing else."""


def parse_score(reply: str) -> int | None:
    """The first digit 1-5 standing alone in the judge's reply (None if there is none)."""
    match = re.search(r"(?<!\d)([1-5])(?!\d)", reply)
    return int(match.group(1)) if match else None


@dataclass
class Judge:
    name: str
    _ask: object  # (system, user) -> reply text

    def score(self, question: str, answer: str) -> tuple[int | None, str]:
        """(score 1-5 or None, the judge's raw reply)."""
        if not answer.strip():
            return 1, ""
        reply = self._ask(SYSTEM, PROMPT.format(question=question.strip(), answer=answer.strip()))
        return parse_score(reply), reply.strip()[:200]


def load_judge_model(model: str, url: str | None = None, device: str = "cpu") -> Judge:
    if url:
        return Judge(f"{model}@{url}", _endpoint(model, url))
    from omni_cli.llm import ChatLLM, GenerationOptions, generate_batch

    llm = ChatLLM.load(model, device=device)
    options = GenerationOptions(max_new_tokens=8)

    def ask(system: str, user: str) -> str:
        ids = llm.chat_ids([{"role": "system", "content": system}, {"role": "user", "content": user}])
        return generate_batch(llm, [ids], options)[0]

    return Judge(model, ask)


def _endpoint(model: str, url: str):
    import urllib.error
    import urllib.request

    key = os.environ.get("OMNI_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
    endpoint = url.rstrip("/") + ("" if url.rstrip("/").endswith("/chat/completions") else "/chat/completions")

    def ask(system: str, user: str) -> str:
        body = json.dumps({"model": model, "temperature": 0, "max_tokens": 8,
                           "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]})
        request = urllib.request.Request(endpoint, data=body.encode(), method="POST",
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {key}"} if key else {})})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                reply = json.load(response)
        except urllib.error.HTTPError as exc:
            raise ModelNotFoundError(f"judge endpoint {endpoint}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise ModelNotFoundError(f"judge endpoint {endpoint}: {getattr(exc, 'reason', exc)}") from None
        except json.JSONDecodeError:
            raise ModelNotFoundError(f"judge endpoint {endpoint}: the reply is not JSON") from None
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise ModelNotFoundError(f"judge endpoint {endpoint}: not an OpenAI-style chat reply") from None

    return ask


def question_of(row: dict, rows_of_item: list[dict]) -> str | None:
    """The question an answer is judged against: the reference transcript, else what the cascade heard."""
    if row.get("reference"):
        return row["reference"]
    cascade = next((r for r in rows_of_item if r["mode"] == "cascade" and r.get("transcript")), None)
    return cascade["transcript"] if cascade else None


def read_scores(out: Path) -> dict[tuple[str, str], dict]:
    """(id, condition) -> the judge's line, from out/judge.jsonl (a later line wins)."""
    path = out / JUDGE_FILE
    scores: dict[tuple[str, str], dict] = {}
    if path.is_file():
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                scores[(row["id"], row["condition"])] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                if number == len(lines):
                    continue  # cut off by a kill: judged again
                raise InputError(f"{shown(path)}:{number}: not a line of omni's judge") from None
    return scores


def judge_run(out: Path, judge: Judge, rows: list[dict]):
    """Score every finished answer in `rows` that out/judge.jsonl has no score from this judge
    for; appends each score as it comes and yields (done, total)."""
    done = {k for k, v in read_scores(out).items() if v.get("judge") == judge.name}
    by_item: dict[str, list[dict]] = {}
    for r in rows:
        by_item.setdefault(r["id"], []).append(r)
    todo = [r for r in rows if not r.get("error") and (r["id"], r["condition"]) not in done]
    with open(out / JUDGE_FILE, "a", encoding="utf-8") as f:
        for n, r in enumerate(todo, 1):
            question = question_of(r, by_item[r["id"]])
            score, reply = (None, "no question to judge against") if question is None else judge.score(question, r.get("text") or "")
            f.write(json.dumps({"id": r["id"], "condition": r["condition"], "judge": judge.name, "score": score,
                                "reply": reply}, ensure_ascii=False) + "\n")
            f.flush()
            yield n, len(todo)
