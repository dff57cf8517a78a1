"""BSSEval v4 (museval's default "images" mode) in batched float64 torch.

Same definitions as ``museval.metrics.bss_eval(refs, ests, window, hop,
framewise_filters=False, bsseval_sources_version=False)``: distortion filters of
``filter_len`` taps are estimated once over the whole track by least squares (the normal
equations ``(G + eps I) c = D``, ``G`` the Gram matrix of all delayed reference channels,
``eps`` numpy's float64 eps, as museval), then each frame's references are projected with
those filters, and SDR, ISR, SIR, SAR come from the energies of the decomposition.

Where museval spends its time, and what is done here instead (same numbers):

* the solve (most of museval's time): museval factorises the dense ``(L P) x (L P)`` Gram
  matrix (``L`` taps, ``P`` reference channels: 4096 x 4096 for 4 stereo targets) once per
  estimate, plus once per target for its own-reference projection. ``G`` is block Toeplitz
  (one ``P x P`` block per lag), so here one block Schur recursion gives its Cholesky factor
  in ``O(L^2 P^3)``; it serves every estimate, and the own-reference systems (the sources'
  diagonal blocks of ``G``) are factorised in one batch;
* the correlations that ``G`` and the right-hand sides are made of (lags below ``L`` only)
  come from the spectra of the frames themselves (when the frames tile the track, as with
  1-s windows and hops), plus a correction from short segments around the frame boundaries,
  instead of one full-length FFT product per pair of channels;
* the frames: all are projected at once in the frequency domain and the energies are read
  off the spectra by Parseval, so no inverse FFT is taken, in frequency chunks that stay in
  cache;
* the factorisation needs only the references' correlations, so on 2-4 threads it runs on
  a helper thread alongside the estimates' spectra; before, the helper sums the frames'
  squares and takes the boundary correction while the references' spectra are taken, and it
  takes a share of every spectra, cross-spectra and lags loop once done with its own tasks;
* memory: the frame spectra, the Schur factors, the filter spectra and the cross-spectra
  (0.7 GB for a 60-s 4-target track) come from a pool of buffers kept from one call to the
  next (:class:`audiolab.utils.memory.ScratchPool`; on Linux the kernel may take their pages
  back between calls, and :func:`release_buffers` lets them go), backed by transparent huge
  pages where the kernel has them (the spectra are written and read with strides of
  kilobytes): mapped afresh on every call, their page faults cost a third of a call. Every
  FFT runs on a few rows at a time, so that its output and work buffers come from glibc's
  heap rather than fresh mappings;
* long tracks: up to 2 GiB of spectra are held at once (4 stereo targets up to 6.2
  minutes); longer tracks take their spectra group by group, twice (for the correlations,
  then for the energies), at about twice the time per second of audio.

Degenerate references that real stems have (an all-zero channel, a channel identical to
another: dual mono) make ``G`` singular but for museval's ``eps``; the zero or duplicate
channel is taken out of the least squares (its filter is zero; the projection, which is all
the metrics see, is museval's). When ``G`` is singular to working precision without such an
exact cause (stems without a noise floor: band-limited synthetic audio never quantised),
museval's ISR/SIR/SAR are rounding noise: a one-ulp change of the references, or another
BLAS thread count, moves them by up to 19 dB (measured), so no implementation can match
them. There the Schur recursion breaks down; the diagonal then gets the smallest ridge in
``_RIDGES`` (times the largest channel energy) that lets it through, with a warning, and the
projection it gives is reported: stable under such changes, and SDR (which needs no
projection) is museval's.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import NamedTuple

import numpy as np
import torch
from torch.profiler import record_function

from audiolab.utils.memory import Lease, ScratchPool

__all__ = ["bss_eval_v4", "release_buffers"]

# museval adds numpy's float eps (an absolute number, not relative) to the Gram diagonal.
_EPS = float(np.finfo(np.float64).eps)
# Ridges (relative to the largest channel energy) tried in turn, only where G is singular to
# working precision: the smallest with which the Schur recursion goes through is used.
_RIDGES = (1e-12, 1e-11, 1e-10, 1e-9, 1e-8, 1e-7, 1e-6)
# Tile length for the correlations when the frames do not tile the track.
_CORR_TILE = 32768
# Caps on complex elements: spectra held at once (2 GiB, bounds memory on long tracks: 4
# stereo targets up to 6.2 minutes take the fast path, where the spectra are taken once and
# the factorisation overlaps them), spectra of one FFT call, and one chunk of the
# frequency-chunked loops (small enough to stay in cache).
_MAX_SPEC_ELEMS = 2**27
_FFT_ELEMS = 2**18
_CHUNK_ELEMS = 2**17
# Most torch threads with which the factorisation runs alongside the estimates' spectra (each
# then on one thread: torch's thread setting is per process). With more, taking the spectra on
# all of them and then factorising should be as fast (measured only on 2 cores here).
_OVERLAP_MAX_THREADS = 4
# Most rows of one block of the block Schur recursion (lags are grouped up to it).
_SCHUR_BLOCK = 32
# Samples between those looked at first by the silence test.
_SILENCE_STRIDE = 97
# Buffers of 4 MB or more that the code allocates itself (frame spectra, Schur factors,
# filter spectra, cross-spectra: 0.7 GB for a 60-s 4-target track, 2.4 GB for 6 minutes) are kept
# from one call to the next: mapped afresh, their page faults cost about a third of a call.
_SCRATCH = ScratchPool(min_bytes=2**22, max_bytes=3 * 2**30)


def release_buffers() -> None:
    """Let go of the scratch buffers :func:`bss_eval_v4` keeps between calls (unmapped at
    once; on Linux the kernel takes their pages back by itself when memory runs short)."""
    _SCRATCH.clear()


@contextmanager
def _torch_threads(n: int | None, device: torch.device):
    """torch's CPU threads set to ``n`` (None: left alone) inside, restored afterwards."""
    if n is None or device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _empty(
    lease: Lease | None, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """An uninitialised tensor, from ``lease`` where given."""
    if lease is None:
        return torch.empty(shape, dtype=dtype, device=device)
    return lease.empty(shape, dtype, device)


def _as_3d_float64(x: np.ndarray | torch.Tensor, device: torch.device | None) -> torch.Tensor:
    """``np.atleast_3d`` semantics (museval's input handling), as a float64 tensor."""
    t = torch.as_tensor(x)
    if device is not None:
        t = t.to(device)
    t = t.to(torch.float64)
    if t.ndim == 1:
        t = t[None, :, None]
    elif t.ndim == 2:
        t = t[:, :, None]
    return t


def _next_fast_len(n: int) -> int:
    """Smallest 7-smooth integer >= n: an FFT size MKL, pocketfft and cuFFT handle quickly
    (44800 for a 1-s frame and 512 taps: 10 % faster than the 5-smooth 45000)."""
    best = 1 << max(0, (n - 1).bit_length())
    p7 = 1
    while p7 < best:
        p5 = p7
        while p5 < best:
            p3 = p5
            while p3 < best:
                m = p3
                while m < n:
                    m *= 2
                best = min(best, m)
                p3 *= 3
            p5 *= 5
        p7 *= 7
    return best


def _frame_starts(n_samples: int, window: float, hop: float) -> tuple[list[int], int]:
    """Frame starts and frame length, exactly as museval's ``Framing`` (a trailing partial
    frame is dropped; a window at least as long as the signal gives one whole-signal frame)."""
    if not window < n_samples:
        return [0], n_samples
    if not math.isfinite(hop) or hop <= 0:
        raise ValueError(f"hop must be a positive finite number, got {hop}")
    if window != int(window):
        raise ValueError(f"window must be an integer number of samples, got {window}")
    n_win = int(np.floor((n_samples - window + hop) / hop))
    starts = [int(np.floor(t * hop)) for t in range(n_win)]
    return starts, int(window)


def _frames(x: torch.Tensor, starts: list[int], width: int) -> torch.Tensor:
    """``(..., T, width)`` frames ``x[..., s : s + width]`` of ``x (..., N)``, all inside it: a
    strided view when the starts are evenly spaced (always, but for fractional hops)."""
    steps = {b - a for a, b in zip(starts[:-1], starts[1:], strict=True)}
    if len(steps) <= 1:
        step = steps.pop() if steps else 1
        return x[..., starts[0] :].unfold(-1, width, step)[..., : len(starts), :]
    idx = torch.tensor(starts, device=x.device)[:, None] + torch.arange(width, device=x.device)
    return x[..., idx]


class _Items:
    """A thread-safe iterator over ``items``: two threads looping over it share the loop."""

    def __init__(self, items) -> None:
        self._it = iter(items)
        self._lock = threading.Lock()

    def __iter__(self) -> _Items:
        return self

    def __next__(self):
        with self._lock:
            return next(self._it)


def _in_parallel(work: Callable[[], None], helper: ThreadPoolExecutor | None) -> None:
    """Run ``work`` (a loop over an :class:`_Items`) here and, with ``helper``, on its thread
    too once done with the tasks queued before; return when both are done."""
    shared = None if helper is None else helper.submit(work)
    work()
    if shared is not None:
        shared.result()


def _fill_spectra(
    out: torch.Tensor,
    signals: list[torch.Tensor],
    starts: list[int],
    width: int,
    n_fft: int,
    helper: ThreadPoolExecutor | None = None,
) -> None:
    """Write into ``out (F, T, K)`` the frequency-major spectra of the frames
    ``x[..., s : s + width]`` (zeros past the end) of the ``(n, C, N)`` tensors in ``signals``,
    zero-padded to ``n_fft``; ``K`` runs over (tensor, n, C). Frequency-major, the batched
    matmuls over frequencies read contiguous slices. With ``helper``, its thread takes
    frames too once done with the tasks before."""
    n_rows = out.shape[-1]
    n_freq = n_fft // 2 + 1
    # A few frames per FFT call: a small output (and MKL's work buffer of the same size), and
    # the input buffer, are reused from the heap by the next call, where a large one costs a
    # page fault per page (calls over 23 frames measured 2x slower); a fresh output beats
    # ``out=`` (1.2-1.9x).
    step = min(len(starts), max(1, _FFT_ELEMS // (n_rows * n_freq)))
    groups = _Items(range(0, len(starts), step))

    def work() -> None:
        tiles = signals[0].new_empty(step, n_rows, n_fft)
        for t0 in groups:
            _fill_tile(out, tiles, signals, starts[t0 : t0 + step], t0, width)

    _in_parallel(work, helper)


def _fill_tile(
    out: torch.Tensor,
    tiles: torch.Tensor,
    signals: list[torch.Tensor],
    part: list[int],
    t0: int,
    width: int,
) -> None:
    """The spectra of the frames starting at ``part`` (frames ``t0..``) into ``out``, by way
    of the FFT input buffer ``tiles`` (see :func:`_fill_spectra`)."""
    n = signals[0].shape[-1]
    n_rows, n_freq = out.shape[-1], out.shape[0]
    full = sum(s + width <= n for s in part)  # ascending starts: a partial tile ends them
    # Padding by hand (rfft's own ``n=`` padding is markedly slower), zeroing only the pad.
    row = 0
    for x in signals:
        view = tiles[: len(part), row : row + x.shape[0] * x.shape[1]].unflatten(1, x.shape[:2])
        row += x.shape[0] * x.shape[1]
        if full:
            view[:full, ..., :width] = _frames(x, part[:full], width).permute(2, 0, 1, 3)
        for t in range(full, len(part)):
            view[t, ..., : n - part[t]] = x[..., part[t] :]
    tiles[:full, :, width:] = 0
    for t in range(full, len(part)):
        tiles[t, :, n - part[t] :] = 0
    spec = torch.fft.rfft(tiles[: len(part)])
    # to frequency-major in chunks that stay in cache (several times faster than at once)
    f_step = max(1, _CHUNK_ELEMS // (len(part) * n_rows))
    for f0 in range(0, n_freq, f_step):
        out[f0 : f0 + f_step, t0 : t0 + len(part)] = spec[..., f0 : f0 + f_step].permute(2, 0, 1)


def _cross_spectra(
    x: torch.Tensor,
    *ys: torch.Tensor,
    helper: ThreadPoolExecutor | None = None,
    lease: Lease | None = None,
) -> list[torch.Tensor]:
    """``sum_t conj(x_t)^T y_t``, ``(F, Kx, Ky)`` (from ``lease`` where given), of
    frequency-major spectra ``x (F, T, Kx)`` and each ``y (F, T, Ky)``, in one pass of
    frequency chunks that stay in cache; with ``helper``, its thread takes chunks too once
    done with the tasks before."""
    accs = [_empty(lease, (x.shape[0], x.shape[-1], y.shape[-1]), x.dtype, x.device) for y in ys]
    f_step = max(1, _CHUNK_ELEMS // (x.shape[1] * (x.shape[-1] + sum(y.shape[-1] for y in ys))))
    chunks = _Items(range(0, x.shape[0], f_step))

    def work() -> None:
        for f0 in chunks:
            xh = x[f0 : f0 + f_step].mH
            for y, acc in zip(ys, accs, strict=True):
                torch.matmul(xh, y[f0 : f0 + f_step], out=acc[f0 : f0 + f_step])

    _in_parallel(work, helper)
    return accs


def _spectra(
    signals: list[torch.Tensor],
    starts: list[int],
    width: int,
    n_fft: int,
    n_corr: int = 0,
    lease: Lease | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Frequency-major spectra ``(F, T, K)`` of the frames of ``signals`` (see
    :func:`_fill_spectra`) and, with ``n_corr``, the cross-spectra summed over frames
    ``(F, n_corr, K)``, ``sum_t conj(X_t[:n_corr])^T X_t`` (else None); the spectra from
    ``lease`` where given."""
    n_rows = sum(x.shape[0] * x.shape[1] for x in signals)
    shape = (n_fft // 2 + 1, len(starts), n_rows)
    out = _empty(lease, shape, torch.complex128, signals[0].device)
    _fill_spectra(out, signals, starts, width, n_fft)
    return out, (_cross_spectra(out[..., :n_corr], out)[0] if n_corr else None)


def _rfft_rows(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out (R, F) = rfft(x (R, N))``, in groups of rows whose outputs (and FFT work
    buffers) glibc serves from its heap: outputs of tens of MB are mapped afresh on every
    call, a page fault per 4 KB."""
    rows = max(1, _FFT_ELEMS // out.shape[-1])
    for r0 in range(0, x.shape[0], rows):
        out[r0 : r0 + rows] = torch.fft.rfft(x[r0 : r0 + rows])
    return out


def _lags(
    acc: torch.Tensor, n_fft: int, lag: int, helper: ThreadPoolExecutor | None = None
) -> torch.Tensor:
    """Correlations at lags ``-lag..lag`` from summed cross-spectra ``acc (F, ...)``, ``conj(X)^T
    Y`` (the conjugate of the wanted ``X^T conj(Y)``), ``(2 lag + 1, ...)``; a few columns
    at a time (see :func:`_rfft_rows`), with ``helper``'s thread taking some too."""
    flat = acc.reshape(acc.shape[0], -1)
    out = acc.real.new_empty(2 * lag + 1, flat.shape[1])
    cols = max(1, _FFT_ELEMS // n_fft)
    groups = _Items(range(0, flat.shape[1], cols))

    def work() -> None:
        for c0 in groups:
            r = torch.fft.irfft(flat[:, c0 : c0 + cols].conj(), n=n_fft, dim=0)
            out[:lag, c0 : c0 + cols] = r[n_fft - lag :]
            out[lag:, c0 : c0 + cols] = r[: lag + 1]

    _in_parallel(work, helper)
    return out.view(2 * lag + 1, *acc.shape[1:])


def _boundary_correlations(
    signals: list[torch.Tensor], p: int, bounds: list[int], lag: int, lease: Lease | None = None
) -> torch.Tensor:
    """The part of the correlations ``r[m, i, j] = sum_n y[i, n + m] y[j, n]`` (``y`` the
    channels of ``signals`` stacked as in :func:`_spectra`; lags ``m = -lag..lag``; rows ``i``
    among the first ``p``) that pairs samples on the two sides of a tile boundary, summed over
    the ``bounds`` (tiles at least ``lag`` long), as ``(2 lag + 1, p, K)``. Per-tile spectra
    see only pairs inside one tile; this adds the rest. Scratch buffers come from ``lease``
    (None: a lease of its own, closed on return, when no tensor uses them any more)."""
    if lease is None:
        with _SCRATCH.lease() as lease:
            return _boundary_correlations(signals, p, bounds, lag, lease)
    n = signals[0].shape[-1]
    k = sum(x.shape[0] * x.shape[1] for x in signals)
    if not bounds:
        return signals[0].new_zeros(2 * lag + 1, p, k)
    n_fft = _next_fast_len(3 * lag + 1)  # segments of 2 lag samples: wanted lags never wrap
    # (2, K, B, n_fft): lag samples before each boundary (zeros after), and lag after it
    # (zeros before, and past the end of the track), zero-padded
    device = signals[0].device
    sides = lease.empty((2, k, len(bounds), n_fft), signals[0].dtype, device).zero_()
    inside = sum(b + lag <= n for b in bounds)  # ascending: only the last ones can run past
    row = 0
    for x in signals:
        rows = sides[:, row : row + x.shape[0] * x.shape[1]].unflatten(1, x.shape[:2])
        row += x.shape[0] * x.shape[1]
        rows[0, ..., :lag] = _frames(x, [b - lag for b in bounds], lag)
        if inside:
            rows[1, ..., :inside, lag : 2 * lag] = _frames(x, bounds[:inside], lag)
        for i in range(inside, len(bounds)):
            rows[1, ..., i, lag : lag + n - bounds[i]] = x[..., bounds[i] :]
    n_freq = n_fft // 2 + 1
    spec = lease.empty((2 * k * len(bounds), n_freq), torch.complex128, device)
    _rfft_rows(sides.view(-1, n_fft), spec)  # (2, K, B, F)
    # frequency-major, (F, 2, K, B), by a 2-D transposing copy (torch does those in cache
    # blocks: several times faster than a permuted copy of four dimensions)
    by_freq = lease.empty((n_freq, 2, k, len(bounds)), spec.dtype, device)
    by_freq.view(n_freq, -1).copy_(spec.T)
    before, after = by_freq.unbind(1)
    # x before with y after, and x after with y before, summed over the boundaries
    acc = torch.matmul(before[:, :p], after.mH).baddbmm_(after[:, :p], before.mH)
    return _lags(acc.conj(), n_fft, lag)


def _block_toeplitz_cholesky(
    blocks: torch.Tensor, lease: Lease | None = None, lags_per_block: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cholesky factor of symmetric positive definite block Toeplitz matrices by the block
    Schur algorithm.

    ``blocks (B, L, P, P)``: the first block row, ``T[a, a + k] = blocks[:, k]`` (so
    ``T[a + k, a] = blocks[:, k].T``). Returns ``R (B, L P, L P)`` (from ``lease``, where
    given), upper triangular with ``R^T R = T``, and ``ok (B,)``: False where the recursion
    broke down (``T`` not positive definite to working precision; that ``R`` is garbage).

    The displacement ``T - Z T Z^T`` (``Z`` shifts by one block) is ``u^T u - v^T v`` for a
    ``P``-row generator ``(u, v)``; each step shifts ``u``, zeroes the leading block of ``v``
    with a block hyperbolic rotation, and the rotated ``u`` is the next block row of ``R``.
    The rotation is applied in mixed form (``v`` updated from the already rotated ``u``), the
    form whose factorisation error is of the order of Cholesky's (Bojanczyk, Brent, de Hoog
    and Sweet, 1995). Built from lower Cholesky factors of ``I - K^T K`` and ``I - K K^T``
    (``K`` the reflection coefficient), the rotation keeps each diagonal block of ``R`` upper
    triangular by itself (a QR making it so took a sixth of the time).

    Several lags are taken as one block (the same matrix is block Toeplitz with ``g P x g P``
    blocks too, ``g`` dividing ``L``): fewer steps, each a little dearer. ``lags_per_block``
    (None: the most with blocks of at most ``_SCHUR_BLOCK`` rows): for 512 taps of 8 channels,
    one thread, 4 lags a block took 0.11-0.17 s, 2 lags 0.11-0.14 s, 8 lags 0.19-0.24 s, 1
    lag 0.15-0.25 s (best of 7 calls, three runs; more lags a block: fewer steps, more
    arithmetic)."""
    if lags_per_block is None:
        lags_per_block = _lags_per_block(blocks.shape[1], blocks.shape[-1])
    blocks = _group_blocks(blocks, lags_per_block)
    bsz, n_blk, p, _ = blocks.shape
    eye = torch.eye(p, dtype=blocks.dtype, device=blocks.device)
    u0, info = torch.linalg.cholesky_ex(blocks[:, 0], upper=True)
    failed = info != 0
    row = blocks.permute(0, 2, 1, 3).reshape(bsz, p, n_blk * p)
    # Only the upper triangle is written, and only it is read by the triangular solves.
    r = _empty(lease, (bsz, n_blk, p, n_blk * p), blocks.dtype, blocks.device)
    r[:, 0] = torch.linalg.solve_triangular(u0.mT, row, upper=False)
    v = r[:, 0, :, p:]  # the same row without its lag-0 block
    for k in range(1, n_blk):
        u = r[:, k - 1, :, (k - 1) * p : (n_blk - 1) * p]  # previous row, shifted one block
        u_k = u[:, :, :p]
        # Reflection coefficient K (K u_k = v_k, u_k upper triangular), and lower Cholesky
        # factors l_u l_u^T = I - K^T K, l_v l_v^T = I - K K^T.
        refl = torch.linalg.solve_triangular(u_k, v[:, :, :p], upper=True, left=False)
        pair = torch.stack([refl.mT, refl], dim=1)
        chol, info = torch.linalg.cholesky_ex(eye - pair @ pair.mT)
        failed |= (info != 0).any(dim=1)
        l_u, l_v = chol.unbind(dim=1)
        # The new row is l_u^-1 (u - K^T v); its lag-0 block is l_u^T u_k (as v_k = K u_k),
        # upper triangular as the product of two upper triangular factors.
        to_u = torch.linalg.solve_triangular(l_u, eye, upper=False)
        # (products accumulated in place: baddbmm copies its input first, and writes a
        # strided output through a copy too; two products beat a triangular solve with the
        # long right-hand side, 0.13 s against 0.2 s)
        u_new = (to_u @ u).baddbmm_(to_u @ refl.mT, v, alpha=-1)
        r[:, k, :, k * p :] = u_new
        # Mixed form: v' = l_v^-1 (v - K u) = l_v^T v - l_v^-1 K (u - K^T v), and
        # u - K^T v = l_u u_new.
        from_u = torch.linalg.solve_triangular(l_v, refl @ l_u, upper=False)
        v = (l_v.mT @ v).baddbmm_(from_u, u_new, alpha=-1)[:, :, p:]
    ok = ~failed & torch.isfinite(r[:, -1, :, -p:]).all(dim=(-2, -1))
    return r.reshape(bsz, n_blk * p, n_blk * p), ok


def _lags_per_block(n_lag: int, p: int) -> int:
    """The most lags ``g`` (dividing ``n_lag``) with ``g p <= _SCHUR_BLOCK``, at least 1."""
    return max(g for g in range(1, max(1, _SCHUR_BLOCK // p) + 1) if n_lag % g == 0)


def _group_blocks(blocks: torch.Tensor, g: int) -> torch.Tensor:
    """The first block row ``(B, L, P, P)`` of a symmetric block Toeplitz matrix, as that of
    the same matrix with ``g P x g P`` blocks, ``(B, L / g, g P, g P)`` (``g`` divides ``L``):
    block ``d`` holds lag ``g d + j - i`` at block ``(i, j)``, ``i, j < g`` (lag ``-m`` is the
    transpose of lag ``m``)."""
    bsz, n_lag, p, _ = blocks.shape
    if g == 1:
        return blocks
    # lags -(g - 1)..L - 1, at index lag + g - 1
    ext = torch.cat([blocks[:, 1:g].flip(1).mT, blocks], dim=1)
    i = torch.arange(g, device=blocks.device)
    lag = g * torch.arange(n_lag // g, device=blocks.device)[:, None, None] + i - i[:, None]
    grouped = ext[:, lag + g - 1]  # (B, L / g, g, g, P, P)
    return grouped.transpose(3, 4).reshape(bsz, n_lag // g, g * p, g * p)


def _dead_channels(x: torch.Tensor, energy: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """``(P,)`` mask of the channels of ``x (S, C, N)`` (``P = S C``) that add nothing to the
    span of the delayed references: all-zero channels, and channels identical to an earlier
    one of the same ``group`` (``group (P,)`` ids). ``energy (P,)``, the channel energies,
    rules out most pairs before the exact comparison."""
    n_chan = x.shape[1]
    # an all-zero channel has exactly zero energy (and only such a channel, but in underflow)
    dead = torch.zeros_like(energy, dtype=torch.bool)
    for q in (energy == 0).nonzero().flatten().tolist():
        dead[q] = bool((x[q // n_chan, q % n_chan] == 0).all())
    close = (energy[:, None] - energy[None, :]).abs() <= 1e-9 * energy[:, None]
    candidate = torch.triu(close & (group[:, None] == group[None, :]) & ~dead, diagonal=1)
    for p, q in candidate.nonzero().tolist():
        if not dead[q] and torch.equal(x[p // n_chan, p % n_chan], x[q // n_chan, q % n_chan]):
            dead[q] = True
    return dead


def _factorize(
    gamma: torch.Tensor, dead: torch.Tensor, scale: float, lease: Lease | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cholesky factors ``R (B, L P, L P)`` of ``G + eps I`` for block Toeplitz ``G`` (first
    block row ``gamma (B, L, P, P)``), with the ``dead (B, P)`` channels taken out (their rows
    and columns replaced by the identity: zero filters for zero right-hand sides), and the
    ``(B,)`` ridges used (zero where ``G`` was not singular to working precision; the ridge
    added is that number times ``scale``)."""
    eye = torch.eye(gamma.shape[-1], dtype=gamma.dtype, device=gamma.device)
    live = (~dead).to(gamma.dtype)
    gamma = gamma * live[:, None, :, None] * live[:, None, None, :]
    gamma[:, 0] += eye * (1 - live)[:, None, :] + _EPS * eye
    ridges = gamma.new_zeros(gamma.shape[0])
    # The recursion is hundreds of tiny sequential ops: OpenMP fork/join per op would cost
    # far more than the arithmetic (250x slower measured, 2 threads on 2 busy cores).
    with _torch_threads(1, gamma.device), record_function("bss_eval.schur"):
        chol, ok = _block_toeplitz_cholesky(gamma, lease)
        for ridge in _RIDGES:
            if bool(ok.all()):
                break
            loaded = gamma[~ok]
            loaded[:, 0] += ridge * scale * eye
            chol_ridged, ok_ridged = _block_toeplitz_cholesky(loaded)
            fixed = (~ok).nonzero().flatten()[ok_ridged]
            chol[fixed] = chol_ridged[ok_ridged]
            ridges[fixed] = ridge
            ok[fixed] = True
    if not bool(ok.all()):
        raise ValueError(
            "bss_eval_v4: the Gram matrix of the delayed references stays singular with a "
            f"ridge of {_RIDGES[-1]:g} x the largest channel energy; the references are too "
            "degenerate to evaluate (e.g. constant or a few pure tones)"
        )
    return chol, ridges


def _cho_solve(chol: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(R^T R)^-1 b`` for upper triangular ``R``."""
    with record_function("bss_eval.solve"):
        y = torch.linalg.solve_triangular(chol.mT, b, upper=False)
        return torch.linalg.solve_triangular(chol, y, upper=True)


class _Factor(NamedTuple):
    """Cholesky factors of the distortion-filter systems of one track (see
    :func:`_factor_references`)."""

    chol: torch.Tensor  # (L P, L P): G, the system on all references
    chol_own: torch.Tensor | None  # (S, L C, L C): each source's own (None: one source)
    ridges: torch.Tensor  # (1 or 1 + S,)
    dead_all: torch.Tensor  # (P,) channels taken out of the system on all references
    dead_own: torch.Tensor | None  # (P,) and of the own-reference systems


def _factor_references(
    r: torch.Tensor, refs: torch.Tensor, filter_len: int, lease: Lease | None = None
) -> _Factor:
    """The least-squares systems of the distortion filters, factorised, from the
    correlations ``r (2 filter_len - 1, P, P)`` (lags ``-(filter_len - 1)..filter_len - 1``)
    of the reference channels ``refs (S, C, N)`` among themselves: all they need, so this can
    run while the estimates' spectra are taken."""
    n_src, n_chan, _ = refs.shape
    # gamma[k][p, q] = <ref_p advanced by k, ref_q>: the first block row of the Gram matrix
    # G[(a, p), (b, q)] = <ref_p delayed a, ref_q delayed b> = gamma[b - a][p, q].
    gamma = r[filter_len - 1 :]
    source = torch.arange(n_src, device=r.device).repeat_interleave(n_chan)
    energy = torch.diagonal(gamma[0])
    dead_all = _dead_channels(refs, energy, torch.zeros_like(source))
    scale = energy.max().item()  # ridges, where needed, relative to the largest channel energy
    chol, ridges = _factorize(gamma[None], dead_all[None], scale, lease)
    if n_src == 1:
        # museval solves the identical system twice; it is solved once here, so SIR's zero
        # interference is exactly zero too.
        return _Factor(chol[0], None, ridges, dead_all, None)
    # The own-reference systems: each source's diagonal block of G, (S, L, C, C), in a batch
    # of their own (in one batch with G, as G with the other sources masked, they took 0.11 s
    # of a 60-s track's 0.33 s; 0.065 s so, measured on one thread).
    dead_own = _dead_channels(refs, energy, source)
    own = torch.diagonal(gamma.reshape(filter_len, n_src, n_chan, n_src, n_chan), 0, 1, 3)
    chol_own, ridges_own = _factorize(
        own.permute(3, 0, 1, 2), dead_own.reshape(n_src, n_chan), scale, lease
    )
    return _Factor(chol[0], chol_own, torch.cat([ridges, ridges_own]), dead_all, dead_own)


def _distortion_filters(
    factor: _Factor, r: torch.Tensor, n_src: int, filter_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-track least-squares distortion filters, tap-major, from the factorised systems
    and the correlations ``r (2 filter_len - 1, P, Q)`` of the reference channels with the
    estimate channels.

    Returns ``c_all (L, P, Q)``, projecting every estimate channel ``q = (j, c)`` on all
    reference channels ``p = (i, ci)`` (museval's ``C``), and ``c_own (L, P, C)``, projecting
    the estimate of source ``i`` on reference ``i`` alone (museval's ``Cj``) at rows
    ``p = (i, ci)``."""
    p = r.shape[1]
    n_chan = p // n_src
    _warn_ridge(factor.ridges)
    # rhs[a][p, q] = <ref_p delayed a, est_q>
    rhs = r[filter_len - 1 - torch.arange(filter_len, device=r.device)]
    rhs_all = (rhs * ~factor.dead_all[:, None]).reshape(filter_len * p, p)
    c_all = _cho_solve(factor.chol, rhs_all).reshape(filter_len, p, p)
    if factor.chol_own is None:
        return c_all, c_all
    # rhs_own[i][(a, ci), c] = rhs[a][(i, ci), (i, c)]: estimate i against reference i only
    rhs_own = (rhs * ~factor.dead_own[:, None]).reshape(filter_len, n_src, n_chan, n_src, n_chan)
    rhs_own = torch.diagonal(rhs_own, 0, 1, 3).permute(3, 0, 1, 2)
    c_own = _cho_solve(
        factor.chol_own,
        rhs_own.reshape(n_src, filter_len * n_chan, n_chan),
    )
    return c_all, c_own.reshape(n_src, filter_len, n_chan, n_chan).transpose(0, 1).reshape(
        filter_len, p, n_chan
    )


def _warn_ridge(ridges: torch.Tensor) -> None:
    if bool((ridges > 0).any()):
        warnings.warn(
            "bss_eval_v4: the Gram matrix of the delayed references is singular to working "
            "precision (references without a noise floor, e.g. band-limited synthetic stems "
            f"never quantised); used a ridge of {ridges.max().item():g} x the largest channel "
            "energy. museval's ISR/SIR/SAR are rounding noise on such references (they change "
            "with a one-ulp change of the input), so they cannot be matched there; SDR is "
            "unaffected.",
            RuntimeWarning,
            stacklevel=5,
        )


def _safe_db(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """museval's ``_safe_db``: +inf where the denominator is exactly zero."""
    return torch.where(den == 0, torch.inf, 10.0 * torch.log10(num / den))


def bss_eval_v4(
    references: np.ndarray | torch.Tensor,
    estimates: np.ndarray | torch.Tensor,
    window: float = 44100,
    hop: float = 44100,
    filter_len: int = 512,
    *,
    num_threads: int | None = 1,
) -> dict[str, torch.Tensor]:
    """Framewise BSSEval v4 image metrics, numerically matching museval.

    ``references`` and ``estimates``: ``(n_sources, n_samples, n_channels)`` (museval's
    layout; 1-D/2-D inputs are read like ``np.atleast_3d``), numpy or torch; the maths runs in
    float64 on the device of the first torch input. Estimate ``j`` is scored against
    reference ``j`` (no permutation search). Returns ``{"sdr", "isr", "sir", "sar"}``, each
    float64 ``(n_sources, n_frames)``; frames where any reference or estimate is silent are
    NaN, as in museval.

    ``num_threads``: torch CPU threads for the call (restored afterwards); ``None`` keeps
    torch's setting. One by default: most of the work is many mid-sized ops, where OpenMP
    fork/join costs more than it saves on a few cores and collapses when they are shared
    (measured 3-5x slower with 2 threads on 2 busy cores); evaluate tracks in parallel
    processes instead. With 2 to 4 (one track on an otherwise idle machine), the
    factorisation of the filter systems runs on a helper thread while the estimates' spectra
    are taken on the calling one (1.5-1.7x faster than one thread on 2 idle cores, measured)."""
    device = next((x.device for x in (references, estimates) if torch.is_tensor(x)), None)
    with _torch_threads(num_threads, device or torch.device("cpu")):
        return _bss_eval_v4(references, estimates, window, hop, filter_len, device)


def _bss_eval_v4(references, estimates, window, hop, filter_len, device) -> dict[str, torch.Tensor]:
    """:func:`bss_eval_v4` on ``device`` (None: that of the inputs, CPU for numpy)."""
    refs = _as_3d_float64(references, device)
    ests = _as_3d_float64(estimates, device)
    if refs.shape != ests.shape:
        raise ValueError(f"shape mismatch: references {refs.shape}, estimates {ests.shape}")
    if refs.ndim != 3 or refs.numel() == 0:
        raise ValueError(f"expected non-empty (n_sources, n_samples, n_channels), got {refs.shape}")
    n_src, n_samples, n_chan = refs.shape
    starts, win_len = _frame_starts(n_samples, window, hop)
    with record_function("bss_eval.silence"):
        silent = _silent_frames(refs, ests, starts, win_len)
    # (S, C, N) views of museval's (S, N, C) layout: no copy of the tracks is made.
    signals = [refs.transpose(1, 2), ests.transpose(1, 2)]
    n_fft = _next_fast_len(win_len + filter_len - 1)  # neither convolution nor correlation wraps
    with _SCRATCH.lease() as lease:  # the spectra and factors: valid until the energies are in
        e_dist, e_spat, e_interf, e_artif, e_true, e_target, e_image = _metric_energies(
            signals, starts, win_len, n_fft, filter_len, lease
        )
    out = {
        "sdr": _safe_db(e_true, e_dist),
        "isr": _safe_db(e_true, e_spat),
        "sir": _safe_db(e_image, e_interf),
        "sar": _safe_db(e_target, e_artif),
    }
    # NaN in frames where some reference or estimate is silent, as in museval
    return {k: torch.where(silent[:, None], torch.nan, v).T.contiguous() for k, v in out.items()}


def _metric_energies(
    signals: list[torch.Tensor],
    starts: list[int],
    win_len: int,
    n_fft: int,
    filter_len: int,
    lease: Lease,
) -> torch.Tensor:
    """The energies of :func:`_frame_energies` (``(7, T, S)``), from the references and
    estimates ``signals`` (``(S, C, N)`` each), with the large buffers from ``lease``."""
    n_src, n_chan = signals[0].shape[:2]
    lag = filter_len - 1
    tiling = _tiling(signals[0].shape[-1], starts, win_len, n_fft, lag, n_src * n_chan)
    # On 2-4 CPU threads, two threads share the work, one torch thread each (the factorisation's
    # hundreds of tiny sequential ops would gain nothing from more): this one and a helper,
    # which takes the frames' squares and the boundary correction while the references'
    # spectra are taken, then the factorisation (it needs only the references'
    # correlations) while the estimates' spectra are, and a share of every loop (spectra,
    # cross-spectra, lags) once done with its own tasks.
    threads = torch.get_num_threads()
    overlap = (
        signals[0].device.type == "cpu" and 1 < threads <= _OVERLAP_MAX_THREADS and tiling.held
    )
    try:  # the helper is joined before the thread setting is restored
        with ThreadPoolExecutor(max_workers=1) if overlap else nullcontext() as pool:

            def run(fn: Callable, *args) -> Future:
                """``fn(*args)`` on the helper, or here and now without one."""
                if pool is not None:
                    return pool.submit(fn, *args)
                done: Future = Future()
                done.set_result(fn(*args))
                return done

            if overlap:
                torch.set_num_threads(1)  # one torch thread each: this one and the helper
            samples = run(_sample_energies, signals, starts, win_len) if overlap else None
            factor: list[Future] = []

            def refs_ready(r_refs: torch.Tensor) -> None:
                factor.append(run(_factor_references, r_refs, signals[0], filter_len, lease))

            r, spec = _track_correlations(signals, tiling, lag, refs_ready, lease, pool)
            factored = factor[0].result()
            samples = (samples or run(_sample_energies, signals, starts, win_len)).result()
    finally:
        torch.set_num_threads(threads)
    c_all, c_own = _distortion_filters(factored, r, n_src, filter_len)
    with record_function("bss_eval.energies"):
        filt = _filter_spectra(c_all, c_own, n_fft, n_src, lease)
        return _frame_energies(signals, spec, filt, samples, starts, win_len, n_fft)


def _silent_frames(
    refs: torch.Tensor, ests: torch.Tensor, starts: list[int], width: int
) -> torch.Tensor:
    """museval's silence test per frame, ``(T,)``: some reference or estimate whose channel sum
    is zero at every sample of the frame. Raises where one is silent over the whole track
    (museval refuses those too: the projection would be ill-posed).

    One sample with a nonzero channel sum proves a frame active, so every
    ``_SILENCE_STRIDE``-th sample is looked at first, and all of them only in frames (and
    tracks) where that found none: reading everything is a tenth of the whole evaluation."""

    def active(x: torch.Tensor) -> torch.Tensor:
        """``(..., C, W)`` -> ``(...,)``: some sample with a nonzero channel sum."""
        total = x[..., 0, :].clone()
        for c in range(1, x.shape[-2]):  # torch's sum over a short axis is several times slower
            total += x[..., c, :]
        return (total != 0).any(dim=-1)

    silent = torch.zeros(len(starts), dtype=torch.bool, device=refs.device)
    for x in (refs, ests):
        x = x.transpose(1, 2)  # (S, C, N)
        if not bool(active(x[..., ::_SILENCE_STRIDE]).all()):
            for s in (~active(x[..., ::_SILENCE_STRIDE])).nonzero().flatten().tolist():
                if not bool(active(x[s])):
                    raise ValueError(
                        "every reference and estimate must be non-silent over the track"
                    )
        frames = _frames(x, starts, width)  # (S, C, T, W)
        found = active(frames[..., ::_SILENCE_STRIDE].transpose(1, 2))  # (S, T)
        for s, t in (~found).nonzero().tolist():
            found[s, t] = active(frames[s, :, t])
        silent |= ~found.all(dim=0)
    return silent


class _Tiling(NamedTuple):
    """Tiles of a track for its correlations (see :func:`_tiling`)."""

    starts: list[int]
    length: int
    n_fft: int
    per_group: int  # tiles whose spectra are held at once
    held: bool  # the frames are the tiles, and the spectra of all are held at once


def _tiling(
    n_samples: int, starts: list[int], win_len: int, n_fft: int, lag: int, p: int
) -> _Tiling:
    """Frames that tile the track (the default, hop == window) are the tiles; otherwise tiles
    of ``_CORR_TILE`` samples. Spectra of up to ``_MAX_SPEC_ELEMS`` are held at once (``p``
    reference channels, as many estimate channels)."""
    framed = win_len > lag and (len(starts) == 1 or starts[1] - starts[0] == win_len)
    if framed:
        length, tile_fft = win_len, n_fft
    else:
        length = max(_CORR_TILE, 2 * lag + 2)
        tile_fft = _next_fast_len(length + lag)
    tiles = list(range(0, n_samples, length))
    per_group = max(1, _MAX_SPEC_ELEMS // (2 * p * (tile_fft // 2 + 1)))
    return _Tiling(tiles, length, tile_fft, per_group, framed and per_group >= len(tiles))


def _track_correlations(
    signals: list[torch.Tensor],
    tiling: _Tiling,
    lag: int,
    refs_ready: Callable[[torch.Tensor], None],
    lease: Lease | None = None,
    helper: ThreadPoolExecutor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Whole-track correlations at lags ``-lag..lag`` (``signals``: references, estimates,
    ``(S, C, N)``), from the spectra of tiles plus a correction across tile boundaries:
    ``refs_ready`` is called with those of the reference channels among themselves,
    ``(2 lag + 1, P, P)``, and those of the reference with the estimate channels come back.

    Where ``tiling.held``, the spectra of the frames ``(2, F, T, P)`` (references, estimates;
    from ``lease`` where given) come back too for the metrics (None otherwise); then, with a
    ``helper`` (a thread, only there), ``refs_ready`` is called before the estimates' spectra
    are taken, and the helper takes the boundary correction and shares every loop."""
    p = signals[0].shape[0] * signals[0].shape[1]
    tiles, tile_len, tile_fft = tiling.starts, tiling.length, tiling.n_fft
    if helper is not None and not tiling.held:
        raise ValueError("a helper thread is only used where all the spectra are held")
    if helper is not None:
        pending = helper.submit(_boundary_correlations, signals, p, tiles[1:], lag)
    else:
        with record_function("bss_eval.correlations"):
            boundary = _boundary_correlations(signals, p, tiles[1:], lag)
    if tiling.held:
        shape = (2, tile_fft // 2 + 1, len(tiles), p)
        spec = _empty(lease, shape, torch.complex128, signals[0].device)
        if helper is not None:
            with record_function("bss_eval.spectra_correlations"):
                _fill_spectra(spec[0], signals[:1], tiles, tile_len, tile_fft, helper)
                accs = _cross_spectra(spec[0], spec[0], helper=helper, lease=lease)
                boundary = pending.result()
                r_refs = _lags(accs[0], tile_fft, lag, helper) + boundary[..., :p]
            refs_ready(r_refs)
            with record_function("bss_eval.spectra_correlations"):
                _fill_spectra(spec[1], signals[1:], tiles, tile_len, tile_fft, helper)
                acc = _cross_spectra(spec[0], spec[1], helper=helper, lease=lease)[0]
                return _lags(acc, tile_fft, lag, helper) + boundary[..., p:], spec
        with record_function("bss_eval.spectra_correlations"):
            _fill_spectra(spec[0], signals[:1], tiles, tile_len, tile_fft)
            _fill_spectra(spec[1], signals[1:], tiles, tile_len, tile_fft)
            accs = _cross_spectra(spec[0], spec[0], spec[1], lease=lease)
            r_refs = _lags(accs[0], tile_fft, lag) + boundary[..., :p]
        refs_ready(r_refs)
        with record_function("bss_eval.spectra_correlations"):
            return _lags(accs[1], tile_fft, lag) + boundary[..., p:], spec
    acc = None
    for t0 in range(0, len(tiles), tiling.per_group):
        # the spectra's buffer back to the pool for the next group
        with _SCRATCH.lease() as group, record_function("bss_eval.spectra_correlations"):
            these = tiles[t0 : t0 + tiling.per_group]
            part = _spectra(signals, these, tile_len, tile_fft, p, group)[1]
        acc = part if acc is None else acc.add_(part)
    with record_function("bss_eval.correlations"):
        r = _lags(acc, tile_fft, lag) + boundary
    refs_ready(r[..., :p])
    return r[..., p:], None


def _filter_spectra(
    c_all: torch.Tensor, c_own: torch.Tensor, n_fft: int, n_src: int, lease: Lease | None = None
) -> torch.Tensor:
    """The filters as ``(F, P_ref, 2 Q_est)`` matrices (``(F, P, Q)`` for one source, where
    the two coincide): on all references (museval's s_true + e_spat + e_interf) and, block
    diagonal, on the own reference (s_true + e_spat); one batched matmul gives both.

    Frequency-major and contiguous: the energies' batched matmuls take chunks of it as they
    are. From ``lease`` where given."""
    filter_len, p, n_chan = c_own.shape
    q = p if n_src == 1 else 2 * p
    # tap-minor and zero-padded by hand: rfft's own padding along dim 0 is twice as slow
    taps = _empty(lease, (p, q, n_fft), c_all.dtype, c_all.device)
    taps[..., filter_len:] = 0
    taps[:, :p, :filter_len] = c_all.permute(1, 2, 0)
    if n_src > 1:
        taps[:, p:, :filter_len] = 0
        # own[(i, ci), (j, c)] = c_own[(i, ci), c] where i == j
        own = taps[:, p:, :filter_len].unflatten(1, (n_src, n_chan)).unflatten(0, (n_src, n_chan))
        torch.diagonal(own, 0, 0, 2).copy_(c_own.unflatten(1, (n_src, n_chan)).permute(2, 3, 0, 1))
    n_freq = n_fft // 2 + 1
    spec = _empty(lease, (p * q, n_freq), torch.complex128, c_all.device)
    _rfft_rows(taps.view(p * q, -1), spec)
    # frequency-major by one 2-D transposing copy (torch does those in cache blocks): taken
    # chunk by chunk in the energies' loop, the strided reads cost 4x more there
    out = _empty(lease, (n_freq, p, q), torch.complex128, c_all.device)
    out.view(n_freq, -1).copy_(spec.T)
    return out


def _sample_energies(signals: list[torch.Tensor], starts: list[int], win_len: int) -> torch.Tensor:
    """``||estimate - reference||^2`` and ``||reference||^2`` per frame and channel,
    ``(T, 2, P)``, summed over the samples (as museval does) of the references and estimates
    ``signals`` (``(S, C, N)`` each)."""
    n_src, n_chan = signals[0].shape[:2]
    samples = signals[0].new_empty(len(starts), 2, n_src, n_chan)
    # frames of museval's (S, N, C) layout, (S, T, W, C): each (W, C) frame is contiguous
    frames = [_frames(x, starts, win_len).permute(0, 2, 3, 1) for x in signals]
    step = max(1, _FFT_ELEMS // (n_src * n_chan * win_len))  # frames a pass
    for t0 in range(0, len(starts), step):
        ref, est = (x[:, t0 : t0 + step] for x in frames)
        diff = est - ref
        samples[t0 : t0 + step, 0] = (diff * diff).sum(dim=2).transpose(0, 1)
        samples[t0 : t0 + step, 1] = (ref * ref).sum(dim=2).transpose(0, 1)
    return samples.flatten(2)


def _frame_energies(
    signals: list[torch.Tensor],
    spec: torch.Tensor | None,
    filt: torch.Tensor,
    samples: torch.Tensor,
    starts: list[int],
    win_len: int,
    n_fft: int,
) -> torch.Tensor:
    """Energies per frame and source, ``(7, T, S)``, of the parts of museval's decomposition
    (_bss_decomp_mtifilt): estimate - s_true (= e_spat + e_interf + e_artif), e_spat,
    e_interf, e_artif, s_true, s_true + e_spat + e_interf, s_true + e_spat. The first and
    fifth need no projection: ``samples``, from :func:`_sample_energies`; the others come by
    Parseval from the frames' spectra (``spec (2, F, T, P)``, references and estimates, or
    computed here group by group), in frequency chunks that stay in cache."""
    n_src, n_chan = signals[0].shape[:2]
    p = n_src * n_chan
    n_freq = n_fft // 2 + 1

    def project(z: torch.Tensor, h: torch.Tensor, proj: torch.Tensor, parts: torch.Tensor) -> None:
        """The parts e_spat, e_interf, e_artif ``(F, T, 3, P)`` and the projections
        s_true + e_spat + e_interf, s_true + e_spat ``(F, T, 2 P)`` (one source: ``(F, T,
        P)``, the two coincide) of the bins ``z (2, F, T, P)`` (references, estimates), into
        ``parts`` and ``proj``."""
        ref, est = z
        torch.matmul(ref, h, out=proj)
        proj_all = proj[..., :p]
        # one source: the projections coincide, so SIR's zero interference is exact
        proj_own = proj[..., p:] if n_src > 1 else proj_all
        torch.sub(proj_own, ref, out=parts[:, :, 0])
        torch.sub(proj_all, proj_own, out=parts[:, :, 1])
        torch.sub(est, proj_all, out=parts[:, :, 2])

    def squares(x: torch.Tensor) -> torch.Tensor:
        """``|x|^2`` summed over the real and imaginary parts, ``(F, T, -1)``."""
        flat = torch.view_as_real(x).reshape(*x.shape[:2], -1, 2)
        return (flat * flat).sum(dim=-1)

    # Parseval on the half spectrum of a real signal: interior bins count twice, the first
    # and (for even sizes) the last once, all divided by n_fft.
    total = filt.real.new_zeros(len(starts), 5, p)
    edges = [0, n_freq - 1] if n_fft % 2 == 0 else [0]
    n_proj = filt.shape[-1]
    per_group = max(1, _MAX_SPEC_ELEMS // (2 * p * n_freq))

    def add_group(t0: int, t1: int, group: torch.Tensor) -> None:
        """Add the energies of frames ``t0..t1``, spectra ``group (2, F, t1 - t0, P)``."""
        f_step = max(1, _CHUNK_ELEMS // (2 * p * (t1 - t0)))
        proj = filt.new_empty(f_step, t1 - t0, n_proj)
        parts = filt.new_empty(f_step, t1 - t0, 3, p)
        # squares summed bin by bin over the chunks (one fused pass each), over the bins of
        # a chunk once at the end: a reduction over the bins of every chunk costs 2-5x more
        sq_proj = filt.real.new_zeros(f_step, t1 - t0, n_proj, 2)
        sq_parts = filt.real.new_zeros(f_step, t1 - t0, 3 * p, 2)
        for f0 in range(0, n_freq, f_step):
            n = min(f_step, n_freq - f0)
            h = filt[f0 : f0 + n]
            project(group[:, f0 : f0 + n], h, proj[:n], parts[:n])
            for x, sq in ((proj, sq_proj), (parts, sq_parts)):
                flat = torch.view_as_real(x[:n]).view(sq[:n].shape)
                sq[:n].addcmul_(flat, flat)
        edge_proj = filt.new_empty(len(edges), t1 - t0, n_proj)
        edge_parts = filt.new_empty(len(edges), t1 - t0, 3, p)
        project(group[:, edges], filt[edges], edge_proj, edge_parts)
        for x, sq, at in ((sq_parts, squares(edge_parts), 0), (sq_proj, squares(edge_proj), 3)):
            # (the edges count once, and were summed with the interior bins above)
            summed = 2 * x.sum(dim=(0, -1)) - sq.sum(dim=0)
            if n_src == 1 and at == 3:
                summed = torch.cat([summed, summed], dim=-1)
            total[t0:t1, at : at + summed.shape[-1] // p] += summed.reshape(t1 - t0, -1, p)

    for t0 in range(0, len(starts), per_group):
        t1 = min(len(starts), t0 + per_group)
        if spec is not None:
            add_group(t0, t1, spec[:, :, t0:t1])
            continue
        with _SCRATCH.lease() as lease:  # its buffer back to the pool for the next group
            with record_function("bss_eval.spectra"):
                group = _spectra(signals, starts[t0:t1], win_len, n_fft, lease=lease)[0]
            add_group(t0, t1, group.unflatten(-1, (2, p)).movedim(-2, 0))
            del group
    total /= n_fft
    total = torch.cat([samples[:, :1], total[:, :3], samples[:, 1:], total[:, 3:]], dim=1)
    return total.reshape(len(starts), 7, n_src, n_chan).sum(dim=-1).permute(1, 0, 2)
