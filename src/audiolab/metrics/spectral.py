"""Spectrogram reconstruction metrics."""

from __future__ import annotations

import torch
from torchmetrics import Metric


def log_spectral_distance(db_a: torch.Tensor, db_b: torch.Tensor) -> torch.Tensor:
    """Log-spectral distance in dB per item: for every frame the RMS over bins of the
    difference of two dB spectrograms ``(..., bins, frames)``, averaged over frames."""
    return (db_a - db_b).pow(2).mean(dim=-2).sqrt().mean(dim=-1)


class LogSpectralDistance(Metric):
    """Mean LSD (dB) over items; ``update(db_estimate, db_reference)``."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, db_estimate: torch.Tensor, db_reference: torch.Tensor) -> None:
        lsd = log_spectral_distance(db_estimate.double(), db_reference.double()).flatten()
        self.total += lsd.sum()
        self.count += lsd.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()
