"""Reading, checking and writing audio.

`load_audio` turns any common audio file (any sample rate, any channel count) into
16 kHz mono float32, or raises `InputError` with a one-line reason: missing, not a
file, empty, not audio, corrupt, no samples, too long. Decoding is libsndfile
(soundfile) with FFmpeg (PyAV) as the fallback for containers libsndfile lacks;
resampling is soxr. Writing is atomic, so a killed run never leaves a half file.
This module knows nothing about models.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from omni_cli.cache import umask_mode
from omni_cli.errors import ConfigError, InputError, OutputError

SAMPLE_RATE = 16_000
MAX_DURATION_S = 30 * 60.0
AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .flac .mp3 .ogg .oga .opus .m4a .aac .wma .webm .aiff .aif .aifc .au .caf .mp4 .mka".split()
)


def shown(path: str | os.PathLike) -> str:
    """A printable form of a path, whatever bytes its name holds (non-UTF-8 names)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_audio_path(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS


MPEG_SUFFIXES = (".mp3", ".mp2", ".mpga")


def _is_mpeg(path: Path, head: bytes) -> bool:
    """MPEG audio by name or by its first bytes `head` (an ID3 tag or a frame sync). libsndfile
    hands MPEG to mpg123, which prints its complaints on stderr: such files go to FFmpeg."""
    if path.suffix.lower() in MPEG_SUFFIXES:
        return True
    return head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)


def _probe_duration(path: Path, mpeg: bool) -> float | None:
    """Duration from the header alone, without decoding (None when unknown)."""
    if not mpeg:
        try:
            info = sf.info(os.fsencode(path))
            if info.samplerate > 0 and info.frames > 0:
                return info.frames / info.samplerate
        except Exception:  # noqa: BLE001 - libsndfile can't read it; PyAV may
            pass
    try:
        import av

        with open(path, "rb") as f, av.open(f) as container:
            if container.duration:
                return container.duration / 1_000_000
    except Exception:  # noqa: BLE001
        pass
    return None


def _check_riff_length(path: Path, size: int, head: bytes) -> None:
    """A WAV whose header (`head`, its first 12 bytes) promises more bytes than the file holds
    was cut off (libsndfile would silently decode the part that is there)."""
    if len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        declared = int.from_bytes(head[4:8], "little") + 8
        if declared not in (8, 0xFFFFFFFF + 8) and declared > size:
            raise InputError(
                f"{shown(path)}: truncated WAV file (the header promises {declared} bytes, the file has {size})"
            )


def _decode_soundfile(path: Path) -> tuple[np.ndarray, int]:
    data, sr = sf.read(os.fsencode(path), dtype="float32", always_2d=True)
    return data.mean(axis=1), sr


def _decode(path: Path, mpeg: bool) -> tuple[np.ndarray, int]:
    """libsndfile where it reads the file (never for MPEG), FFmpeg (PyAV) for the rest."""
    if not mpeg:
        try:
            return _decode_soundfile(path)
        except Exception:  # noqa: BLE001 - not something libsndfile reads; try FFmpeg
            pass
    return _decode_av(path)


def _decode_av(path: Path) -> tuple[np.ndarray, int]:
    pieces = list(_av_pieces(path))
    if not pieces:
        return np.zeros(0, dtype=np.float32), SAMPLE_RATE
    return np.concatenate(pieces), SAMPLE_RATE


def _av_pieces(path: Path) -> Iterator[np.ndarray]:
    """The audio of `path` through FFmpeg (PyAV), as it is decoded: mono float32 at 16 kHz."""
    import av

    with open(path, "rb") as f, av.open(f) as container:
        if not container.streams.audio:
            raise InputError(f"{shown(path)}: the file has no audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        for frame in _then_none(container.decode(container.streams.audio[0])):
            for out in resampler.resample(frame):  # None at the end: what the resampler still holds
                yield out.to_ndarray().reshape(-1).astype(np.float32, copy=False)


def _then_none(frames):
    """The frames, then None (the resampler's flush)."""
    yield from frames
    yield None


def _undecodable(path: Path, exc: Exception) -> InputError:
    kind = "corrupt or not an audio file" if is_audio_path(path) else "not an audio file"
    return InputError(f"{shown(path)}: {kind} ({type(exc).__name__})")


def _check_file(path: Path) -> bytes:
    """Before decoding: InputError for a missing, a directory, an empty or a cut-off WAV file;
    the file's first 12 bytes."""
    if not path.exists():
        raise InputError(f"{shown(path)}: no such file")
    if path.is_dir():
        raise InputError(f"{shown(path)}: is a directory, not an audio file")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{shown(path)}: the file is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(12)
    _check_riff_length(path, size, head)
    return head


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    max_duration_s: float | None = MAX_DURATION_S,
) -> np.ndarray:
    """Decode `path` to mono float32 at `sample_rate`; raise InputError with the reason."""
    path = Path(path)
    mpeg = _is_mpeg(path, _check_file(path))
    duration = _probe_duration(path, mpeg)
    if max_duration_s is not None and duration is not None and duration > max_duration_s:
        raise InputError(
            f"{shown(path)}: audio is {duration / 60:.1f} min long, over the "
            f"{max_duration_s / 60:.0f} min limit (raise it with --max-duration)"
        )
    try:
        audio, sr = _decode(path, mpeg)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _undecodable(path, exc) from exc
    if audio.size == 0:
        raise InputError(f"{shown(path)}: the audio has no samples (zero length)")
    if not np.isfinite(audio).all():
        raise InputError(f"{shown(path)}: corrupt audio (non-finite samples)")
    if max_duration_s is not None and audio.size / sr > max_duration_s:
        raise InputError(
            f"{shown(path)}: audio is {audio.size / sr / 60:.1f} min long, over the "
            f"{max_duration_s / 60:.0f} min limit (raise it with --max-duration)"
        )
    if sr != sample_rate:
        audio = soxr.resample(audio, sr, sample_rate)
    return np.ascontiguousarray(audio, dtype=np.float32)


