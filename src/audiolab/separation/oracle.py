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

ORACLES = ("irm1", "irm2", "ibm", "mix")


def _stft(x: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    return torch.stft(x.reshape(-1, x.shape[-1]), n_fft, hop_length, window=window, return_complex=True).reshape(
        *x.shape[:-1], n_fft // 2 + 1, -1
    )


def _istft(spec: torch.Tensor, n_fft: int, hop_length: int, length: int) -> torch.Tensor:
    window = torch.hann_window(n_fft, device=spec.device, dtype=spec.real.dtype)
    flat = spec.reshape(-1, *spec.shape[-2:])
    return torch.istft(flat, n_fft, hop_length, window=window, length=length).reshape(*spec.shape[:-2], length)


def oracle_separation(
    kind: str, mixture: torch.Tensor, sources: torch.Tensor, n_fft: int = 2048, hop_length: int = 1024, eps: float = 1e-10
) -> torch.Tensor:
    """``irm1`` / ``irm2``: ideal ratio masks ``|S_j|^a / sum_k |S_k|^a`` (a = 1, 2);
    ``ibm``: ideal binary mask (1 where a source holds at least half the magnitude sum,
    museval's IBM with theta 0.5 for alpha 1); ``mix``: the mixture as every estimate
    (the score of doing nothing)."""
    if kind not in ORACLES:
        raise ValueError(f"unknown oracle {kind!r}; choose one of {ORACLES}")
    if kind == "mix":
        return mixture.unsqueeze(0).expand_as(sources).clone()
    mix_spec = _stft(mixture.double(), n_fft, hop_length)
    magnitude = _stft(sources.double(), n_fft, hop_length).abs()
    if kind == "ibm":
        masks = (magnitude / (magnitude.sum(0, keepdim=True) + eps) >= 0.5).double()
    else:
        power = magnitude ** (1 if kind == "irm1" else 2)
        masks = power / (power.sum(0, keepdim=True) + eps)
    return _istft(masks * mix_spec.unsqueeze(0), n_fft, hop_length, mixture.shape[-1]).to(mixture.dtype)
