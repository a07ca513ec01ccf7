"""Strict loading of a checkpoint's tensors into a module: every key placed, every shape
right, and a one-line error naming what is missing, unexpected or misshapen."""

from __future__ import annotations

import torch

from omni_cli.errors import ModelNotFoundError


class CheckpointError(ModelNotFoundError):
    """A checkpoint whose keys or shapes do not match the architecture."""


def key_list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def strict_load(
    module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, error: type[CheckpointError] | type[Exception] = CheckpointError
) -> None:
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    if missing or unexpected:
        parts = [f"missing keys: {key_list(missing)}"] if missing else []
        parts += [f"unexpected keys: {key_list(unexpected)}"] if unexpected else []
        raise error(f"{what}: {'; '.join(parts)}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise error(f"{what}: key '{k}' has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
