"""The speech encoder: openai-whisper's AudioEncoder, LayerNorms as plain `nn.LayerNorm`.

Two modes (`EncoderConfig.padded`): padded to 30 s, as the published weights were
trained (valid frames = (mel_len + 1) // 2 of 1500), or real length, slicing the
positional embedding (faster, fewer LLM tokens; for models trained that way). The
encoder is frozen in every training stage. Knows nothing about the LLM.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from omni_cli.e2e.config import EncoderConfig

HOP = 160  # samples per mel frame at 16 kHz (Whisper's STFT hop)


def _plain_layer_norms(module: nn.Module) -> None:
    """Swap whisper's fp32-casting LayerNorm subclass for nn.LayerNorm with the same weights."""
    for name, child in module.named_children():
        if isinstance(child, nn.LayerNorm) and type(child) is not nn.LayerNorm:
            plain = nn.LayerNorm(child.normalized_shape, eps=child.eps, elementwise_affine=child.elementwise_affine)
            plain.load_state_dict(child.state_dict())
            setattr(module, name, plain)
        else:
            _plain_layer_norms(child)


def speed_perturb(audio: torch.Tensor, factor: float) -> torch.Tensor:
    """1-D audio played `factor` times as fast (linear resampling: tempo and pitch change together,
    as stage 1's augmentation and the hearing's `speeds` do it)."""
    if factor == 1.0:
        return audio
    n = max(1, round(audio.shape[-1] / factor))
    return torch.nn.functional.interpolate(audio[None, None], size=n, mode="linear", align_corners=True)[0, 0]


def real_length_mel(audio: torch.Tensor, n_mels: int, n_ctx: int) -> torch.Tensor:
    """Whisper's log-mel (n_mels, frames) of 16 kHz audio as a real-length encoder reads it: at
    most its context (n_ctx * 2 frames), an even number of frames, at least 2."""
    import whisper

    audio = audio[: n_ctx * 2 * HOP]
    frames = audio.shape[-1] // HOP
    return whisper.log_mel_spectrogram(audio, n_mels=n_mels)[:, : max(2, frames - frames % 2)]


class SpeechEncoder(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        from whisper.model import AudioEncoder

        self.config = config
        self.whisper = AudioEncoder(config.n_mels, config.n_ctx, config.width, config.n_heads, config.n_layers)
        _plain_layer_norms(self.whisper)

    def mel(self, audio: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, int]:
        """Log-mel (n_mels, frames) of 16 kHz audio, and the number of frames of real audio."""
        import whisper

        audio = torch.as_tensor(np.asarray(audio, dtype=np.float32))
        n_frames = audio.shape[-1] // HOP
        if not self.config.padded:
            return real_length_mel(audio, self.config.n_mels, self.config.n_ctx), min(n_frames, self.config.n_ctx * 2)
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio, self.config.n_ctx * 2 * HOP), n_mels=self.config.n_mels)
        return mel, n_frames

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(batch, n_mels, frames) -> (batch, frames // 2, width)."""
        w = self.whisper
        x = nn.functional.gelu(w.conv1(mel))
        x = nn.functional.gelu(w.conv2(x)).permute(0, 2, 1)
        x = x + w.positional_embedding[: x.shape[1]].to(x.dtype)
        for block in w.blocks:
            x = block(x)
        return w.ln_post(x)

    def encode(self, audio: np.ndarray) -> torch.Tensor:
        """(frames, width) encoder states of one utterance; in padded mode, all 30 s of them
        (the published model feeds the padding frames to the adaptor too)."""
        weight = next(self.parameters())
        mel, _ = self.mel(audio)
        return self(mel.unsqueeze(0).to(weight.device, weight.dtype))[0]

    def encode_batch(self, mels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Real-length encoder states of several utterances as one padded batch: `mels` are each
        utterance's log-mel (n_mels, frames), frames even. Returns ((batch, frames // 2, width),
        valid frames per item). Padding is kept out of attention and out of the convolutions'
        edges, so each item's valid states equal `forward` on it alone."""
        if self.config.padded:
            raise ValueError("encode_batch is for real-length encoders")
        w = self.whisper
        lengths = torch.tensor([m.shape[-1] for m in mels], device=mels[0].device)
        mel = torch.nn.utils.rnn.pad_sequence([m.T for m in mels], batch_first=True).transpose(1, 2)
        frames = torch.arange(mel.shape[-1], device=mel.device)
        x = nn.functional.gelu(w.conv1(mel)) * (frames[None, :] < lengths[:, None]).unsqueeze(1).to(mel.dtype)
        x = nn.functional.gelu(w.conv2(x)).permute(0, 2, 1)
        valid = torch.div(lengths, 2, rounding_mode="floor")
        keep = torch.arange(x.shape[1], device=x.device)[None, :] < valid[:, None]
        x = x + w.positional_embedding[: x.shape[1]].to(x.dtype)
        mask = keep[:, None, None, :]
        for block in w.blocks:
            a, h = block.attn, block.attn_ln(x)
            q, k, v = (t.view(*t.shape[:2], a.n_head, -1).transpose(1, 2) for t in (a.query(h), a.key(h), a.value(h)))
            out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + a.out(out.transpose(1, 2).flatten(2))
            x = x + block.mlp(block.mlp_ln(x))
        return w.ln_post(x), valid
