"""Frame spectra, and the whole-track correlations of the reference channels with every
channel at lags below the filter length: summed from the cross-spectra of tiles of the
track (the frames, where they tile it), plus the pairs of samples across tile boundaries."""

from __future__ import annotations

from typing import NamedTuple

import torch

from audiolab.metrics.bss_eval.framing import next_fast_len

# Complex elements of frame spectra held at once (2 GiB): where a track's fit, they are
# taken once and serve the energies too; else group by group, and again for the energies.
MAX_SPEC_ELEMS = 2**27
# Complex elements of one FFT's output: glibc serves blocks this small from its heap.
FFT_ELEMS = 2**18
# Complex elements of one chunk of the frequency-chunked loops (small enough for the cache).
CHUNK_ELEMS = 2**17
# Tile length for the correlations where the frames do not tile the track.
CORR_TILE = 32768


def frame_spectra(
    signals: list[torch.Tensor], starts: list[int], width: int, n_fft: int, out=None
) -> torch.Tensor:
    """Frequency-major spectra ``(F, T, K)`` (into ``out`` where given) of the frames
    ``x[..., s : s + width]`` (zeros past the end) of the ``(n, C, N)`` tensors in
    ``signals``, zero-padded to ``n_fft``; ``K`` runs over (tensor, n, C)."""
    n_rows = sum(x.shape[0] * x.shape[1] for x in signals)
    n_freq = n_fft // 2 + 1
    if out is None:
        out = signals[0].new_empty(n_freq, len(starts), n_rows, dtype=torch.complex128)
    step = min(len(starts), max(1, FFT_ELEMS // (n_rows * n_freq)))
    tiles = signals[0].new_zeros(step, n_rows, n_fft)  # rfft's own zero-padding is slower
    for t0 in range(0, len(starts), step):
        part = starts[t0 : t0 + step]
        for t, start in enumerate(part):
            row = 0
            for x in signals:
                k, seg = x.shape[0] * x.shape[1], x[..., start : start + width]
                tiles[t, row : row + k].unflatten(0, x.shape[:2])[..., : seg.shape[-1]] = seg
                tiles[t, row : row + k, seg.shape[-1] : width] = 0  # past the end of the track
                row += k
        spec = torch.fft.rfft(tiles[: len(part)])
        # to frequency-major in chunks that stay in cache
        f_step = max(1, CHUNK_ELEMS // (len(part) * n_rows))
        for f0 in range(0, n_freq, f_step):
            out[f0 : f0 + f_step, t0 : t0 + len(part)] = spec[..., f0 : f0 + f_step].permute(
                2, 0, 1
            )
    return out


def cross_spectra(spec: torch.Tensor, p: int) -> torch.Tensor:
    """``sum_t conj(X_t[:p])^T X_t``, ``(F, p, K)``, of frequency-major spectra ``spec (F, T,
    K)``, in frequency chunks that stay in cache."""
    n_freq, n_t, k = spec.shape
    acc = spec.new_empty(n_freq, p, k)
    f_step = max(1, CHUNK_ELEMS // (n_t * (p + k)))
    for f0 in range(0, n_freq, f_step):
        x = spec[f0 : f0 + f_step]
        torch.matmul(x[..., :p].mH, x, out=acc[f0 : f0 + f_step])
    return acc


def lags(acc: torch.Tensor, n_fft: int, lag: int) -> torch.Tensor:
    """Correlations at lags ``-lag..lag``, ``(2 lag + 1, ...)``, from summed cross-spectra
    ``acc (F, ...)`` given as ``conj(X)^T Y`` (the conjugate of the wanted ``X^T conj(Y)``),
    a few columns per inverse FFT."""
    flat = acc.reshape(acc.shape[0], -1)
    out = acc.real.new_empty(2 * lag + 1, flat.shape[1])
    cols = max(1, FFT_ELEMS // n_fft)
    for c0 in range(0, flat.shape[1], cols):
        r = torch.fft.irfft(flat[:, c0 : c0 + cols].conj(), n=n_fft, dim=0)
        out[:lag, c0 : c0 + cols] = r[n_fft - lag :]
        out[lag:, c0 : c0 + cols] = r[: lag + 1]
    return out.view(2 * lag + 1, *acc.shape[1:])


def boundary_correlations(
    signals: list[torch.Tensor], p: int, bounds: list[int], lag: int
) -> torch.Tensor:
    """What per-tile spectra miss of ``r[m, i, j] = sum_n y[i, n + m] y[j, n]`` (``y`` the
    channels of ``signals`` as in :func:`frame_spectra`, ``i < p``, ``|m| <= lag``), ``(2 lag +
    1, p, K)``: the pairs of samples across the ``bounds`` (of tiles at least ``lag`` long)."""
    k = sum(x.shape[0] * x.shape[1] for x in signals)
    n_fft = next_fast_len(3 * lag + 1)  # segments of 2 lag samples: wanted lags never wrap
    n_freq = n_fft // 2 + 1
    acc = signals[0].new_zeros(n_freq, p, k, dtype=torch.complex128)
    step = max(1, FFT_ELEMS // (2 * k * n_freq))
    for b0 in range(0, len(bounds), step):
        part = bounds[b0 : b0 + step]
        # lag samples before each boundary, and up to lag after it, abutting: (2, K, B, n_fft)
        sides = signals[0].new_zeros(2, k, len(part), n_fft)
        row = 0
        for x in signals:
            rows = sides[:, row : row + x.shape[0] * x.shape[1]].unflatten(1, x.shape[:2])
            row += x.shape[0] * x.shape[1]
            for i, b in enumerate(part):
                after = x[..., b : b + lag]
                rows[0, ..., i, :lag] = x[..., b - lag : b]
                rows[1, ..., i, lag : lag + after.shape[-1]] = after
        spec = torch.fft.rfft(sides.view(-1, n_fft))
        # frequency-major (F, 2, K, B) by one 2-D transposing copy
        before, after = spec.T.contiguous().view(n_freq, 2, k, len(part)).unbind(1)
        # x before with y after, and x after with y before
        acc.baddbmm_(before[:, :p].conj(), after.mT).baddbmm_(after[:, :p].conj(), before.mT)
    return lags(acc, n_fft, lag)


class Tiling(NamedTuple):
    starts: list[int]
    length: int
    n_fft: int
    per_group: int  # tiles whose spectra are held at once
    held: bool  # the tiles are the frames, and the spectra of all are held at once


def frames_per_group(n_rows: int, n_fft: int) -> int:
    return max(1, MAX_SPEC_ELEMS // (n_rows * (n_fft // 2 + 1)))


def tiling(n_samples: int, starts: list[int], win_len: int, n_fft: int, lag: int, p: int) -> Tiling:
    """The frames where they tile the track (hop == window, the default), else tiles of
    ``CORR_TILE`` samples; ``p`` reference channels, as many estimate channels."""
    framed = win_len > lag and (len(starts) == 1 or starts[1] - starts[0] == win_len)
    length = win_len if framed else max(CORR_TILE, 2 * lag + 2)
    tile_fft = n_fft if framed else next_fast_len(length + lag)
    tiles = list(range(0, n_samples, length))
    per_group = frames_per_group(2 * p, tile_fft)
    return Tiling(tiles, length, tile_fft, per_group, framed and per_group >= len(tiles))


def track_correlations(
    signals: list[torch.Tensor], tiles: Tiling, lag: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Whole-track correlations ``(2 lag + 1, P, 2 P)`` of the reference channels with the
    reference and estimate channels (``signals``: references, estimates, ``(S, C, N)``),
    and where ``tiles.held`` the spectra of all frames ``(F, T, 2 P)`` (else None)."""
    p = signals[0].shape[0] * signals[0].shape[1]
    boundary = boundary_correlations(signals, p, tiles.starts[1:], lag)
    n_group = min(tiles.per_group, len(tiles.starts))
    buf = signals[0].new_empty(tiles.n_fft // 2 + 1, n_group, 2 * p, dtype=torch.complex128)
    acc = None
    for t0 in range(0, len(tiles.starts), n_group):
        part = tiles.starts[t0 : t0 + n_group]
        spec = frame_spectra(signals, part, tiles.length, tiles.n_fft, buf[:, : len(part)])
        part = cross_spectra(spec, p)
        acc = part if acc is None else acc.add_(part)
    return lags(acc, tiles.n_fft, lag) + boundary, (buf if tiles.held else None)
