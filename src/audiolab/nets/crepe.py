"""CREPE pitch network (Kim et al., "CREPE: A Convolutional Representation for Pitch
Estimation", ICASSP 2018).

Input: frames of 1024 samples at 16 kHz. Output: 360 pitch bins, 20 cents apart,
starting at 1997.3794 cents above 10 Hz (31.70 Hz). Six blocks of conv -> ReLU -> batch norm ->
max-pool(2) -> dropout, then a dense layer with a sigmoid.

The layer names and the time-major flattening before the classifier follow the
layout of the published weights, so that they can be mapped onto this module.
"""

from __future__ import annotations

import torch
from torch import nn

from audiolab.audio.pitch_grid import FRAME_LENGTH, N_BINS

CAPACITY_MULTIPLIERS = {"tiny": 4, "small": 8, "medium": 16, "large": 24, "full": 32}
BASE_FILTERS = (32, 4, 4, 4, 8, 16)


class Crepe(nn.Module):
    """CREPE network.

    Args:
        capacity: one of ``tiny | small | medium | large | full``; the filter counts are
            the capacity multiplier (4, 8, 16, 24, 32) times ``(32, 4, 4, 4, 8, 16)``.
        dropout: dropout probability after every block (CREPE uses 0.25).
        normalize_frames: subtract each frame's mean and divide by its standard
            deviation before the first layer, as CREPE does.
        bn_eps: batch-norm epsilon (1e-3, the Keras value the original was trained with).
    """

    def __init__(
        self,
        capacity: str = "full",
        dropout: float = 0.25,
        normalize_frames: bool = True,
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        if capacity not in CAPACITY_MULTIPLIERS:
            raise ValueError(
                f"unknown CREPE capacity {capacity!r}; choose one of {sorted(CAPACITY_MULTIPLIERS)}"
            )
        self.capacity = capacity
        self.normalize_frames = normalize_frames
        filters = [CAPACITY_MULTIPLIERS[capacity] * f for f in BASE_FILTERS]
        self.filters = filters
        in_channels = [1, *filters[:-1]]
        kernels = [512, 64, 64, 64, 64, 64]
        strides = [4, 1, 1, 1, 1, 1]
        for i, (cin, cout, k, s) in enumerate(zip(in_channels, filters, kernels, strides, strict=True), 1):
            # "same" padding of the Keras original: (31, 32) for the 64-tap layers and
            # (254, 254) for the strided first layer, which gives 1024 / 4 = 256 outputs.
            pad = (254, 254) if s > 1 else ((k - 1) // 2, k // 2)
            setattr(self, f"conv{i}_pad", nn.ConstantPad1d(pad, 0.0))
            setattr(self, f"conv{i}", nn.Conv1d(cin, cout, k, stride=s))
            setattr(self, f"conv{i}_BN", nn.BatchNorm1d(cout, eps=bn_eps))
        self.pool = nn.MaxPool1d(2, 2)
        self.dropout = nn.Dropout(dropout)
        # 1024 samples -> stride 4 -> 256 -> six pools of 2 -> 4 time steps.
        self.in_features = filters[-1] * (FRAME_LENGTH // 4 // 2**6)
        self.classifier = nn.Linear(self.in_features, N_BINS)

    def _block(self, x: torch.Tensor, i: int) -> torch.Tensor:
        x = getattr(self, f"conv{i}")(getattr(self, f"conv{i}_pad")(x))
        x = getattr(self, f"conv{i}_BN")(torch.relu(x))
        return self.dropout(self.pool(x))

    def _prepare(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.shape[-1] != FRAME_LENGTH:
            raise ValueError(
                f"CREPE takes frames of {FRAME_LENGTH} samples, got shape {tuple(frames.shape)}"
            )
        x = frames.reshape(-1, 1, FRAME_LENGTH)
        if self.normalize_frames:
            x = x - x.mean(dim=-1, keepdim=True)
            x = x / x.std(dim=-1, keepdim=True).clamp_min(1e-10)
        return x

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """Pitch embedding: output of the fifth block (after its max-pool), flattened
        time-major, shape ``(*frames.shape[:-1], features)``."""
        x = self._prepare(frames)
        for i in range(1, 6):
            x = self._block(x, i)
        return x.transpose(1, 2).reshape(*frames.shape[:-1], -1)

    def logits(self, frames: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid activations, shape ``(*frames.shape[:-1], 360)``."""
        x = self._prepare(frames)
        for i in range(1, 7):
            x = self._block(x, i)
        x = x.transpose(1, 2).reshape(x.shape[0], self.in_features)
        return self.classifier(x).reshape(*frames.shape[:-1], N_BINS)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Sigmoid activations in [0, 1], shape ``(*frames.shape[:-1], 360)``."""
        return torch.sigmoid(self.logits(frames))
