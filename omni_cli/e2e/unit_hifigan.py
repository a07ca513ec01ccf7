"""The unit HiFi-GAN vocoder with a duration predictor (fairseq's "CodeHiFiGAN"), in plain
PyTorch: discrete speech units in, a float32 mono waveform out.

This is the last stage of LLaMA-Omni: its speech decoder emits mHuBERT units (1000
k-means clusters, 50 units a second), and this vocoder turns them into 16 kHz audio. It
loads the published files unchanged: `config.json` (the fairseq / speech-resynthesis
training config, read by `UnitHiFiGANConfig.from_fairseq_json`) and the checkpoint
`g_00500000`, a torch dict whose `generator` entry holds the weights under fairseq's
names (`dict`, `dur_predictor.*`, `conv_pre`, `ups.{i}`, `resblocks.{j}`, `conv_post`).

    units -> dict (embedding) -> duration predictor: each unit's frame repeated
    clamp(round(exp(log_dur) - 1), min=1) times -> conv_pre -> [leaky ReLU ->
    ups[i] (transposed conv) -> mean of the resblocks] x len(upsample_rates) ->
    leaky ReLU -> conv_post -> tanh

The checkpoint stores weight-normed convolutions (`weight_g`, `weight_v`); they are folded
into plain `weight` at load (what fairseq's `remove_weight_norm` does), so inference runs
plain convolutions. Loading is strict: a missing, unexpected or misshapen key is an error.

What it doesn't know: speaker, style or f0 conditioning (`multispkr`, `embedder_params`,
`multistyle`, `f0`, `f0_quant_num_bin`; a config asking for one is refused), batches
of more than one utterance when durations are used (fairseq has the same limit), training
(no discriminators, no losses, dropout only as the checkpoint's inert modules), streaming,
and where units come from. Nothing here downloads anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_OMEGA = 40  # units per streamed chunk unless asked otherwise: the published demo's setting (0.8 s of 50 Hz units)

from omni_cli.e2e.state import CheckpointError, strict_load
from omni_cli.errors import ConfigError

# config.json fields that switch on conditioning this module does not implement, with
# what each one asks for (fairseq codehifigan.py and the speech-resynthesis variants).
_UNSUPPORTED_FIELDS = {
    "multispkr": "speaker conditioning",
    "embedder_params": "speaker-embedding conditioning",
    "multistyle": "style conditioning",
    "num_style_tokens": "style-token conditioning",
    "f0": "f0 conditioning",
    "f0_quant_num_bin": "quantized f0 conditioning",
}


class UnitHiFiGANConfigError(ConfigError, ValueError):
    """A vocoder config.json this module cannot build (unsupported or inconsistent)."""


class UnitHiFiGANCheckpointError(CheckpointError):
    """A vocoder checkpoint that is missing, unreadable or does not match its config."""


# -- config -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DurationPredictorConfig:
    """fairseq's `dur_predictor_params` (the VariancePredictor of FastSpeech 2)."""

    encoder_embed_dim: int
    var_pred_hidden_dim: int
    var_pred_kernel_size: int
    var_pred_dropout: float


