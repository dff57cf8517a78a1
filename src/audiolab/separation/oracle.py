"""Oracle separations: what a mask-based separator could reach if it knew the true
sources. They bound spectrogram-masking models from above and put a model's score in
context (SiSEC/museval report IRM1 and IBM; MUSDB18 IRM1 vocals: 8.52 dB median SDR).

All take the mixture ``(C, T)`` and the true sources ``(S, C, T)`` and return estimates
``(S, C, T)``; the masks are applied to the mixture's STFT and inverted with its phase.
The STFT defaults (2048-point Hann frames, hop 1024) are those of sigsep's oracle
scripts, which produced the published oracle tables.
"""

from __future__ import annotations

import torch

from audiolab.audio.stft import Stft

ORACLES = ("irm1", "irm2", "ibm", "mix")


def oracle_separation(
    kind: str,
    mixture: torch.Tensor,
    sources: torch.Tensor,
    n_fft: int = 2048,
    hop_length: int = 1024,
    eps: float = 1e-10,
) -> torch.Tensor:
    """``irm1`` / ``irm2``: ideal ratio masks ``|S_j|^a / sum_k |S_k|^a`` (a = 1, 2);
    ``ibm``: ideal binary mask (1 where a source holds at least half the magnitude sum,
    museval's IBM with theta 0.5 for alpha 1); ``mix``: the mixture as every estimate
    (the score of doing nothing)."""
    if kind not in ORACLES:
        raise ValueError(f"unknown oracle {kind!r}; choose one of {ORACLES}")
    if kind == "mix":
        return mixture.unsqueeze(0).expand_as(sources).clone()
    stft = Stft(n_fft, hop_length).to(mixture.device)
    mix_spec = stft(mixture.double())
    magnitude = stft(sources.double()).abs()
    if kind == "ibm":
        masks = (magnitude / (magnitude.sum(0, keepdim=True) + eps) >= 0.5).double()
    else:
        power = magnitude ** (1 if kind == "irm1" else 2)
        masks = power / (power.sum(0, keepdim=True) + eps)
    return stft.inverse(masks * mix_spec.unsqueeze(0), mixture.shape[-1]).to(mixture.dtype)
