"""Batch evaluation: audio items through the cascade and end-to-end pipelines, measured side by side.

An item is an audio file with an optional reference transcript and reference answer: from a
folder (a `.txt` beside an audio file is its transcript), a JSONL/TSV manifest, or a built-in
bench (`omni_cli.benches`). A condition is one pipeline setting: `cascade`, or `e2e@OMEGA` for
each end-to-end chunk size. `Evaluator.run_item` runs an item through its conditions and gives
one row per condition: the latency figures of the event stream (`events.latency_metrics`), the
WER of what was heard against the reference (the cascade's ASR transcript; for e2e, the model
itself asked to repeat what was said, as `omni transcribe --asr-backend e2e` does), the ASR-WER
(the answer text against a Whisper transcript of the spoken answer), words per second and
answer length, or the `error` that stopped it.

`EvalRun` is one run in its folder: `run_tasks` runs the items here, in N worker processes, or
on a Ray cluster, yielding each item's rows as it finishes; `ResultsFile` appends them to
`results.jsonl`, and `write_reports` rebuilds summary.json, results.csv, the plots, report.md
and report.html from that file alone.
Knows nothing about the CLI.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from omni_cli.audio import MAX_DURATION_S, SAMPLE_RATE, find_audio_files, load_audio, opus_bytes, resample, shown
from omni_cli.cache import atomic_file
from omni_cli.errors import ConfigError, InputError, OmniError
from omni_cli.events import Response, collect, latency_metrics
from omni_cli.metrics import as_spoken, wer_counts
from omni_cli.pipelines import MODES, PipelineConfig, load_pipeline, omega_of, with_omega

RESULTS = "results.jsonl"
MANIFEST_SUFFIXES = (".jsonl", ".tsv")


# -- items ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalItem:
    id: str  # stable across runs: results are resumed by (id, condition)
    audio: str  # path of the spoken request
    reference: str | None = None  # what the audio says (scores the ASR transcript)
    answer: str | None = None  # a reference answer (recorded beside the result, for judging)
    problem: str | None = None  # why the item cannot run at all (a missing path, an empty folder)


def read_manifest(path: Path) -> list[EvalItem]:
    """Items of a manifest: JSONL objects with `audio` (or `path`), optional `text` (or `ref`,
    `reference`), `answer` and `id`; or TSV lines `path[<TAB>transcript[<TAB>answer]]`.
    Paths are relative to the manifest's folder, as for `omni transcribe --ref`."""
    from omni_cli.transcribe import manifest_rows

    items = []
    for row in manifest_rows(path):
        if not row["audio"]:
            raise InputError(f"{shown(path)}:{row['n']}: no audio path (expected 'path<TAB>transcript<TAB>answer' or JSON with 'audio')")
        items.append(EvalItem(str(row["id"] or row["audio"]), str(path.parent / row["audio"]), row["text"] or None, row["answer"] or None))
    return items


def items_from_paths(paths: list[Path]) -> list[EvalItem]:
    """Items from folders (recursive; a `.txt` beside each file is its transcript), audio files
    and manifests. A missing path or a folder without audio becomes a failed item; no audio at
    all is an error."""
    from omni_cli.transcribe import reference_for

    items: list[EvalItem] = []
    others = []
    for p in paths:
        if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            items += read_manifest(p)
        else:
            others.append(p)
    files, problems = find_audio_files(others) if others else ([], [])
    for f in files:  # the id is printable; the audio path keeps the name's own bytes (os.fsdecode)
        try:
            items.append(EvalItem(shown(f), os.fsdecode(f), reference_for(f, None)))
        except InputError as exc:
            items.append(EvalItem(shown(f), os.fsdecode(f), problem=str(exc)))
    if not items:
        raise InputError("no audio found in " + ", ".join(shown(p) for p in paths))
    items += [EvalItem(shown(p), os.fsdecode(p), problem=reason) for p, reason in problems]
    unique: dict[str, EvalItem] = {}
    for item in items:  # the same file named twice on the command line runs once
        unique.setdefault(item.id, item)
    return list(unique.values())


# -- configuration ------------------------------------------------------------------------------


def condition_label(mode: str, omega: int | None = None) -> str:
    return "cascade" if mode == "cascade" else f"e2e@{'all' if omega is None else omega}"


