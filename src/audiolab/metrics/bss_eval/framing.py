"""Frames as museval cuts them, FFT sizes, and museval's silent-frame test."""

from __future__ import annotations

import math

import numpy as np
import torch

# The silence test looks at every SILENCE_STRIDE-th sample first.
SILENCE_STRIDE = 97


def next_fast_len(n: int) -> int:
    """Smallest 7-smooth integer >= n: an FFT size that MKL, pocketfft and cuFFT do quickly."""
    m = max(1, n)
    while True:
        k = m
        for f in (2, 3, 5, 7):
            while k % f == 0:
                k //= f
        if k == 1:
            return m
        m += 1


def frame_starts(n_samples: int, window: float, hop: float) -> tuple[list[int], int]:
    """Frame starts and length as museval's ``Framing``: a trailing partial frame is dropped,
    and a window at least as long as the signal gives one whole-signal frame."""
    if not window < n_samples:
        return [0], n_samples
    if not math.isfinite(hop) or hop <= 0:
        raise ValueError(f"hop must be a positive finite number, got {hop}")
    if window != int(window):
        raise ValueError(f"window must be an integer number of samples, got {window}")
    n_win = int(np.floor((n_samples - window + hop) / hop))
    return [int(np.floor(t * hop)) for t in range(n_win)], int(window)


def frames(x: torch.Tensor, starts: list[int], width: int) -> torch.Tensor:
    """``(..., T, width)`` frames ``x[..., s : s + width]`` of ``x (..., N)``, all inside it: a
    strided view where the starts are evenly spaced (all but fractional hops)."""
    steps = {b - a for a, b in zip(starts[:-1], starts[1:], strict=True)}
    if len(steps) <= 1:
        step = steps.pop() if steps else 1
        return x[..., starts[0] :].unfold(-1, width, step)[..., : len(starts), :]
    idx = torch.tensor(starts, device=x.device)[:, None] + torch.arange(width, device=x.device)
    return x[..., idx]


def silent_frames(
    refs: torch.Tensor, ests: torch.Tensor, starts: list[int], width: int
) -> torch.Tensor:
    """museval's silence test, ``(T,)``: some reference or estimate ``(S, N, C)`` whose channel
    sum is zero at every sample of the frame. Raises where one is silent over the whole track
    (museval refuses those too). One nonzero sample proves a frame active, so a sparse grid
    of samples is read first, and every sample only where that found none."""

    def active(x: torch.Tensor) -> torch.Tensor:
        """``(..., C, W)`` -> ``(...,)``: some sample with a nonzero channel sum."""
        total = x[..., 0, :].clone()
        for c in range(1, x.shape[-2]):  # (faster than torch's sum over a short axis)
            total += x[..., c, :]
        return (total != 0).any(dim=-1)

    silent = torch.zeros(len(starts), dtype=torch.bool, device=refs.device)
    for x in (refs, ests):
        x = x.transpose(1, 2)  # (S, C, N)
        sparse = active(x[..., ::SILENCE_STRIDE])
        for s in (~sparse).nonzero().flatten().tolist():
            if not bool(active(x[s])):
                raise ValueError("every reference and estimate must be non-silent over the track")
        framed = frames(x, starts, width)  # (S, C, T, W)
        found = active(framed[..., ::SILENCE_STRIDE].transpose(1, 2))  # (S, T)
        for s, t in (~found).nonzero().tolist():
            found[s, t] = active(framed[s, :, t])
        silent |= ~found.all(dim=0)
    return silent
