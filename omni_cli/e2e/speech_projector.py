"""The speech adaptor (`speech_projector`): concatenate k consecutive encoder frames
(dropping the remainder), then Linear -> ReLU -> Linear into the LLM's embedding space."""

from __future__ import annotations

import torch
from torch import nn

from omni_cli.e2e.config import ProjectorConfig


class SpeechProjector(nn.Module):
    def __init__(self, config: ProjectorConfig):
        super().__init__()
        self.config = config
        self.k = config.k
        self.linear1 = nn.Linear(config.encoder_width * config.k, config.hidden)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(config.hidden, config.llm_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, frames, encoder_width) -> (batch, frames // k, llm_width)."""
        batch, frames, width = x.shape
        keep = frames - frames % self.k
        x = x[:, :keep].reshape(batch, keep // self.k, width * self.k)
        return self.linear2(self.relu(self.linear1(x)))
