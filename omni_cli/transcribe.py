"""Batch transcription: files and folders in, one result per file out, with WER when a
reference exists.

References come from a `.txt` beside each audio file (same stem), or from a manifest
(`--ref`): TSV lines `path<TAB>text`, or JSONL objects with `audio`/`path` and
`text`/`ref`/`reference`; manifest paths are relative to the manifest's folder. A file
that fails is a result with its `error` and the batch goes on. Output writers for txt,
json, srt and vtt. This module knows nothing about the CLI.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omni_cli.asr import ASR, Segment, Transcription, join_segments
from omni_cli.audio import MAX_DURATION_S, SAMPLE_RATE, audio_duration, find_audio_files, iter_audio, load_audio, shown
from omni_cli.errors import InputError, OmniError
from omni_cli.metrics import wer_counts
from omni_cli.vad import has_speech

@dataclass(frozen=True)
class FileResult:
    path: Path
    text: str | None = None
    segments: tuple[Segment, ...] = ()
    duration_s: float | None = None
    seconds: float | None = None  # processing time
    reference: str | None = None
    errors: int | None = None  # word edits against the reference
    ref_words: int | None = None
    error: str | None = None

    @property
    def wer(self) -> float | None:
        if self.errors is None or not self.ref_words:
            return None
        return self.errors / self.ref_words

    def to_json(self) -> dict:
        out: dict = {"path": shown(self.path)}
        if self.error is not None:
            out["error"] = self.error
            return out
        out["text"] = self.text
        out["duration_s"] = round(self.duration_s or 0.0, 3)
        out["seconds"] = round(self.seconds or 0.0, 3)
        out["segments"] = [{"start": round(s.start, 2), "end": round(s.end, 2), "text": s.text.strip()} for s in self.segments]
        if self.reference is not None:
            out["reference"] = self.reference
            out["wer"] = None if self.wer is None else round(self.wer, 4)
        return out


def manifest_rows(path: Path) -> list[dict]:
    """The rows of a manifest of audio files: JSONL objects with `audio` (or `path`), optional
    `text` (or `ref`, `reference`), `answer` and `id`; or TSV lines `path[<TAB>text[<TAB>answer]]`.
    Each row: line number `n`, `audio` (as written, relative to the manifest), `text`, `answer`, `id`."""
    if not path.is_file():
        raise InputError(f"{shown(path)}: manifest not found")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # (a byte-order mark is not content)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{shown(path)}: cannot read the manifest ({type(exc).__name__}; it must be UTF-8 text)") from exc
    rows = []
    ids: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        where = f"{shown(path)}:{n}"
        if line.lstrip().startswith(("{", "[")):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise InputError(f"{where}: expected a JSON object with 'audio', got a {type(row).__name__}")
            audio = _field(row, where, "audio", "path")
            text = _field(row, where, "text", "ref", "reference")
            answer = _field(row, where, "answer")
            key = row.get("id")
            if key is not None and not isinstance(key, (str, int)):
                raise InputError(f"{where}: 'id' must be a string or a number")
            key = None if key is None else str(key)
        else:
            audio, text, answer, *_ = [*line.split("\t"), None, None]
            key = None
        if key is not None:
            if key in ids:
                raise InputError(f"{where}: id '{key}' is used twice (also on line {ids[key]}); ids must be unique")
            ids[key] = n
        rows.append({"n": n, "audio": audio, "text": text, "answer": answer, "id": key})
    return rows


def _field(row: dict, where: str, *names: str) -> str | None:
    """The first of `names` present in a manifest object: a string, or None when absent."""
    for name in names:
        value = row.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InputError(f"{where}: '{name}' must be a string, got {type(value).__name__} {json.dumps(value)[:40]}")
        return value
    return None


def read_manifest(path: Path) -> dict[Path, str]:
    """Reference transcripts keyed by resolved audio path."""
    refs: dict[Path, str] = {}
    for row in manifest_rows(path):
        if not row["audio"] or row["text"] is None:
            raise InputError(f"{shown(path)}:{row['n']}: expected 'path<TAB>text' or a JSON object with audio and text")
        refs[(path.parent / row["audio"]).resolve()] = str(row["text"])
    return refs


def reference_for(audio: Path, manifest: dict[Path, str] | None) -> str | None:
    """The reference transcript of `audio`: from the manifest, or a `.txt` beside it (InputError
    if that file cannot be read as UTF-8 text)."""
    if manifest is not None:
        return manifest.get(audio.resolve())
    beside = audio.with_suffix(".txt")
    if beside.is_file():
        try:
            return beside.read_text(encoding="utf-8-sig").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{shown(beside)}: the reference transcript is not UTF-8 text ({type(exc).__name__})") from exc
    return None


LONG_S = 300.0  # files longer than this are decoded and transcribed piece by piece (bounded memory)
PIECE_S = 120.0  # the pieces' length, each cut at the quietest moment of its last 10 s


def transcribe_file(asr: ASR, path: Path, reference: str | None, max_duration_s: float | None = MAX_DURATION_S,
                    progress: Callable[[float, float | None], None] | None = None) -> FileResult:
    """One file's transcript. A file longer than LONG_S streams through in pieces, reporting
    `progress(seconds done, total seconds or None)` after each."""
    import time

    try:
        duration = audio_duration(path)
        if duration is not None and duration > LONG_S and (max_duration_s is None or duration <= max_duration_s):
            t = time.perf_counter()
            out = transcribe_long(asr, path, max_duration_s, progress, duration)
        else:
            audio = load_audio(path, max_duration_s=max_duration_s)
            if not has_speech(audio):
                raise InputError(f"{shown(path)}: no speech detected (silence or noise only)")
            t = time.perf_counter()
            out = asr.transcribe(audio)
        seconds = time.perf_counter() - t
    except OmniError as exc:
        return FileResult(path, error=str(exc))
    errors = ref_words = None
    if reference is not None:
        errors, ref_words = wer_counts(reference, out.text)
    return FileResult(path, out.text, out.segments, out.duration_s, seconds, reference, errors, ref_words)


def quiet_cut(audio: np.ndarray, search_s: float = 10.0, window_s: float = 0.05) -> int:
    """Where to cut `audio` between words: the middle of its quietest 50 ms in the last
    `search_s` seconds (at most its last third)."""
    w = int(window_s * SAMPLE_RATE)
    start = max(0, len(audio) - min(int(search_s * SAMPLE_RATE), len(audio) // 3))
    tail = audio[start : start + (len(audio) - start) // w * w]
    if tail.size < w:
        return len(audio)
    energy = np.square(tail.reshape(-1, w)).mean(axis=1)
    return start + int(np.argmin(energy)) * w + w // 2


def transcribe_long(asr: ASR, path: Path, max_duration_s: float | None = MAX_DURATION_S,
                    progress: Callable[[float, float | None], None] | None = None, total: float | None = None) -> Transcription:
    """A long file's transcript, decoded and transcribed a piece at a time (PIECE_S seconds,
    cut between words): memory stays that of one piece whatever the file's length. `total`:
    its duration, for the progress (read from the header when not given)."""
    total = audio_duration(path) if total is None else total
    segments: list[Segment] = []
    offset, carry, spoken = 0.0, np.zeros(0, dtype=np.float32), False
    blocks = iter_audio(path, PIECE_S, max_duration_s)
    block = next(blocks, None)
    while block is not None:
        following = next(blocks, None)
        audio = np.concatenate([carry, block])
        cut = len(audio) if following is None else quiet_cut(audio)
        piece, carry = audio[:cut], audio[cut:]
        if has_speech(piece):
            spoken = True
            for seg in asr.transcribe(piece).segments:
                segments.append(Segment(seg.start + offset, seg.end + offset, seg.text))
        offset += cut / SAMPLE_RATE
        if progress is not None:
            progress(offset, total)
        block = following
    if not spoken:
        raise InputError(f"{shown(path)}: no speech detected (silence or noise only)")
    return Transcription(join_segments(segments), tuple(segments), "en", offset)


def transcribe_paths(
    asr: ASR, paths: list[Path], manifest: Path | None = None, max_duration_s: float | None = MAX_DURATION_S,
    progress: Callable[[Path, float, float | None], None] | None = None,
) -> tuple[int, Iterator[FileResult]]:
    """(number of items, results as they finish); missing paths and empty folders are failed items."""
    files, problems = find_audio_files(paths)
    refs = read_manifest(manifest) if manifest is not None else None

    def run() -> Iterator[FileResult]:
        for path, reason in problems:
            yield FileResult(path, error=reason)
        for path in files:
            try:
                reference = reference_for(path, refs)
            except InputError as exc:
                yield FileResult(path, error=str(exc))
                continue
            on_progress = None if progress is None else (lambda done, total, path=path: progress(path, done, total))
            yield transcribe_file(asr, path, reference, max_duration_s, on_progress)

    return len(files) + len(problems), run()


def corpus_wer(results: list[FileResult]) -> float | None:
    scored = [r for r in results if r.ref_words]
    if not scored:
        return None
    return sum(r.errors for r in scored) / sum(r.ref_words for r in scored)


def _stamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(result: FileResult) -> str:
    blocks = [
        f"{i}\n{_stamp(s.start, ',')} --> {_stamp(s.end, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate(result.segments, 1)
    ]
    return "\n".join(blocks)


def to_vtt(result: FileResult) -> str:
    blocks = [f"{_stamp(s.start, '.')} --> {_stamp(s.end, '.')}\n{s.text.strip()}\n" for s in result.segments]
    return "WEBVTT\n\n" + "\n".join(blocks)


def render(result: FileResult, fmt: str) -> str:
    if fmt == "txt":
        return (result.text or "") + "\n"
    if fmt == "json":
        return json.dumps(result.to_json(), ensure_ascii=False, indent=2) + "\n"
    if fmt == "srt":
        return to_srt(result)
    if fmt == "vtt":
        return to_vtt(result)
    raise ValueError(f"unknown format {fmt}")


class OutputTree:
    """One output file per input in `out_dir`, mirroring the input folders below the inputs'
    common folder, so that equal names in different folders never overwrite each other."""

    def __init__(self, out_dir: Path, inputs: list[Path]):
        existing = [p.resolve() if p.is_dir() else p.resolve().parent for p in inputs if p.exists()]
        self.out_dir = out_dir
        self.root = Path(os.path.commonpath(existing)) if existing else Path.cwd()

    def write(self, result: FileResult, fmt: str) -> Path:
        target = (self.out_dir / result.path.resolve().relative_to(self.root)).with_suffix(f".{fmt}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render(result, fmt), encoding="utf-8")
        return target