@dataclass(frozen=True)
class UnitHiFiGANConfig:
    num_embeddings: int  # unit vocabulary (1000 for the mHuBERT vocoder)
    embedding_dim: int
    model_in_dim: int  # channels into conv_pre; equals embedding_dim without conditioning
    upsample_initial_channel: int
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    resblock: str  # "1": ResBlock1 (3 dilated + 3 plain convs), "2": ResBlock2 (2 dilated)
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    dur_predictor_params: DurationPredictorConfig | None = None
    sampling_rate: int = 16000
    # fixed in fairseq's hifigan.py, not in config.json
    conv_pre_kernel_size: int = 7
    conv_post_kernel_size: int = 7
    lrelu_slope: float = 0.1
    final_lrelu_slope: float = 0.01  # fairseq calls F.leaky_relu(x) there: torch's default

    @property
    def hop_length(self) -> int:
        """Output samples per (duration-expanded) unit frame."""
        return math.prod(self.upsample_rates)

    @classmethod
    def from_fairseq_json(cls, cfg: dict[str, Any]) -> UnitHiFiGANConfig:
        """Build from a fairseq / speech-resynthesis vocoder config.json (already parsed).

        Training-only fields (batch_size, segment_size, n_fft, dist_config...) are ignored;
        fields that ask for conditioning this module lacks raise UnitHiFiGANConfigError.
        """

        def fail(field: str, why: str) -> UnitHiFiGANConfigError:
            return UnitHiFiGANConfigError(f"vocoder config field '{field}' {why}")

        for field, what in _UNSUPPORTED_FIELDS.items():
            if cfg.get(field):
                raise fail(field, f"asks for {what} ({cfg[field]!r}), which this vocoder does not support")

        def ints(field: str) -> tuple[int, ...]:
            value = require(field)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
                raise fail(field, f"must be a list of integers, got {value!r}")
            return tuple(value)

        def require(field: str, source: dict[str, Any] = cfg) -> Any:
            if field not in source:
                raise fail(field, "is missing")
            return source[field]

        resblock = str(cfg.get("resblock", "1"))  # fairseq ignores the field: always "1"
        if resblock not in ("1", "2"):
            raise fail("resblock", f"must be \"1\" or \"2\", got {cfg['resblock']!r}")
        dilations = require("resblock_dilation_sizes")
        if not isinstance(dilations, (list, tuple)) or not all(isinstance(d, (list, tuple)) for d in dilations):
            raise fail("resblock_dilation_sizes", f"must be a list of lists, got {dilations!r}")
        dilation_sizes = tuple(tuple(int(v) for v in d) for d in dilations)

        dur = cfg.get("dur_predictor_params")
        dur_params = None
        if dur:
            dur_params = DurationPredictorConfig(
                encoder_embed_dim=int(require("encoder_embed_dim", dur)),
                var_pred_hidden_dim=int(require("var_pred_hidden_dim", dur)),
                var_pred_kernel_size=int(require("var_pred_kernel_size", dur)),
                var_pred_dropout=float(dur.get("var_pred_dropout", 0.0)),
            )

        config = cls(
            num_embeddings=int(require("num_embeddings")),
            embedding_dim=int(require("embedding_dim")),
            model_in_dim=int(cfg.get("model_in_dim", 80)),  # fairseq's default
            upsample_initial_channel=int(require("upsample_initial_channel")),
            upsample_rates=ints("upsample_rates"),
            upsample_kernel_sizes=ints("upsample_kernel_sizes"),
            resblock=resblock,
            resblock_kernel_sizes=ints("resblock_kernel_sizes"),
            resblock_dilation_sizes=dilation_sizes,
            dur_predictor_params=dur_params,
            sampling_rate=int(cfg.get("sampling_rate", 16000)),
        )
        config.validate()
        return config

    def validate(self) -> None:
        def fail(field: str, why: str) -> UnitHiFiGANConfigError:
            return UnitHiFiGANConfigError(f"vocoder config field '{field}' {why}")

        if self.model_in_dim != self.embedding_dim:
            raise fail(
                "model_in_dim",
                f"is {self.model_in_dim} but must equal embedding_dim ({self.embedding_dim}) "
                "when there is no speaker or f0 conditioning",
            )
        if not self.upsample_rates or len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise fail("upsample_kernel_sizes", "must be non-empty and as long as upsample_rates")
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            if u < 1 or k < u:
                raise fail("upsample_kernel_sizes", f"has kernel {k} for rate {u}: need kernel >= rate >= 1")
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            raise fail(
                "upsample_initial_channel",
                f"({self.upsample_initial_channel}) must be divisible by 2**{len(self.upsample_rates)}",
            )
        if not self.resblock_kernel_sizes or len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise fail("resblock_dilation_sizes", "must be non-empty and as long as resblock_kernel_sizes")
        n_dilations = 3 if self.resblock == "1" else 2
        if any(len(d) != n_dilations for d in self.resblock_dilation_sizes):
            raise fail(
                "resblock_dilation_sizes", f"needs {n_dilations} dilations per block for resblock {self.resblock}"
            )
        if self.sampling_rate <= 0:
            raise fail("sampling_rate", f"must be positive, got {self.sampling_rate}")
        dur = self.dur_predictor_params
        if dur is not None:
            if dur.encoder_embed_dim != self.embedding_dim:
                raise fail(
                    "dur_predictor_params.encoder_embed_dim",
                    f"is {dur.encoder_embed_dim} but must equal embedding_dim ({self.embedding_dim})",
                )
            # fairseq pads the predictor's second conv by 1 whatever the kernel, so only
            # kernel 3 keeps one duration per unit; other odd kernels get "same" padding here.
            if dur.var_pred_kernel_size % 2 == 0:
                raise fail("dur_predictor_params.var_pred_kernel_size", "must be odd")