def audio_duration(path: str | os.PathLike) -> float | None:
    """The duration of an audio file from its header (None when it does not say), without decoding it."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(12)
        return _probe_duration(path, _is_mpeg(path, head))
    except Exception:  # noqa: BLE001 - unreadable: the decoder will say why
        return None


def iter_audio(path: str | os.PathLike, block_s: float = 120.0, max_duration_s: float | None = None) -> Iterator[np.ndarray]:
    """Decode `path` piece by piece: mono float32 blocks of `block_s` seconds at 16 kHz (the
    last shorter), so a file of any length goes through in bounded memory. InputError with
    the reason for a file that is missing, empty, corrupt or over `max_duration_s`."""
    path = Path(path)
    _check_file(path)
    block = int(block_s * SAMPLE_RATE)
    pending: list[np.ndarray] = []
    held = total = 0
    try:
        for x in _av_pieces(path):
            if not np.isfinite(x).all():
                raise InputError(f"{shown(path)}: corrupt audio (non-finite samples)")
            pending.append(x)
            held += x.size
            total += x.size
            if max_duration_s is not None and total / SAMPLE_RATE > max_duration_s:
                raise InputError(f"{shown(path)}: audio is over the {max_duration_s / 60:.0f} min limit "
                                 "(raise it with --max-duration)")
            while held >= block:
                joined = np.concatenate(pending)
                yield joined[:block]
                pending, held = [joined[block:]], joined.size - block
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _undecodable(path, exc) from exc
    if total == 0:
        raise InputError(f"{shown(path)}: the audio has no samples (zero length)")
    if held:
        yield np.concatenate(pending)


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate == to_rate:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio, from_rate, to_rate).astype(np.float32)


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> Path:
    """Write 16-bit PCM wav atomically (a temp file renamed into place); a failure (no space,
    no permission) is an OutputError and leaves nothing behind."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{shown(path)}: cannot write here ({exc.strerror or exc})") from exc
    os.close(fd)
    try:
        sf.write(os.fsencode(tmp), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, NotImplementedError):
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            raise OutputError(f"{shown(path)}: could not write the audio ({reason})") from exc
        raise
    return path


def check_output_file(path: Path, option: str) -> None:
    """Before any work: `path` can become a file (not a folder, under a folder we may write in)."""
    if path.is_dir():
        raise ConfigError(f"{option} {shown(path)} is a folder: give a file name")
    check_output_dir(path.parent, option, of=path)


def check_output_dir(path: Path, option: str, of: Path | None = None) -> None:
    """Before any work: `path` is (or can be made) a folder we may write in."""
    shown_as = shown(of if of is not None else path)
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{option} {shown_as}: {shown(parent)} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{option} {shown_as}: no permission to write in {shown(parent)}")
            return


def find_audio_files(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand files and folders (recursively) into audio files, sorted per folder.

    Returns (files, problems): a path that does not exist, a folder with no audio in it,
    and inside a folder anything with an audio name that is not a readable file (a
    directory, a broken link, a pipe or device) is a problem with its reason; a file given
    by name is kept whatever its extension (the decoder decides), so a user's mislabelled
    file is not skipped silently.
    """
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for p in paths:
        if p.is_dir():
            found, odd = [], []
            for f in sorted(p.rglob("*")):
                if not is_audio_path(f):
                    continue
                if f.is_file():
                    found.append(f)
                elif f.is_dir():
                    odd.append((f, f"{shown(f)}: is a folder, not an audio file"))
                elif not f.exists():
                    odd.append((f, f"{shown(f)}: a broken link (its target does not exist)"))
                else:
                    odd.append((f, f"{shown(f)}: not a regular file (a pipe, socket or device)"))
            if not found and not odd:
                problems.append((p, f"{shown(p)}: no audio files in this folder"))
            files.extend(found)
            problems.extend(odd)
        elif p.exists():
            files.append(p)
        else:
            problems.append((p, f"{shown(p)}: no such file or folder"))
    return files, problems


def opus_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """Speech as an Ogg/Opus file at 24 kHz (what browsers play; about 40 kB for 10 s)."""
    buffer = io.BytesIO()
    sf.write(buffer, resample(audio, sample_rate, 24000), 24000, format="OGG", subtype="OPUS", compression_level=0.9)
    return buffer.getvalue()
