"""How speech sounds in people's rooms, for training: a room's echo, a microphone's band,
coloured noise, and `room_copy`, which draws them for one utterance (`omni data room-copies`;
`train.Augment` uses the echo on the fly)."""

from __future__ import annotations

import random

import torch


def add_reverb(audio: torch.Tensor, rt60: float, drr_db: float, gen: torch.Generator, sample_rate: int = 16000) -> torch.Tensor:
    """`audio` as heard in a room: convolved with a synthetic impulse response, the direct sound
    and, from 2 ms on, a tail of noise decaying by 60 dB in `rt60` seconds whose energy is
    `drr_db` below the direct sound's; the result has the input's power and length."""
    n = max(2, int(rt60 * sample_rate))
    t = torch.arange(n, dtype=torch.float32) / sample_rate
    rir = torch.randn(n, generator=gen) * torch.exp(-6.9078 * t / max(rt60, 1e-3))  # amplitude / 1000 (60 dB) at rt60
    rir[: int(0.002 * sample_rate)] = 0
    rir = rir / rir.pow(2).sum().sqrt().clamp_min(1e-10) * 10 ** (-drr_db / 20)
    rir[0] = 1.0  # the direct sound
    size = audio.shape[-1] + n - 1
    wet = torch.fft.irfft(torch.fft.rfft(audio.float(), size) * torch.fft.rfft(rir, size), size)[: audio.shape[-1]]
    scale = (audio.pow(2).mean() / wet.pow(2).mean().clamp_min(1e-12)).sqrt()
    return (wet * scale).to(audio.dtype)


def microphone(audio: torch.Tensor, low_hz: float, high_hz: float, tilt_db: float, sample_rate: int = 16000) -> torch.Tensor:
    """`audio` through a microphone's band: a smooth high-pass at `low_hz` (4th order), a low-pass
    at `high_hz` (8th order) and a spectral tilt of `tilt_db` per two octaves around 1 kHz."""
    f = torch.fft.rfftfreq(audio.shape[-1], 1 / sample_rate)
    gain = 1 / (1 + (low_hz / f.clamp_min(1)) ** 4) / (1 + (f / high_hz) ** 8)
    gain = gain * 10 ** (tilt_db * torch.log2(f.clamp_min(100) / 1000) / 4 / 20)
    return torch.fft.irfft(torch.fft.rfft(audio.float()) * gain, audio.shape[-1]).to(audio.dtype)


def coloured_noise(audio: torch.Tensor, snr_db: float, slope: float, gen: torch.Generator, sample_rate: int = 16000) -> torch.Tensor:
    """`audio` with noise whose power falls as 1 / f ** `slope` (0 white, 1 pink, 2 brown) `snr_db` below its power."""
    f = torch.fft.rfftfreq(audio.shape[-1], 1 / sample_rate).clamp_min(20)
    noise = torch.fft.irfft(torch.fft.rfft(torch.randn(audio.shape, generator=gen)) / f ** (slope / 2), audio.shape[-1])
    power = audio.float().pow(2).mean().clamp_min(1e-10)
    return (audio + noise * torch.sqrt(power / noise.pow(2).mean().clamp_min(1e-12) / 10 ** (snr_db / 10))).to(audio.dtype)


def room_copy(audio: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, str]:
    """`audio` (16 kHz) as a person's recording might have it, and what was done: a room's echo
    (80 %: RT60 0.15-1 s, direct-to-reverberant ratio -3 to 15 dB), a microphone's band (50 %:
    high-pass 60-300 Hz, low-pass 3.4-8 kHz, tilt +-6 dB), coloured noise (40 %: 8-30 dB SNR,
    white to brown), then a peak level of 0.2-0.9."""
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    done = []
    if rng.random() < 0.8:
        rt60, drr = rng.uniform(0.15, 1.0), rng.uniform(-3, 15)
        audio = add_reverb(audio, rt60, drr, gen)
        done.append(f"reverb={rt60:.2f}s/{drr:.0f}dB")
    if rng.random() < 0.5:
        audio = microphone(audio, rng.uniform(60, 300), rng.uniform(3400, 8000), rng.uniform(-6, 6))
        done.append("mic")
    if rng.random() < 0.4:
        snr = rng.uniform(8, 30)
        audio = coloured_noise(audio, snr, rng.uniform(0, 2), gen)
        done.append(f"noise={snr:.0f}dB")
    return audio / audio.abs().max().clamp_min(1e-6) * rng.uniform(0.2, 0.9), ",".join(done)