# -- modules ----------------------------------------------------------------------------


def _same_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


class DurationPredictor(nn.Module):
    """Two (conv1d -> ReLU -> LayerNorm -> dropout) layers, then a linear to one log-duration
    per frame. Names match fairseq's VariancePredictor: conv1.0, ln1, conv2.0, ln2, proj."""

    def __init__(self, p: DurationPredictorConfig):
        super().__init__()
        pad = (p.var_pred_kernel_size - 1) // 2
        self.conv1 = nn.Sequential(
            nn.Conv1d(p.encoder_embed_dim, p.var_pred_hidden_dim, p.var_pred_kernel_size, padding=pad), nn.ReLU()
        )
        self.ln1 = nn.LayerNorm(p.var_pred_hidden_dim)
        self.conv2 = nn.Sequential(
            nn.Conv1d(p.var_pred_hidden_dim, p.var_pred_hidden_dim, p.var_pred_kernel_size, padding=pad), nn.ReLU()
        )
        self.ln2 = nn.LayerNorm(p.var_pred_hidden_dim)
        self.dropout = nn.Dropout(p.var_pred_dropout)
        self.proj = nn.Linear(p.var_pred_hidden_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, T) frames, channels first -> (B, T) log durations."""
        x = self.dropout(self.ln1(self.conv1(x).transpose(1, 2)))
        x = self.dropout(self.ln2(self.conv2(x.transpose(1, 2)).transpose(1, 2)))
        return self.proj(x).squeeze(-1)


def durations_from_log(log_dur: Tensor) -> Tensor:
    """fairseq's rule: frames per unit = clamp(round(exp(log_dur) - 1), min=1), as int64.
    torch.round rounds halves to even."""
    return torch.clamp(torch.round(torch.exp(log_dur) - 1).long(), min=1)


class ResBlock1(nn.Module):
    """Per dilation d: x += conv(lrelu(conv_d(lrelu(x)))), i.e. `convs1` dilated, `convs2` plain."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...], slope: float):
        super().__init__()
        self.slope = slope
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_same_padding(kernel_size, d))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=_same_padding(kernel_size)) for _ in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for dilated, plain in zip(self.convs1, self.convs2):
            y = dilated(F.leaky_relu(x, self.slope))
            x = x + plain(F.leaky_relu(y, self.slope))
        return x


