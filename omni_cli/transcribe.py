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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from omni_cli.asr import ASR, Segment
from omni_cli.audio import MAX_DURATION_S, find_audio_files, load_audio, shown
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


def transcribe_file(asr: ASR, path: Path, reference: str | None, max_duration_s: float | None = MAX_DURATION_S) -> FileResult:
    import time

    try:
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


def transcribe_paths(
    asr: ASR, paths: list[Path], manifest: Path | None = None, max_duration_s: float | None = MAX_DURATION_S
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
            yield transcribe_file(asr, path, reference, max_duration_s)

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
