"""Audio in and out for `omni talk`: the microphone and speakers (sounddevice / PortAudio),
a file played in as if it were the microphone, and the Enter key for push-to-talk.

Sources yield 16 kHz mono float32 frames of `talk.FRAME` samples; sinks take answer chunks
as they arrive and drop what is queued on `stop()` (barge-in). A machine without audio
hardware gets an `InputError` that says how to use `--input FILE` instead.
This module knows nothing about models or about the conversation.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator

import numpy as np

from omni_cli.audio import SAMPLE_RATE, resample
from omni_cli.errors import InputError
from omni_cli.talk import FRAME

FAST_SPEED = 4.0  # --fast: file input this many times faster than real time (the states stay visible)
NO_MICROPHONE = (
    "no microphone found ({reason}): give a recording with --input FILE, e.g. "
    "omni talk --input question.wav --output conversation.wav"
)


class FileSource:
    """A recording played into the conversation as if it came from the microphone.

    `speed` 1 is real time, None as fast as the engine reads; `holds_for_answers` stops the
    file while the models compute, so a run faster than real time gives the conversation of
    an instant model. After the recording, silence follows (`ended` is then true) so the last
    turn can end and its answer be played.
    """

    def __init__(self, audio: np.ndarray, speed: float | None = 1.0, holds_for_answers: bool = False):
        if speed is not None and speed <= 0:
            raise ValueError(f"speed must be > 0 or None, got {speed}")
        self.audio = np.asarray(audio, dtype=np.float32)
        self.speed, self.holds_for_answers = speed, holds_for_answers
        self.ended = False

    def __iter__(self) -> Iterator[np.ndarray]:
        step = FRAME / SAMPLE_RATE / self.speed if self.speed else 0.0
        due = time.monotonic()
        for i in range(0, 1 << 62, FRAME):
            frame = self.audio[i : i + FRAME]
            self.ended = len(frame) == 0
            if len(frame) < FRAME:
                frame = np.pad(frame, (0, FRAME - len(frame)))
            if step:
                time.sleep(max(0.0, due - time.monotonic()))
                due = max(due + step, time.monotonic())  # no burst of frames after a pause
            yield frame


def device_spec(text: str | None) -> str | int | None:
    """`--input-device` / `--output-device`: a device index (as `python -m sounddevice` lists
    them) or a part of its name."""
    if text is None or not text.strip():
        return None
    return int(text) if text.strip().isdigit() else text.strip()


_ALSA_QUIET = None


def _quiet_alsa() -> None:
    """alsa-lib prints its complaints (an underrun, a missing card) straight onto stderr, into
    the live view; route them nowhere. xruns are counted and reported by the callbacks instead."""
    global _ALSA_QUIET
    if _ALSA_QUIET is not None or not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util

    try:
        lib = ctypes.CDLL(ctypes.util.find_library("asound") or "libasound.so.2")
    except OSError:  # no ALSA: nothing to quiet
        _ALSA_QUIET = False
        return
    handler = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)
    _ALSA_QUIET = handler(lambda *args: None)  # kept referenced for the life of the process
    lib.snd_lib_error_set_handler(_ALSA_QUIET)


def _sounddevice(kind: str, device: str | int | None = None):
    """The sounddevice module, or InputError when PortAudio or the device is missing."""
    _quiet_alsa()
    try:
        import sounddevice as sd

        sd.query_devices(device, kind=kind)  # raises when there is no such device (or no default)
        return sd
    except Exception as exc:  # OSError (no PortAudio library), PortAudioError (no device)
        reason = str(exc).strip() or type(exc).__name__
        if device is not None:
            raise InputError(f"{kind} device {device!r}: {reason}; list the devices with: python -m sounddevice") from exc
        raise InputError(NO_MICROPHONE.format(reason=reason)) from exc


class Microphone:
    """The default input device, 16 kHz mono (resampled when the device can't do 16 kHz)."""

    ended = False
    holds_for_answers = False

    def __init__(self, device: str | int | None = None):
        sd = _sounddevice("input", device)
        self.blocks: queue.Queue = queue.Queue()
        self.xruns = 0  # blocks PortAudio lost because they were not read in time
        try:
            sd.check_input_settings(device, channels=1, dtype="float32", samplerate=SAMPLE_RATE)
            rate = SAMPLE_RATE
        except Exception:  # noqa: BLE001 - the device's own rate, resampled below
            rate = int(sd.query_devices(device, "input")["default_samplerate"])
        self.rate = rate
        try:
            self.stream = sd.InputStream(device=device, channels=1, samplerate=rate, dtype="float32",
                                         blocksize=FRAME if rate == SAMPLE_RATE else 0, callback=self._callback)
        except Exception as exc:
            raise InputError(NO_MICROPHONE.format(reason=str(exc).strip())) from exc

    def _callback(self, indata, frames, time_info, status) -> None:
        if status.input_overflow:
            self.xruns += 1
        self.blocks.put(indata[:, 0].copy())

    def __iter__(self) -> Iterator[np.ndarray]:
        import soxr

        resampler = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32") if self.rate != SAMPLE_RATE else None
        pending = np.zeros(0, dtype=np.float32)
        self.stream.start()
        while True:
            try:
                block = self.blocks.get(timeout=0.1)  # a timeout, so Ctrl-C gets through
            except queue.Empty:
                continue
            pending = np.concatenate([pending, resampler.resample_chunk(block) if resampler else block])
            while len(pending) >= FRAME:
                frame, pending = pending[:FRAME], pending[FRAME:]
                yield frame

    def close(self) -> None:
        self.stream.stop()
        self.stream.close()


class Speaker:
    """The default output device; chunks are queued and played in order, `stop()` drops the rest."""

    def __init__(self, device: str | int | None = None):
        _quiet_alsa()
        import sounddevice as sd

        self.rate = int(sd.query_devices(device, "output")["default_samplerate"])
        self.queued: deque[np.ndarray] = deque()
        self.xruns = 0  # callbacks that came too late: a gap in what was played
        self.lock = threading.Lock()
        self.stream = sd.OutputStream(device=device, channels=1, samplerate=self.rate, dtype="float32", callback=self._callback)
        self.stream.start()

    def play(self, samples: np.ndarray, sample_rate: int) -> None:
        audio = np.clip(resample(samples, sample_rate, self.rate), -1.0, 1.0)  # resampling overshoots a full-scale peak
        with self.lock:
            self.queued.append(audio)

    def stop(self) -> None:
        with self.lock:
            self.queued.clear()

    def _callback(self, outdata, frames, time_info, status) -> None:
        if status.output_underflow:
            self.xruns += 1
        out = outdata[:, 0]
        filled = 0
        with self.lock:
            while filled < frames and self.queued:
                head = self.queued[0]
                n = min(frames - filled, len(head))
                out[filled : filled + n] = head[:n]
                filled += n
                if n == len(head):
                    self.queued.popleft()
                else:
                    self.queued[0] = head[n:]
        out[filled:] = 0.0

    def close(self) -> None:
        self.stream.stop()
        self.stream.close()


def open_speaker(device: str | int | None = None) -> Speaker | None:
    """The speakers, or None where there are none (the answers then play nowhere); a device
    asked for by name or index that cannot be opened is an InputError."""
    try:
        return Speaker(device)
    except Exception as exc:  # noqa: BLE001 - no PortAudio, no output device
        if device is None:
            return None
        raise InputError(f"output device {device!r}: cannot be opened ({str(exc).strip() or type(exc).__name__}); "
                         "list the devices with: python -m sounddevice") from exc


def xrun_note(source, speaker) -> str | None:
    """One line on audio lost to timing (PortAudio over- and underflows), or None."""
    lost_in, lost_out = getattr(source, "xruns", 0), getattr(speaker, "xruns", 0)
    if not (lost_in or lost_out):
        return None
    return (f"audio glitches: {lost_in} microphone overflow(s) (input lost), {lost_out} speaker underflow(s) "
            "(gaps in playback); the machine was too busy to keep up")


class EnterKey:
    """Push-to-talk: Enter starts talking, Enter again stops (stdin, read by a thread)."""

    def __init__(self, stream=None):
        self.fd = (stream or sys.stdin).fileno()
        self.held = False
        self._saved = None
        if os.isatty(self.fd):  # keys without echo or line buffering; Ctrl-C still works
            import termios
            import tty

            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                key = os.read(self.fd, 1)
            except OSError:
                return
            if not key:
                return
            if key in (b"\n", b"\r"):
                self.held = not self.held

    def close(self) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
