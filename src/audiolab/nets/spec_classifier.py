"""A small CNN that classifies fixed-size spectrograms (e.g. FSDD digits)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class SpecClassifier(nn.Module):
    """Blocks of (3x3 conv, batch norm, ReLU) x 2 and 2x2 max-pool, then global average
    pooling to an embedding, dropout and a linear layer.

    Args:
        in_channels: spectrogram channels.
        channels: output channels of each block.
        n_classes: number of classes.
        dropout: before the classifier.
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (16, 32, 64, 128), n_classes: int = 10, dropout: float = 0.3) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            blocks += [
                nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = c
        self.features = nn.Sequential(*blocks)
        self.embedding_dim = c_in
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c_in, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, embedding_dim)`` (used for Frechet distances)."""
        return self.features(x).mean(dim=(-2, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes)``."""
        return self.head(self.dropout(self.embed(x)))
