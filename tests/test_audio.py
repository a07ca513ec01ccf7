
import numpy as np
import pytest
import soundfile as sf

from omni_cli.audio import find_audio_files, load_audio, shown, write_wav
from omni_cli.errors import InputError
from tests.conftest import tone


@pytest.mark.parametrize(
    "fmt,subtype,sr,channels",
    [("WAV", "PCM_16", 44100, 2), ("FLAC", "PCM_24", 22050, 1), ("OGG", "VORBIS", 48000, 2), ("WAV", "FLOAT", 8000, 3)],
)
def test_any_rate_and_channel_count_becomes_16k_mono(tmp_path, fmt, subtype, sr, channels):
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, tone(1.5, sr, channels=channels), sr, format=fmt, subtype=subtype)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 1.5 * 16000) < 0.01 * 16000
    # a 220 Hz tone survives resampling: its spectrum peaks at 220 Hz
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16000 / len(audio) - 220) < 3


def test_m4a_decodes_through_the_ffmpeg_fallback(tmp_path):
    import av

    path = tmp_path / "a.m4a"
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=44100, layout="mono")
        frame = av.AudioFrame.from_ndarray(tone(1.0, 44100)[None, :], format="flt", layout="mono")
        frame.sample_rate = 44100
        for packet in s.encode(frame):
            c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
    audio = load_audio(path)
    assert 0.9 * 16000 < len(audio) < 1.2 * 16000


@pytest.mark.parametrize(
    "kind,words",
    [
        ("missing", "no such file"),
        ("empty", "empty"),
        ("not_audio", "not an audio file"),
        ("corrupt", "corrupt"),
        ("truncated", "truncated"),
        ("zero_length", "no samples"),
        ("too_long", "over the 30 min limit"),
        ("no_audio_dir", "is a directory"),
    ],
)
def test_bad_input_is_refused_with_a_reason(bad_inputs, kind, words):
    with pytest.raises(InputError) as err:
        load_audio(bad_inputs[kind])
    message = str(err.value)
    assert words in message
    assert "\n" not in message
    assert shown(bad_inputs[kind]) in message


def test_non_utf8_file_name_loads_and_prints(bad_inputs):
    path = bad_inputs["non_utf8"]
    assert len(load_audio(path)) > 16000
    assert "\\xe9" in shown(path)
    shown(path).encode("utf-8")  # printable


def test_find_audio_files_recurses_and_reports_problems(tmp_path, bad_inputs):
    nested = tmp_path / "corpus" / "a" / "b"
    nested.mkdir(parents=True)
    sf.write(nested / "x.flac", tone(0.5), 16000)
    sf.write(tmp_path / "corpus" / "y.wav", tone(0.5), 16000)
    (tmp_path / "corpus" / "y.txt").write_text("a reference, not audio")
    files, problems = find_audio_files([tmp_path / "corpus", bad_inputs["missing"], bad_inputs["no_audio_dir"]])
    assert sorted(f.name for f in files) == ["x.flac", "y.wav"]
    reasons = " | ".join(r for _, r in problems)
    assert "no such file or folder" in reasons and "no audio files in this folder" in reasons


def test_write_wav_is_atomic_and_readable(tmp_path):
    target = tmp_path / "out" / "reply.wav"
    write_wav(target, tone(0.25, 22050), 22050)
    data, sr = sf.read(target)
    assert sr == 22050 and len(data) == int(0.25 * 22050)
    assert [p.name for p in target.parent.iterdir()] == ["reply.wav"]  # no temp left behind


def test_written_files_follow_the_umask_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import os

    import soundfile as sf

    from omni_cli.audio import write_wav
    import torch
    from safetensors.torch import save_file

    from omni_cli.cache import atomic_dir, atomic_file
    from omni_cli.errors import OutputError

    old = os.umask(0o022)
    try:
        path = write_wav(tmp_path / "a.wav", np.zeros(160, dtype=np.float32), 16000)
        with atomic_file(tmp_path / "b.txt") as tmp:
            tmp.write_text("x")
        with atomic_dir(tmp_path / "model") as tmp:  # safetensors writes its files 0600
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644 and (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model").stat().st_mode & 0o777 == 0o755

    def full_disk(*args, **kwargs):
        raise sf.LibsndfileError(0, "System error")  # what libsndfile says when the disk is full

    monkeypatch.setattr(sf, "write", full_disk)
    with pytest.raises(OutputError, match="could not write the audio"):
        write_wav(tmp_path / "c.wav", np.zeros(160, dtype=np.float32), 16000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "b.txt", "model"]  # no partial file left


def test_a_text_file_named_mp3_fails_in_one_line_without_decoder_noise(tmp_path, capfd):
    from omni_cli.audio import load_audio
    from omni_cli.errors import InputError

    fake = tmp_path / "notes.mp3"
    fake.write_text("hello, this is text and not audio\n" * 20)
    with pytest.raises(InputError, match="corrupt or not an audio file"):
        load_audio(fake)
    err = capfd.readouterr().err
    assert "MPEG" not in err and "resync" not in err and err == ""  # mpg123 used to print its notes here