class ResBlock2(nn.Module):
    """Per dilation d: x += conv_d(lrelu(x)), the lighter block of HiFi-GAN V3 (`convs`)."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...], slope: float):
        super().__init__()
        self.slope = slope
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_same_padding(kernel_size, d))
            for d in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = x + conv(F.leaky_relu(x, self.slope))
        return x


class UnitHiFiGAN(nn.Module):
    """fairseq's CodeGenerator with plain (weight-norm-folded) convolutions.

    Attribute names are the checkpoint's: `dict`, `dur_predictor`, `conv_pre`, `ups`,
    `resblocks`, `conv_post`.
    """

    def __init__(self, config: UnitHiFiGANConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.dict = nn.Embedding(config.num_embeddings, config.embedding_dim)
        self.dur_predictor = (
            DurationPredictor(config.dur_predictor_params) if config.dur_predictor_params is not None else None
        )
        ch = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(
            config.model_in_dim, ch, config.conv_pre_kernel_size, padding=(config.conv_pre_kernel_size - 1) // 2
        )
        block = ResBlock1 if config.resblock == "1" else ResBlock2
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for u, k in zip(config.upsample_rates, config.upsample_kernel_sizes):
            self.ups.append(nn.ConvTranspose1d(ch, ch // 2, k, u, padding=(k - u) // 2))
            ch //= 2
            for rk, rd in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                self.resblocks.append(block(ch, rk, rd, config.lrelu_slope))
        self.conv_post = nn.Conv1d(
            ch, 1, config.conv_post_kernel_size, padding=(config.conv_post_kernel_size - 1) // 2
        )

    def predict_durations(self, frames: Tensor) -> Tensor:
        """frames: (B, C, T) unit embeddings -> (B, T) int64 frames per unit."""
        if self.dur_predictor is None:
            raise ConfigError("this vocoder has no duration predictor (no dur_predictor_params in its config)")
        return durations_from_log(self.dur_predictor(frames))

    def decode(self, frames: Tensor) -> Tensor:
        """The HiFi-GAN generator: (B, model_in_dim, T) frames -> (B, T * hop_length) samples."""
        c = self.config
        x = self.conv_pre(frames)
        n = len(c.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, c.lrelu_slope))
            x = sum(self.resblocks[i * n + j](x) for j in range(n)) / n
        x = self.conv_post(F.leaky_relu(x, c.final_lrelu_slope))
        return torch.tanh(x).squeeze(1)

    def forward(self, code: Tensor, durations: Tensor | None = None, dur_prediction: bool = True) -> Tensor:
        """code: (B, T) or (T,) unit ids -> (B, samples) waveform in [-1, 1].

        Each unit's frame is repeated `durations[t]` times when given, else the predicted
        number when `dur_prediction` and the model has a predictor (LLaMA-Omni always asks
        for it), else once. Durations need a batch of one, as in fairseq.
        """
        if code.dim() == 1:
            code = code.unsqueeze(0)
        x = self.dict(code).transpose(1, 2)  # (B, C, T)
        if durations is None and dur_prediction and self.dur_predictor is not None:
            durations = self.predict_durations(x)
        if durations is not None:
            if x.size(0) != 1:
                raise ValueError(f"durations need a batch of one utterance, got {x.size(0)}")
            durations = durations.reshape(-1).to(device=x.device, dtype=torch.long)
            if durations.numel() != x.size(2):
                raise ValueError(f"got {durations.numel()} durations for {x.size(2)} units")
            x = torch.repeat_interleave(x, durations, dim=2)
        return self.decode(x)

    # -- loading --------------------------------------------------------------------------

    def load_generator_state(self, state: dict[str, Tensor], source: str = "checkpoint") -> None:
        """Load a fairseq generator state dict, strictly, folding weight norm into `weight`."""
        folded = fold_weight_norm(state, source)
        strict_load(self, folded, f"vocoder {source} does not match its config", UnitHiFiGANCheckpointError)

    @classmethod
    def from_files(
        cls, checkpoint_path: str | Path, config_path: str | Path | None = None, device: str | torch.device = "cpu"
    ) -> UnitHiFiGAN:
        """Load the published pair (`g_00500000`, `config.json`), or a folder holding both."""
        config_arg = None if config_path is None else Path(config_path)
        checkpoint, config_file = _resolve_files(Path(checkpoint_path), config_arg)
        try:
            raw = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UnitHiFiGANCheckpointError(f"cannot read vocoder config {config_file}: {e}") from e
        if not isinstance(raw, dict):
            raise UnitHiFiGANConfigError(f"vocoder config {config_file} is not a JSON object")
        model = cls(UnitHiFiGANConfig.from_fairseq_json(raw))
        try:
            ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means an unusable file
            raise UnitHiFiGANCheckpointError(f"cannot read vocoder checkpoint {checkpoint}: {e}") from e
        if isinstance(ckpt, dict) and "generator" in ckpt:
            ckpt = ckpt["generator"]
        if not isinstance(ckpt, dict) or not all(isinstance(v, Tensor) for v in ckpt.values()):
            raise UnitHiFiGANCheckpointError(
                f"vocoder checkpoint {checkpoint} holds no generator state dict (expected a 'generator' entry)"
            )
        model.load_generator_state(ckpt, source=f"checkpoint {checkpoint}")
        return model.to(device).eval()


def fold_weight_norm(state: dict[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
    """Replace each weight-normed pair by its plain weight: w = g * v / ||v||, the norm taken
    over all dims but 0 (torch's weight_norm default, which fairseq uses for every conv,
    ConvTranspose1d included). Accepts the legacy names (`X.weight_g`, `X.weight_v`) and
    the parametrization names (`X.parametrizations.weight.original0` / `original1`);
    plain `X.weight` entries pass through."""
    pairs = {
        ".weight_g": ".weight_v",
        ".parametrizations.weight.original0": ".parametrizations.weight.original1",
    }
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for key, value in state.items():
        for g_suffix, v_suffix in pairs.items():
            if key.endswith(g_suffix):
                prefix = key[: -len(g_suffix)]
                v_key = prefix + v_suffix
                if v_key not in state:
                    raise UnitHiFiGANCheckpointError(f"vocoder {source}: '{key}' has no matching '{v_key}'")
                g, v = value.float(), state[v_key].float()
                norm = v.reshape(v.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))
                if g.shape != norm.shape:
                    raise UnitHiFiGANCheckpointError(
                        f"vocoder {source}: '{key}' has shape {tuple(g.shape)}, expected {tuple(norm.shape)} "
                        "(weight norm over dim 0)"
                    )
                if prefix + ".weight" in state:
                    raise UnitHiFiGANCheckpointError(
                        f"vocoder {source}: '{prefix}.weight' is stored both plain and weight-normed"
                    )
                out[prefix + ".weight"] = g * v / norm
                used.update((key, v_key))
                break
    for key, value in state.items():
        if key in used:
            continue
        for g_suffix, v_suffix in pairs.items():
            if key.endswith(v_suffix):
                g_key = key[: -len(v_suffix)] + g_suffix
                raise UnitHiFiGANCheckpointError(f"vocoder {source}: '{key}' has no matching '{g_key}'")
        out[key] = value
    return out


def _resolve_files(checkpoint: Path, config: Path | None) -> tuple[Path, Path]:
    if checkpoint.is_dir():
        folder = checkpoint
        candidates = sorted(
            p for p in folder.iterdir()
            if p.is_file() and (p.name.startswith("g_") or p.suffix in (".pt", ".pth", ".ckpt"))
        )
        if len(candidates) != 1:
            found = ", ".join(p.name for p in candidates) or "none"
            raise UnitHiFiGANCheckpointError(
                f"vocoder folder {folder} must hold exactly one checkpoint (g_* or *.pt), found: {found}"
            )
        checkpoint = candidates[0]
        config = config or folder / "config.json"
    elif config is None:
        config = checkpoint.parent / "config.json"
    if not checkpoint.is_file():
        raise UnitHiFiGANCheckpointError(f"vocoder checkpoint not found: {checkpoint}")
    if not config.is_file():
        raise UnitHiFiGANCheckpointError(f"vocoder config not found: {config} (the config.json published with it)")
    return checkpoint, config


# -- public wrapper ---------------------------------------------------------------------


class UnitHiFiGANVocoder:
    """Units in, float32 mono samples at `sample_rate` out (what LLaMA-Omni's
    `vocoder({"code": units}, True)` does)."""

    def __init__(self, model: UnitHiFiGAN, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sample_rate: int = model.config.sampling_rate
        self.num_units: int = model.config.num_embeddings
        self.default_omega: int = DEFAULT_OMEGA

    @classmethod
    def from_files(
        cls, checkpoint_path: str | Path, config_path: str | Path | None = None, device: str | torch.device = "cpu"
    ) -> UnitHiFiGANVocoder:
        return cls(UnitHiFiGAN.from_files(checkpoint_path, config_path), device)

    def units_to_audio(self, units: list[int]) -> np.ndarray:
        """Negative ids are dropped, as fairseq's vocoder does; ids >= num_units are an error."""
        kept = [int(u) for u in units if int(u) >= 0]
        bad = [u for u in kept if u >= self.num_units]
        if bad:
            raise ConfigError(f"the model emits unit ids this vocoder lacks (it has {self.num_units}, got {bad[:5]}): "
                              "use the vocoder the model was trained with")
        if not kept:
            return np.zeros(0, dtype=np.float32)
        with torch.inference_mode():
            code = torch.tensor(kept, dtype=torch.long, device=self.device).unsqueeze(0)
            wav = self.model(code, dur_prediction=True)[0]
        return wav.float().cpu().numpy().astype(np.float32, copy=False)