def parse_modes(text: str) -> tuple[str, ...]:
    modes = tuple(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    for m in modes:
        if m not in MODES:
            raise ConfigError(f"unknown mode '{m}' in --modes: choose from {', '.join(MODES)}")
    if not modes:
        raise ConfigError(f"--modes names no mode: choose from {', '.join(MODES)}")
    return modes


def parse_omegas(text: str, e2e_model: str | None = None, vocoder: str | None = None) -> tuple[int | None, ...]:
    from omni_cli.e2e.load import parse_omega

    omegas = tuple(dict.fromkeys(parse_omega(o, e2e_model, vocoder) for o in text.split(",") if o.strip()))
    if not omegas:
        raise ConfigError("--omega names no chunk size: give numbers of units and/or 'all', e.g. 10,20,40,all")
    return omegas


@dataclass(frozen=True)
class EvalConfig:
    """What each worker loads, once (plain data: it travels to worker processes and Ray actors)."""

    modes: tuple[str, ...] = ("cascade",)
    omegas: tuple[int | None, ...] = (40,)  # e2e chunk sizes in units (None: vocode once, at the end)
    asr_model: str | None = None  # cascade Whisper (None: the embedded tiny.en)
    asr_backend: str = "faster-whisper"
    beam_size: int = 5
    llm: str | None = None  # cascade LLM (None: the embedded SmolLM2)
    tts: str = "piper"
    voice: str | None = None
    e2e_model: str | None = None  # None: the offline default
    vocoder: str | None = None  # None: the e2e model's own
    e2e_beam: int | None = None  # a ctc adaptor's hearing beam (None: the model's own)
    max_new_tokens: int = 160
    max_sentences: int = 3  # the same spoken-length budget for every mode (0: no limit)
    asr_wer: bool = True  # transcribe each spoken answer for ASR-WER
    judge_asr: str | None = None  # Whisper for ASR-WER (None: asr_model), decoded deterministically
    device: str = "cpu"
    max_duration_s: float = MAX_DURATION_S
    threads: int | None = None  # CPU threads per worker (None: the libraries' defaults)
    answers_dir: str | None = None  # where each spoken answer is kept (Ogg/Opus), for the HTML report
    naturalness: bool = True  # DNSMOS of each spoken answer
    llm_dtype: str | None = None  # both pipelines' LLM weights (None: the answering default, `llm.inference_dtype`)

    def conditions(self) -> list[str]:
        return [condition_label(m, o) for m in self.modes for o in (self.omegas if m == "e2e" else (None,))]

    def pipeline_config(self) -> PipelineConfig:
        return PipelineConfig(asr_model=self.asr_model, asr_backend=self.asr_backend, beam_size=self.beam_size,
                              threads=self.threads, llm=self.llm, tts=self.tts, voice=self.voice, e2e_model=self.e2e_model,
                              vocoder=self.vocoder, e2e_beam=self.e2e_beam, omega=self.omegas[0], max_new_tokens=self.max_new_tokens,
                              max_sentences=self.max_sentences, device=self.device, llm_dtype=self.llm_dtype)


# -- one item ----------------------------------------------------------------------------------


def score(response: Response, reference: str | None, heard: str | None) -> dict:
    """Metrics of one finished run: latencies from its events' timestamps, the WER of its transcript
    against `reference`, the ASR-WER of its text against `heard` (a Whisper transcript of the
    spoken answer), words per second of the spoken answer and the answer's length in words."""
    m = latency_metrics(response.events)
    words = len(response.text.split())
    m["answer_words"] = words
    m["wps"] = words / m["audio_s"] if m["audio_s"] else None
    counts = {}
    if reference is not None and response.transcript is not None:
        counts["wer"] = wer_counts(reference, response.transcript)
    if heard is not None and response.text.strip():
        counts["asr_wer"] = wer_counts(as_spoken(response.text), as_spoken(heard))
    for name, (edits, n) in counts.items():
        m[name] = edits / n if n else None
    return {
        "transcript": response.transcript,
        "text": response.text,
        "answer_heard": heard,
        "metrics": {k: (v if v is None or isinstance(v, int) else round(float(v), 4)) for k, v in m.items()},
        "counts": {k: list(v) for k, v in counts.items()},
    }


class Evaluator:
    """The loaded pipelines (one per condition; the e2e conditions share one model) and the
    Whisper that transcribes spoken answers for ASR-WER."""

    def __init__(self, pipelines: dict, judge=None, max_duration_s: float | None = MAX_DURATION_S,
                 answers_dir: Path | None = None, naturalness: bool = False):
        self.pipelines, self.judge, self.max_duration_s = pipelines, judge, max_duration_s
        self.naturalness = naturalness  # DNSMOS of each spoken answer
        self.answers_dir = answers_dir  # spoken answers are kept here (Ogg/Opus) when set

    @classmethod
    def load(cls, config: EvalConfig) -> Evaluator:
        from omni_cli.asr import load_judge

        if config.threads is not None:
            import torch

            torch.set_num_threads(config.threads)
        pipelines = {}
        if "cascade" in config.modes:
            pipelines["cascade"] = load_pipeline("cascade", config.pipeline_config())
        if "e2e" in config.modes:
            first = load_pipeline("e2e", config.pipeline_config())
            for omega in config.omegas:  # one model, one condition per chunk size
                pipelines[condition_label("e2e", omega)] = with_omega(first, omega)
        judge = None
        if config.asr_wer:
            judge = load_judge(config.judge_asr or config.asr_model, config.asr_backend, config.beam_size, config.device,
                               config.threads)
        return cls(pipelines, judge, config.max_duration_s, Path(config.answers_dir) if config.answers_dir else None,
                   config.naturalness)

    def run_item(self, item: EvalItem, conditions: list[str] | None = None) -> list[dict]:
        """One row per condition; a failure is a row with its `error`, never an exception
        (KeyboardInterrupt excepted)."""
        audio, error = None, item.problem
        if error is None:
            try:
                audio = load_audio(item.audio, max_duration_s=self.max_duration_s)
            except OmniError as exc:
                error = str(exc)
        rows = []
        for condition in conditions or list(self.pipelines):
            pipeline = self.pipelines[condition]
            omega = omega_of(pipeline)
            row = {"id": item.id, "condition": condition, "mode": pipeline.mode, "omega": omega, "audio": item.audio,
                   "reference": item.reference, "reference_answer": item.answer}
            if error is not None:
                rows.append({**row, "error": error})
                continue
            try:
                response = collect(pipeline.run(audio), pipeline.sample_rate)
                if pipeline.mode == "e2e" and item.reference is not None:
                    # what the end-to-end model heard: itself, asked to repeat what was said
                    response = dataclasses.replace(response, transcript=pipeline.model.transcribe(audio))
                heard = None
                if self.judge is not None:
                    reply = resample(response.audio, response.sample_rate, SAMPLE_RATE)
                    heard = self.judge.transcribe(reply).text.strip() if reply.size else ""
                kept = self._keep_answer(item.id, condition, response)
                scored = score(response, item.reference, heard)
                if self.naturalness and response.audio.size:
                    from omni_cli.naturalness import dnsmos

                    scored["metrics"].update(dnsmos(response.audio, response.sample_rate))
                rows.append({**row, **scored, "answer_audio": kept, "error": None})
            except OmniError as exc:
                rows.append({**row, "error": str(exc)})
            except Exception as exc:  # noqa: BLE001 - one bad item never stops the batch
                rows.append({**row, "error": f"internal error: {type(exc).__name__}: {exc}"})
        return rows

    def _keep_answer(self, item_id: str, condition: str, response: Response) -> str | None:
        """The spoken answer as Ogg/Opus under answers_dir; its path relative to the results folder."""
        if self.answers_dir is None or not response.audio.size:
            return None
        path = self.answers_dir / safe_name(condition) / f"{safe_name(item_id)}.ogg"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_opus(path, response.audio, response.sample_rate)
        return path.relative_to(self.answers_dir.parent).as_posix()


def safe_name(text: str) -> str:
    """A file name for any id: its safe characters and a hash (so different ids never collide)."""
    import hashlib
    import re

    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', text)[-60:].lstrip('.')}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def write_opus(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(opus_bytes(audio, sample_rate))


# -- running many items ---------------------------------------------------------------------------

Task = tuple[EvalItem, list[str]]


def pending(items: Iterable[EvalItem], conditions: list[str], done: set[tuple[str, str]]) -> list[Task]:
    """Each item with the conditions it still lacks (items with none left are skipped)."""
    return [(item, todo) for item in items if (todo := [c for c in conditions if (item.id, c) not in done])]


def run_tasks(tasks: list[Task], config: EvalConfig, workers: int | None = None, ray_address: str | None = None,
              evaluator: Evaluator | None = None) -> Iterator[list[dict]]:
    """Each task's rows as it finishes: here (loading `config` unless `evaluator` is given), in
    `workers` spawned processes that each load the models once, or on Ray at `ray_address` with
    `workers` actors (default: one per cluster CPU)."""
    if not tasks:
        return
    if ray_address:
        yield from _run_ray(tasks, config, ray_address, workers)
    elif workers and workers > 1:
        yield from _run_processes(tasks, config, workers)
    else:
        evaluator = evaluator or Evaluator.load(config)
        for item, conditions in tasks:
            yield evaluator.run_item(item, conditions)


_worker: Evaluator | OmniError | None = None


def _init_worker(config: EvalConfig) -> None:
    global _worker
    import threading

    from tqdm import tqdm

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    tqdm.set_lock(threading.RLock())  # not tqdm's process-shared lock, which a stopped worker would leak
    try:
        _worker = Evaluator.load(config)
    except OmniError as exc:  # reported by the first task, so the parent shows the one-line reason
        _worker = exc


def _work(task: Task) -> list[dict]:
    if isinstance(_worker, OmniError):
        raise _worker
    assert _worker is not None
    return _worker.run_item(*task)


def _run_processes(tasks: list[Task], config: EvalConfig, workers: int) -> Iterator[list[dict]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    workers = min(workers, len(tasks))
    if config.threads is None:
        config = replace(config, threads=max(1, (os.cpu_count() or 1) // workers))
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(config,))
    try:
        for future in as_completed([pool.submit(_work, task) for task in tasks]):
            try:
                yield future.result()
            except BrokenProcessPool:
                raise OmniError("a worker process died (out of memory?): the finished items are kept; "
                                "continue with --resume, with fewer --workers") from None
    except BaseException:  # Ctrl-C, a worker's load error, or the consumer stopped: stop at once
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            p.terminate()
        pool.shutdown(wait=True)  # reap them
        raise
    pool.shutdown()


class _RayEvaluator:
    """A Ray actor: loads the models once, then runs the tasks it is given."""

    def __init__(self, config: EvalConfig):
        try:
            self.evaluator: Evaluator | OmniError = Evaluator.load(config)
        except OmniError as exc:
            self.evaluator = exc

    def run(self, task: Task) -> list[dict]:
        if isinstance(self.evaluator, OmniError):
            raise self.evaluator
        return self.evaluator.run_item(*task)


def _run_ray(tasks: list[Task], config: EvalConfig, address: str, workers: int | None) -> Iterator[list[dict]]:
    """Shard the tasks over `workers` actors (default: one per cluster CPU). The audio paths must
    be readable where the actors run (shared storage); the rows come back here."""
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'omni[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=False)
    actors = []
    try:
        n = workers or int(ray.cluster_resources().get("CPU", 1))
        actor = ray.remote(num_cpus=1)(_RayEvaluator)
        one_cpu = config if config.threads is not None else replace(config, threads=1)
        actors = [actor.remote(one_cpu) for _ in range(max(1, min(n, len(tasks))))]
        try:
            yield from ActorPool(actors).map_unordered(lambda a, task: a.run.remote(task), tasks)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, OmniError):
                raise exc.cause from None
            raise
        except ray.exceptions.RayActorError:
            raise OmniError("a Ray actor died (out of memory?): the finished items are kept; continue with --resume") from None
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()


# -- the results file ----------------------------------------------------------------------------


def read_results(out: Path) -> list[dict]:
    """The rows of `out/results.jsonl`, the last one of each (id, condition); a line cut off by a
    killed run is ignored (that item runs again on --resume)."""
    path = out / RESULTS
    rows: dict[tuple[str, str], dict] = {}
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise InputError(f"{shown(path)}: not UTF-8 text at byte {exc.start}; it is not a results file of omni eval") from exc
        for n, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines):
                    continue  # cut off by a kill
                raise InputError(f"{shown(path)}:{n}: not valid JSON; it is not a results file of omni eval") from None
            if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not isinstance(row.get("condition"), str):
                raise InputError(f"{shown(path)}:{n}: a results row needs 'id' and 'condition'; it is not a results file of omni eval")
            rows[(row["id"], row["condition"])] = row
    return list(rows.values())


def _json_line(row: dict) -> str:
    """One JSON line, UTF-8 where it can be; a path whose name is not UTF-8 keeps its bytes as
    escapes (ASCII JSON), so it reads back to the same path."""
    line = json.dumps(row, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(row)
    return line + "\n"


class ResultsFile:
    """`out/results.jsonl`, appended one item at a time and flushed, so a killed run keeps
    everything finished so far."""

    def __init__(self, out: Path, resume: bool = False):
        path = out / RESULTS
        if path.is_file() and path.stat().st_size and not resume:
            raise ConfigError(f"{shown(out)} already holds results: add --resume to continue that run, or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        if path.is_file():  # drop a last line cut off by a kill, so appended rows start on a new line
            data = path.read_bytes()
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
        self.done = {(r["id"], r["condition"]) for r in read_results(out)}
        self._file = open(path, "a", encoding="utf-8")

    def append(self, rows: list[dict]) -> None:
        self._file.write("".join(_json_line(r) for r in rows))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class EvalRun:
    """One run of `omni eval` in its folder, as a context manager: the items still to do
    (`--resume` skips the finished ones), each item's rows appended to results.jsonl as it
    finishes, and on leaving the reports rebuilt (`summary`), also after Ctrl-C or an error
    once anything finished.

        with EvalRun(out, items, config, resume) as run:
            run.start(workers)              # loads the models here unless workers run them
            for rows in run.rows(): ...
        run.summary
    """

    def __init__(self, out: Path, items: list[EvalItem], config: EvalConfig, resume: bool = False):
        self.out, self.config = out, config
        self._results = ResultsFile(out, resume)
        self.tasks = pending(items, config.conditions(), self._results.done)
        self.skipped = len(items) - len(self.tasks)  # finished in an earlier run
        self.summary: dict | None = None
        self._workers: int | None = None
        self._ray: str | None = None
        self._evaluator: Evaluator | None = None

    def start(self, workers: int | None = None, ray_address: str | None = None, evaluator: Evaluator | None = None) -> None:
        """Where the items run: here (loading the models now, unless `evaluator` is given), in
        `workers` processes, or on the Ray cluster at `ray_address`."""
        self._workers, self._ray = workers, ray_address
        local = not ray_address and (workers or 1) == 1
        if local and self.tasks:
            self._evaluator = evaluator or Evaluator.load(self.config)

    def rows(self) -> Iterator[list[dict]]:
        """Each task's rows as it finishes, already saved to results.jsonl."""
        for rows in run_tasks(self.tasks, self.config, self._workers, self._ray, self._evaluator):
            self._results.append(rows)
            yield rows

    def __enter__(self) -> EvalRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._results.close()
        if exc_type in (None, KeyboardInterrupt) or read_results(self.out):
            self.summary = write_reports(self.out)


# -- summary and reports ---------------------------------------------------------------------------

# (metric, label, scale, decimals): the rows of the side-by-side table, in order
TABLE_METRICS = (
    ("asr_s", "ASR time (s)", 1, 3), ("first_token_s", "first text token (s)", 1, 3),
    ("first_audio_latency_s", "first audio (s)", 1, 3), ("total_s", "total time (s)", 1, 3),
    ("rtf", "real-time factor", 1, 3), ("wer", "WER of what was heard (%)", 100, 1),
    ("asr_wer", "ASR-WER of the spoken answer (%)", 100, 1), ("wps", "spoken words per second", 1, 2),
    ("answer_words", "answer length (words)", 1, 1), ("audio_s", "spoken answer (s)", 1, 2),
    ("longest_pause_s", "longest wait between chunks (s)", 1, 2), ("pauses_over_1s", "waits over 1 s between chunks", 1, 1),
    ("dnsmos_ovrl", "naturalness, DNSMOS overall (1-5)", 1, 2), ("dnsmos_p808", "naturalness, DNSMOS P.808 (1-5)", 1, 2),
    ("judge_score", "judge score (1-5)", 1, 2),
)


# each figure's definition, stated once (report.md, report.html; the README repeats them)
DEFINITIONS = {
    "first text token (s)": "from the end of the question (its last speech sample) to the first text of the answer",
    "first audio (s)": "from the end of the question to the first piece of the spoken answer being ready to play",
    "total time (s)": "from the end of the question to the whole answer, text and audio, being done",
    "real-time factor": "total time / length of the spoken answer (below 1: faster than it plays)",
    "WER of what was heard (%)": "word error rate against the reference transcript of what the mode heard: the cascade's "
                                 "Whisper transcript; for e2e, the speech LLM itself asked to repeat what was said",
    "ASR-WER of the spoken answer (%)": "word error rate of a Whisper transcript of the spoken answer (a deterministic "
                                        "judge) against the answer's own text as spoken (no markdown or list numbers, the words between "
                                        "brackets kept): how intelligible the speech is",
    "corpus WER / ASR-WER (%)": "the same, as total edits over total reference words of all items",
    "answer chrF vs the cascade's answer": "character n-gram F-score (sacrebleu chrF, 0-100) of an e2e answer against the "
                                            "cascade's answer to the same question: how close it comes to what the same "
                                            "LLM says when it reads a transcript (where the LLM answers in bfloat16, the "
                                            "pipelines' paths alone change answers: --llm-dtype float32 leaves only what "
                                            "each heard)",
    "answer chrF vs the reference answer": "the same against the manifest's reference answer, where there is one",
    "spoken words per second": "answer words / length of the spoken answer",
    "answer length (words)": "words in the answer's text",
    "longest wait between chunks (s)": "played as it arrives, each chunk as soon as it is ready and the previous one "
                                       "has finished: the longest silence the listener waits between chunks (a "
                                       "streaming artifact, not a pause in the speech)",
    "waits over 1 s between chunks": "how many such waits last over 1 s",
    "naturalness, DNSMOS overall / P.808 (1-5)": "Microsoft's DNSMOS (speechmos package) on the spoken answer: the P.835 "
                                                  "overall score and the P.808 MOS; trained on noisy human speech, so a "
                                                  "relative figure between modes, not what listeners would give",
    "judge score (1-5)": "with `--judge MODEL`: an LLM's grade of how well the answer helps with the question (the "
                         "reference transcript, else what the cascade heard), 1 off topic or wrong to 5 fully answered "
                         "(omni_cli/judge.py holds the prompt)",
}


def scored_rows(out: Path) -> list[dict]:
    """out/results.jsonl's rows, each finished one with its judge score (out/judge.jsonl) among its metrics."""
    from omni_cli.judge import read_scores

    rows = read_results(out)
    scores = read_scores(out)
    for r in rows:
        score = scores.get((r["id"], r["condition"]))
        if score is not None and score.get("score") is not None and not r.get("error"):
            r["metrics"] = {**r.get("metrics", {}), "judge_score": score["score"]}
            r["judge"] = score.get("judge")
    return rows


def stats(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    return {"n": int(a.size), "median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "mean": float(a.mean())}


def answer_chrf(rows: list[dict], condition: str) -> dict[str, float | None]:
    """Answer quality of `condition`, as corpus chrF (sacrebleu): against the cascade's answer to
    the same items (the same LLM reading a transcript: how close an end-to-end answer comes to
    it), and against the manifest's reference answers where there are some."""
    from sacrebleu.metrics import CHRF

    ok = {r["id"]: r for r in rows if r["condition"] == condition and not r.get("error")}
    cascade = {r["id"]: r for r in rows if r["condition"] == "cascade" and not r.get("error")}
    out: dict[str, float | None] = {"chrf_vs_cascade": None, "chrf_vs_reference_answer": None}
    if condition != "cascade" and (both := [i for i in ok if i in cascade and cascade[i].get("text")]):
        out["chrf_vs_cascade"] = CHRF().corpus_score([ok[i].get("text") or "" for i in both],
                                                     [[cascade[i]["text"] for i in both]]).score
    if with_answer := [i for i in ok if ok[i].get("reference_answer")]:
        out["chrf_vs_reference_answer"] = CHRF().corpus_score([ok[i].get("text") or "" for i in with_answer],
                                                              [[ok[i]["reference_answer"] for i in with_answer]]).score
    return out


def summarize(rows: list[dict]) -> dict:
    """Per condition: items, failures (counted, with reasons), median/p90/mean of every metric,
    the corpus WER and ASR-WER (total edits / total reference words) and the answers' chrF
    against the cascade's and the reference answers (`answer_chrf`)."""
    conditions: dict[str, dict] = {}
    for condition in dict.fromkeys(r["condition"] for r in rows):
        mine = [r for r in rows if r["condition"] == condition]
        ok = [r for r in mine if not r.get("error")]
        keys = dict.fromkeys(k for r in ok for k in r["metrics"])
        metrics = {k: stats(v) for k in keys if (v := [r["metrics"][k] for r in ok if r["metrics"].get(k) is not None])}
        corpus = {}
        for name in ("wer", "asr_wer"):
            pairs = [r["counts"][name] for r in ok if name in r.get("counts", {})]
            words = sum(n for _, n in pairs)
            corpus[f"corpus_{name}"] = sum(e for e, _ in pairs) / words if words else None
        conditions[condition] = {
            "mode": mine[0]["mode"], "omega": mine[0].get("omega"), "items": len(mine), "ok": len(ok),
            "failed": len(mine) - len(ok), **corpus, **answer_chrf(rows, condition), "metrics": metrics,
            "failures": [{"id": r["id"], "error": r["error"]} for r in mine if r.get("error")],
        }
    judges = sorted({r["judge"] for r in rows if r.get("judge")})
    judged = sum(1 for r in rows if (r.get("metrics") or {}).get("judge_score") is not None)
    return {"items": len({r["id"] for r in rows}), "rows": len(rows), "conditions": conditions,
            "judges": judges, "judged": judged}


def run_intro(summary: dict) -> str:
    """The reports' first sentences: the run's size, how to read a cell, and the judge if any."""
    text = (f"{summary['items']} items, {summary['rows']} runs. Latencies in seconds from the end of the question; "
            "each summary cell is median / p90 / mean over the items that finished.")
    if summary.get("judges"):
        ok = sum(c["ok"] for c in summary["conditions"].values())
        text += (f" Answers graded 1-5 by the judge {', '.join(summary['judges'])}: {summary['judged']} of {ok} "
                 "finished answers got a score.")
    return text


def table_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The side-by-side table (header, rows): each cell is median / p90 / mean over the items."""
    conds = summary["conditions"]
    header = ["metric (median / p90 / mean)", *conds]
    rows = [["items ok / failed", *(f"{c['ok']} / {c['failed']}" for c in conds.values())]]
    for key, label, scale, digits in TABLE_METRICS:
        if any(key in c["metrics"] for c in conds.values()):
            cells = []
            for c in conds.values():
                s = c["metrics"].get(key)
                cells.append("-" if s is None else " / ".join(f"{s[k] * scale:.{digits}f}" for k in ("median", "p90", "mean")))
            rows.append([label, *cells])
    for key, label, scale in (("corpus_wer", "corpus WER (%)", 100), ("corpus_asr_wer", "corpus ASR-WER (%)", 100),
                              ("chrf_vs_cascade", "answer chrF vs the cascade's answer", 1),
                              ("chrf_vs_reference_answer", "answer chrF vs the reference answer", 1)):
        if any(c.get(key) is not None for c in conds.values()):
            rows.append([label, *("-" if c.get(key) is None else f"{scale * c[key]:.1f}" for c in conds.values())])
    return header, rows


# lower is better for these; higher for chrF; the rest (length, rate) only differ
WER_FIGURES = ("wer", "asr_wer", "corpus_wer", "corpus_asr_wer")  # fractions, shown as percentages
LOWER_IS_BETTER = ("asr_s", "encoder_s", "llm_s", "tts_s", "first_token_s", "first_audio_latency_s", "total_s", "rtf",
                   "longest_pause_s", "pauses_over_1s", *WER_FIGURES)
HIGHER_IS_BETTER = ("chrf_vs_cascade", "chrf_vs_reference_answer", "judge_score", "dnsmos_ovrl", "dnsmos_p808")


def compare_runs(a: Path, b: Path) -> dict:
    """The difference B - A of two eval folders, on the items both finished: per condition both
    have, each metric's median (corpus figures as they are), the delta and whether B is better."""
    rows_a, rows_b = scored_rows(a), scored_rows(b)
    if not rows_a or not rows_b:
        raise InputError(f"{shown(a if not rows_a else b)}: no results.jsonl with results (not an `omni eval --out` folder?)")
    ok = lambda rows: {(r["id"], r["condition"]) for r in rows if not r.get("error")}  # noqa: E731
    common = ok(rows_a) & ok(rows_b)
    if not common:
        raise InputError(f"{shown(a)} and {shown(b)} have no finished item and condition in common")
    sa = summarize([r for r in rows_a if (r["id"], r["condition"]) in common])
    sb = summarize([r for r in rows_b if (r["id"], r["condition"]) in common])
    conditions = {}
    for name in [c for c in sa["conditions"] if c in sb["conditions"]]:
        ca, cb = sa["conditions"][name], sb["conditions"][name]
        figures = {}
        keys = [k for k in ca["metrics"] if k in cb["metrics"]]
        pairs = [(k, ca["metrics"][k]["median"], cb["metrics"][k]["median"]) for k in keys]
        pairs += [(k, ca[k], cb[k]) for k in ("corpus_wer", "corpus_asr_wer", *HIGHER_IS_BETTER)
                  if ca.get(k) is not None and cb.get(k) is not None]
        for key, va, vb in pairs:
            delta = vb - va
            better = None if key not in LOWER_IS_BETTER + HIGHER_IS_BETTER or delta == 0 else (
                (delta < 0) == (key in LOWER_IS_BETTER))
            figures[key] = {"a": va, "b": vb, "delta": delta, "b_better": better}
        conditions[name] = {"items": ca["ok"], "figures": figures}
    return {"a": shown(a), "b": shown(b), "items": len({i for i, _ in common}), "conditions": conditions}


def compare_table(comparison: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a comparison: one row per condition and figure."""
    header = ["condition", "figure", "A", "B", "B - A", ""]
    rows = []
    for name, c in comparison["conditions"].items():
        for key, f in c["figures"].items():
            scale = 100 if key in WER_FIGURES else 1
            mark = {True: "better", False: "worse", None: ""}[f["b_better"]]
            rows.append([name, key, f"{scale * f['a']:.3f}", f"{scale * f['b']:.3f}", f"{scale * f['delta']:+.3f}", mark])
    return header, rows


def write_reports(out: Path) -> dict:
    """Rebuild summary.json, results.csv, latency.png, omega_sweep.png (with e2e results),
    report.md and report.html (with the answers kept in out/answers) from out/results.jsonl
    alone; returns the summary."""
    rows = scored_rows(out)
    summary = summarize(rows)
    with atomic_file(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _write_csv(rows, out / "results.csv")
    plots = _plot_latency(rows, out / "latency.png") + _plot_omega_sweep(summary, out / "omega_sweep.png")
    with atomic_file(out / "report.md") as tmp:
        tmp.write_text(report_markdown(summary, plots), encoding="utf-8")
    from omni_cli.report_html import render

    with atomic_file(out / "report.html") as tmp:
        tmp.write_text(render(summary, rows, out, plots, DEFINITIONS, table_rows(summary), run_intro(summary)), encoding="utf-8")
    return summary


def report_markdown(summary: dict, plots: list[str] = ()) -> str:
    header, rows = table_rows(summary)
    lines = ["# omni eval", "", run_intro(summary), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [""] + [f"![{Path(p).stem}]({p})" for p in plots]
    lines += ["", "## What each figure means", ""] + [f"- **{k}**: {v}" for k, v in DEFINITIONS.items()]
    failures = [(name, f) for name, c in summary["conditions"].items() for f in c["failures"]]
    if failures:
        lines += ["", "## Failed items", ""] + [f"- `{f['id']}` ({name}): {f['error']}" for name, f in failures]
    return "\n".join(lines) + "\n"


def _write_csv(rows: list[dict], path: Path) -> None:
    metric_keys = list(dict.fromkeys([m[0] for m in TABLE_METRICS] + [k for r in rows for k in r.get("metrics", {})]))
    fields = ["id", "condition", "mode", "omega", "error", *metric_keys, "reference", "transcript", "text", "answer_heard", "audio"]
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, **r.get("metrics", {})})


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_latency(rows: list[dict], path: Path) -> list[str]:
    """Box plots of time to first text token and first-audio latency, per condition."""
    ok = [r for r in rows if not r.get("error")]
    conditions = list(dict.fromkeys(r["condition"] for r in ok))
    if not conditions:
        return []
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), dpi=110, sharey=True)
    for ax, key, title in zip(axes, ("first_token_s", "first_audio_latency_s"), ("first text token", "first audio")):
        data = [[r["metrics"][key] for r in ok if r["condition"] == c and r["metrics"].get(key) is not None] for c in conditions]
        ax.boxplot([d or [np.nan] for d in data], showmeans=True)
        ax.set_xticks(range(1, len(conditions) + 1), conditions, rotation=20)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("seconds after the end of the speech")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return [path.name]


def _plot_omega_sweep(summary: dict, path: Path) -> list[str]:
    """Median first-audio latency against corpus ASR-WER: the e2e conditions as a line over Omega,
    the cascade as a reference point."""
    points = {name: (c["metrics"]["first_audio_latency_s"]["median"], 100 * c["corpus_asr_wer"])
              for name, c in summary["conditions"].items()
              if c["corpus_asr_wer"] is not None and "first_audio_latency_s" in c["metrics"]}
    e2e = [n for n in points if summary["conditions"][n]["mode"] == "e2e"]
    if not e2e:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    omega = {n: summary["conditions"][n]["omega"] for n in e2e}
    e2e.sort(key=lambda n: float("inf") if omega[n] == "all" else omega[n])
    ax.plot([points[n][0] for n in e2e], [points[n][1] for n in e2e], "o-", label="e2e")
    for i, n in enumerate(e2e):  # labels alternate above and below, so that close points stay readable
        ax.annotate(f"Ω={omega[n]}", points[n], textcoords="offset points", xytext=(4, 6 if i % 2 == 0 else -12))
    if "cascade" in points:
        ax.plot(*points["cascade"], "s", color="tab:red", label="cascade")
    ax.set_xlabel("first-audio latency, median (s)")
    ax.set_ylabel("ASR-WER (%)")
    ax.set_title("latency vs ASR-WER")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return [path.name]
