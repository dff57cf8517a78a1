"""Multichannel Wiener filtering of source spectrogram estimates (batched torch).

This is the post-processing used by norbert / open-unmix / Spleeter: each source j is a
local Gaussian model, zero-mean with covariance ``v_j(f, n) R_j(f)`` in every time-frequency
bin (a power spectral density ``v_j`` times a time-invariant spatial covariance matrix
``R_j``). Given initial estimates, a few iterations of the simplified EM algorithm of
Nugraha, Liutkus & Vincent (2016) re-estimate ``(v_j, R_j)`` from the current source
estimates and filter the mixture again with the multichannel Wiener gains
``W_j = v_j R_j (sum_k v_k R_k)^-1``. Like norbert, the parameter update uses the empirical
covariance of the current estimates rather than the exact posterior covariance, which is
the variant known to work better on music.
"""

from __future__ import annotations

import math

import torch


def wiener(
    mag_estimates: torch.Tensor,
    mix_stft: torch.Tensor,
    iterations: int = 1,
    softmask: bool = False,
    residual: bool = False,
    eps: float = 1e-10,
    scale_factor: float = 10.0,
    block_frames: int = 256,
) -> torch.Tensor:
    """Separate ``mix_stft`` with Wiener filters built from source magnitude estimates.

    Args:
        mag_estimates: nonnegative ``(B, S, C, F, N)`` magnitude spectrograms of the S
            sources (``C`` may be 1: a mono estimate is shared by all channels).
        mix_stft: complex ``(B, C, F, N)`` mixture STFT.
        iterations: EM iterations; 0 returns the initial estimates unchanged.
        softmask: initial estimates from the ratio mask ``|s_j| / sum_k |s_k|`` applied to the
            mixture (sources then sum to the mixture); otherwise the magnitudes with the
            mixture phase.
        residual: add a source ``mix - sum_j s_j`` (computed on the initial estimates), so
            that the output has ``S + 1`` sources that explain the whole mixture.
        eps: regularisation (energy of the white noise taken out of the model).
        scale_factor: the mixture is scaled to peak magnitude ``scale_factor`` (per item)
            during EM, for numerical stability in single precision.
        block_frames: frames processed at once when building and inverting the mixture
            covariances (bounds memory on long spectrograms).

    Returns:
        complex ``(B, S', C, F, N)`` source STFTs, ``S' = S + residual``, in the mixture's dtype.
    """
    if not mix_stft.is_complex():
        raise ValueError("mix_stft must be complex")
    if mag_estimates.dim() != 5 or mix_stft.dim() != 4:
        raise ValueError(
            f"expected mag_estimates (B, S, C, F, N) and mix_stft (B, C, F, N), got "
            f"{tuple(mag_estimates.shape)} and {tuple(mix_stft.shape)}"
        )
    batch, channels, bins, frames = mix_stft.shape
    real_dtype = mix_stft.real.dtype
    v = mag_estimates.to(real_dtype)
    v = v.expand(batch, v.shape[1], channels, bins, frames)
    x = mix_stft.unsqueeze(1)

    if softmask:
        y = x * (v / (eps + v.sum(dim=1, keepdim=True)))
    else:
        y = v * torch.exp(1j * torch.angle(x))
    if residual:
        y = torch.cat([y, x - y.sum(dim=1, keepdim=True)], dim=1)
    if iterations <= 0:
        return y

    # the EM works on a mixture whose peak magnitude is about scale_factor, per item
    scale = (mix_stft.abs().amax(dim=(1, 2, 3)) / scale_factor).clamp_min(1.0)
    scale = scale.view(batch, 1, 1, 1)
    y = _expectation_maximization(
        y / scale[:, None], mix_stft / scale, iterations, eps, block_frames
    )
    return y * scale[:, None]


def _expectation_maximization(
    y: torch.Tensor, x: torch.Tensor, iterations: int, eps: float, block_frames: int
) -> torch.Tensor:
    """Refine source estimates ``y (B, S, C, F, N)`` of the mixture ``x (B, C, F, N)``."""
    frames = x.shape[-1]
    channels = x.shape[1]
    xt = x.permute(0, 2, 3, 1)  # (B, F, N, C): channel vectors last for the matrix algebra
    regularisation = math.sqrt(eps) * torch.eye(channels, dtype=x.dtype, device=x.device)
    for _ in range(iterations):
        # PSD: source power averaged over channels
        v = y.abs().square().mean(dim=2)  # (B, S, F, N)
        yt = y.permute(0, 1, 3, 4, 2)  # (B, S, F, N, C)
        # spatial covariance: sum_n y y^H normalised by the total PSD (weighted average)
        r = torch.einsum("bsfnc,bsfnd->bsfcd", yt, yt.conj())
        r = r / (eps + v.sum(dim=-1))[..., None, None]
        blocks = []
        for start in range(0, frames, block_frames):
            vb = v[..., start : start + block_frames]
            cxx = torch.einsum("bsfn,bsfcd->bfncd", vb.to(r.dtype), r) + regularisation
            # W_j x = v_j R_j (Cxx^-1 x): solve once for all sources
            z = _solve(cxx, xt[:, :, start : start + block_frames])
            blocks.append(vb[..., None] * torch.einsum("bsfcd,bfnd->bsfnc", r, z))
        y = torch.cat(blocks, dim=3).permute(0, 1, 4, 2, 3)
    return y


def _solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a^-1 b`` for batches of small matrices ``a (..., C, C)`` and vectors ``b (..., C)``;
    closed forms for C = 1, 2 (elementwise, fast on any device), LAPACK otherwise."""
    channels = a.shape[-1]
    if channels == 1:
        return b / a[..., 0]
    if channels == 2:
        a00, a01, a10, a11 = a[..., 0, 0], a[..., 0, 1], a[..., 1, 0], a[..., 1, 1]
        det = a00 * a11 - a01 * a10
        b0, b1 = b[..., 0], b[..., 1]
        return torch.stack([(a11 * b0 - a01 * b1) / det, (a00 * b1 - a10 * b0) / det], dim=-1)
    return torch.linalg.solve(a, b.unsqueeze(-1)).squeeze(-1)
