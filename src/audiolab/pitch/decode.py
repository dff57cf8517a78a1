"""Decoders from bin activations ``(..., 360)`` to pitch in cents.

``argmax`` and ``weighted_argmax`` decode every frame on its own; ``viterbi`` decodes a
sequence (activations ``(..., frames, 360)``) into the most likely smooth path.
"""

from __future__ import annotations

import torch

from audiolab.audio.pitch_grid import bin_cents, hz_to_cents
from audiolab.pitch.viterbi import crepe_viterbi


def local_average(activations: torch.Tensor, center: torch.Tensor, window: int = 4) -> torch.Tensor:
    """Mean of the bin centres over ``center`` +- ``window`` bins, weighted by the raw
    activations, in cents; ``center`` has shape ``activations.shape[:-1]``. Bins beyond
    the grid edges are left out of the window; where every weight is zero the centre bin
    itself is returned."""
    n_bins = activations.shape[-1]
    grid = bin_cents(n_bins, device=activations.device)
    center = center.unsqueeze(-1)
    index = center + torch.arange(-window, window + 1, device=activations.device)
    inside = (index >= 0) & (index < n_bins)
    index = index.clamp(0, n_bins - 1)
    weights = activations.gather(-1, index).float() * inside
    total = weights.sum(dim=-1)
    cents = (weights * grid[index]).sum(dim=-1) / total.clamp_min(1e-12)
    return torch.where(total > 0, cents, grid[center.squeeze(-1)])


def argmax(activations: torch.Tensor) -> torch.Tensor:
    """Centre of the most active bin, in cents."""
    grid = bin_cents(activations.shape[-1], device=activations.device)
    return grid[activations.argmax(dim=-1)]


def weighted_argmax(activations: torch.Tensor, window: int = 4) -> torch.Tensor:
    """As in the original CREPE: the local average (:func:`local_average`) around the
    most active bin, weighted by the raw activations (no second sigmoid, no dither)."""
    return local_average(activations, activations.argmax(dim=-1), window)


def observation_probabilities(activations: torch.Tensor) -> torch.Tensor:
    """The observation model of :func:`viterbi`: each frame's sigmoid activations divided
    by their sum, a distribution over bins that keeps the network's contrast.

    torchcrepe takes a softmax of the sigmoid outputs instead; as those lie in [0, 1], its
    most and least likely bins differ by a factor of e at most, so the transition prior
    outweighs the network and the path drifts to the edges of the range on speech. With
    the activations normalised, a bin the network gives 0.9 is about 1e4 times as likely as
    one it gives 1e-4. A frame with no activation at all (every bin masked) is uniform."""
    total = activations.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(activations, 1.0 / activations.shape[-1])
    return torch.where(total > 0, activations / total.clamp_min(torch.finfo(activations.dtype).tiny), uniform)


def viterbi_bins(activations: torch.Tensor) -> torch.Tensor:
    """Bins of the most likely path through activations ``(..., frames, bins)`` under
    CREPE's transition (:func:`~audiolab.pitch.viterbi.crepe_transition`) and the
    observation model of :func:`observation_probabilities`."""
    return crepe_viterbi(observation_probabilities(activations.float()))


def viterbi(activations: torch.Tensor, window: int = 4) -> torch.Tensor:
    """Pitch along the Viterbi path (:func:`viterbi_bins`), refined by the local average
    around each path bin as CREPE does. ``activations``: ``(..., frames, bins)``."""
    return local_average(activations, viterbi_bins(activations), window)


DECODERS = {"argmax": argmax, "weighted_argmax": weighted_argmax, "viterbi": viterbi}


def check_decoder(decoder: str) -> None:
    if decoder not in DECODERS:
        raise ValueError(f"unknown pitch decoder {decoder!r}; choose one of {sorted(DECODERS)}")


def decode(activations: torch.Tensor, decoder: str = "weighted_argmax") -> torch.Tensor:
    """Pitch in cents from activations ``(..., bins)`` (``(..., frames, bins)`` for
    ``viterbi``)."""
    check_decoder(decoder)
    return DECODERS[decoder](activations)


def decode_with_bins(activations: torch.Tensor, decoder: str = "weighted_argmax") -> tuple[torch.Tensor, torch.Tensor]:
    """``(cents, bins)``: the pitch, and the bin it was decoded around (the argmax, or the
    Viterbi path), whose activation is the periodicity. Same values as :func:`decode`."""
    check_decoder(decoder)
    bins = viterbi_bins(activations) if decoder == "viterbi" else activations.argmax(dim=-1)
    if decoder == "argmax":
        return bin_cents(activations.shape[-1], device=activations.device)[bins], bins
    return local_average(activations, bins), bins


def limit_range(activations: torch.Tensor, fmin: float, fmax: float) -> torch.Tensor:
    """Activations with the bins whose centre lies outside ``[fmin, fmax]`` Hz (with half a
    bin of tolerance) set to zero, so that no decoder picks them."""
    if not 0 < fmin < fmax:
        raise ValueError(f"need 0 < fmin < fmax, got fmin={fmin} and fmax={fmax}")
    grid = bin_cents(activations.shape[-1], device=activations.device)
    lo, hi = hz_to_cents(torch.tensor([fmin, fmax], dtype=torch.float64)).tolist()
    keep = (grid >= lo - 10.0) & (grid <= hi + 10.0)
    return activations * keep.to(activations.dtype)
