"""Decoders from bin activations ``(..., 360)`` to pitch in cents."""

from __future__ import annotations

import torch

from audiolab.pitch.cents import bin_cents


def argmax(activations: torch.Tensor) -> torch.Tensor:
    """Centre of the most active bin, in cents."""
    grid = bin_cents(activations.shape[-1], device=activations.device)
    return grid[activations.argmax(dim=-1)]


def weighted_argmax(activations: torch.Tensor, window: int = 4) -> torch.Tensor:
    """Local weighted average as in the original CREPE: the mean of the bin centres over
    argmax +- ``window`` bins, weighted by the raw activations (no second sigmoid, no
    dither). Bins beyond the grid edges are left out of the window."""
    n_bins = activations.shape[-1]
    grid = bin_cents(n_bins, device=activations.device)
    center = activations.argmax(dim=-1, keepdim=True)
    offsets = torch.arange(-window, window + 1, device=activations.device)
    index = center + offsets
    inside = (index >= 0) & (index < n_bins)
    index = index.clamp(0, n_bins - 1)
    weights = activations.gather(-1, index).float() * inside
    total = weights.sum(dim=-1)
    cents = (weights * grid[index]).sum(dim=-1) / total.clamp_min(1e-12)
    # All-zero activations carry no information: fall back to the argmax bin.
    return torch.where(total > 0, cents, grid[center.squeeze(-1)])


DECODERS = {"argmax": argmax, "weighted_argmax": weighted_argmax}


def decode(activations: torch.Tensor, decoder: str = "weighted_argmax") -> torch.Tensor:
    try:
        fn = DECODERS[decoder]
    except KeyError:
        raise ValueError(f"unknown pitch decoder {decoder!r}; choose one of {sorted(DECODERS)}") from None
    return fn(activations)
