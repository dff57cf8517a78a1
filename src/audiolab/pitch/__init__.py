"""Pitch helpers shared by networks, the pitch LightningModule, metrics and inference."""

from audiolab.pitch.cents import bin_cents, cents_to_hz, gaussian_targets, hz_to_cents
from audiolab.pitch.decode import DECODERS, decode

__all__ = ["DECODERS", "bin_cents", "cents_to_hz", "decode", "gaussian_targets", "hz_to_cents"]
