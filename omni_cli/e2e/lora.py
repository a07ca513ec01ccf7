"""Low-rank adapters (LoRA) on the speech LLM's language model, for our own models.

Training injects peft's LoRA layers into the LLM (`add_lora`); a checkpoint stores only the
adapters' A and B matrices (`lora_state`, keys as peft names them, e.g.
`model.layers.0.self_attn.q_proj.lora_A.weight`). Loading merges them into the LLM's
weights (`merge_lora`: W += alpha / rank * B @ A), so inference runs the plain model at its
usual cost; or, for adapters that serve one task only, merges them for the duration of that
task (`lora_applied`) and leaves the LLM exactly as it was otherwise. Knows nothing about speech.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from omni_cli.e2e.state import CheckpointError


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 16
    alpha: float = 32.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_dict(cls, d: dict) -> LoraConfig:
        """From a model config's `llm_lora` (its targets a JSON list)."""
        return cls(**{**d, "targets": tuple(d["targets"])})


def add_lora(model: nn.Module, config: LoraConfig) -> list[nn.Parameter]:
    """Inject trainable adapters into `model` (in place); returns their parameters (B starts at
    zero, so the model is unchanged until it trains)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    peft_config = PeftLoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=list(config.targets), lora_dropout=0.0,
                                 bias="none")
    inject_adapter_in_model(peft_config, model)
    params = [p for n, p in model.named_parameters() if ".lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The injected adapters' weights, by peft's names (empty if there are none)."""
    if not any(".lora_" in n for n, _ in model.named_parameters()):
        return {}
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()}


def check_lora(model: nn.Module, state: dict[str, torch.Tensor]) -> list[tuple[nn.Linear, torch.Tensor, torch.Tensor]]:
    """Each layer an adapter of `state` belongs to, with its A and B; a CheckpointError names
    an adapter that has no such layer or does not fit it."""
    out = []
    for prefix in sorted({k.rsplit(".lora_", 1)[0] for k in state}):
        a, b = state.get(f"{prefix}.lora_A.weight"), state.get(f"{prefix}.lora_B.weight")
        try:
            layer = model.get_submodule(prefix)
        except AttributeError:
            layer = None
        if a is None or b is None or not isinstance(layer, nn.Linear) or tuple(layer.weight.shape) != (b.shape[0], a.shape[1]):
            raise CheckpointError(f"LoRA adapter '{prefix}' does not fit the LLM")
        out.append((layer, a, b))
    return out


def _delta(layer: nn.Linear, a: torch.Tensor, b: torch.Tensor, config: LoraConfig) -> torch.Tensor:
    """alpha / rank * B @ A, in float32, on the layer's device."""
    dev = layer.weight.device
    return config.scale * b.to(dev).float() @ a.to(dev).float()


@torch.no_grad()
def merge_lora(model: nn.Module, state: dict[str, torch.Tensor], config: LoraConfig, sign: float = 1.0) -> None:
    """Add each adapter's alpha / rank * B @ A to the weight of the layer it belongs to (with
    `sign` -1, take it back out)."""
    for layer, a, b in check_lora(model, state):
        layer.weight += (sign * _delta(layer, a, b, config)).to(layer.weight.dtype)


@contextmanager
def lora_applied(model: nn.Module, state: dict[str, torch.Tensor], config: LoraConfig) -> Iterator[None]:
    """`model` with the adapters merged, for the duration: each adapted layer gets a new weight
    (its own plus alpha / rank * B @ A, summed in float32), and its own weight object back after,
    so the model is exactly as it was (no rounding left behind). Costs one merged copy of the
    adapted weights while it lasts."""
    own: list[tuple[nn.Linear, nn.Parameter]] = []
    try:
        with torch.no_grad():
            for layer, a, b in check_lora(model, state):
                w = layer.weight
                own.append((layer, w))
                layer.weight = nn.Parameter((w.float() + _delta(layer, a, b, config)).to(w.dtype), requires_grad=False)
        yield
    finally:
        for layer, w in own:
            layer.weight = w
