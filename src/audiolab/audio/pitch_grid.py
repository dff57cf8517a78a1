"""The pitch grid every pitch network, data module, metric and decoder shares: 16-kHz audio
in 1024-sample frames every 160 samples (10 ms), 360 output bins 20 cents apart (CREPE's),
Hz <-> cents, and the blurred training targets. Below the networks and the pitch task code,
so that both import it and neither imports the other for it."""

from __future__ import annotations

import torch

SAMPLE_RATE = 16000  # Hz: every pitch network's input rate
FRAME_LENGTH = 1024  # samples per frame (64 ms)
HOP_LENGTH = 160  # samples between frames by default (10 ms)
N_BINS = 360
CENTS_PER_BIN = 20.0
# Cents are measured relative to 10 Hz: f = 10 * 2 ** (cents / 1200). The published CREPE
# grid starts at 1997.3794 cents, which is 31.70 Hz (the paper describes the range as
# C1 = 32.70 Hz to B7 = 1975.5 Hz), and its last bin, 7180 cents higher, is 2005.5 Hz.
# The grid is kept exactly as published so that pretrained weights decode identically.
FIRST_BIN_CENTS = 1997.3794084376191
FMIN_HZ = 32.70
FMAX_HZ = 1975.5


def bin_cents(n_bins: int = N_BINS, device=None, dtype=torch.float32) -> torch.Tensor:
    """Centre of every output bin in cents (relative to 10 Hz)."""
    return FIRST_BIN_CENTS + CENTS_PER_BIN * torch.arange(n_bins, device=device, dtype=dtype)


def hz_to_cents(f0: torch.Tensor) -> torch.Tensor:
    return 1200.0 * torch.log2(f0 / 10.0)


def cents_to_hz(cents: torch.Tensor) -> torch.Tensor:
    return 10.0 * torch.exp2(cents / 1200.0)


def gaussian_targets(
    f0_hz: torch.Tensor, voiced: torch.Tensor, blur_cents: float = 25.0, n_bins: int = N_BINS
) -> torch.Tensor:
    """CREPE training targets: a Gaussian of std ``blur_cents`` around the true pitch on
    the bin grid for voiced frames, all zeros for unvoiced ones. Shape ``(*f0.shape, n_bins)``."""
    grid = bin_cents(n_bins, device=f0_hz.device)
    cents = hz_to_cents(f0_hz.float().clamp_min(1e-3)).unsqueeze(-1)
    targets = torch.exp(-((grid - cents) ** 2) / (2.0 * blur_cents**2))
    return targets * voiced.unsqueeze(-1).to(targets.dtype)
