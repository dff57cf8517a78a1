"""The whole-track distortion filters: museval's least squares ``(G + eps I) c = D`` of every
estimate channel on all reference channels and on its own source's alone, solved with
Cholesky factors of the block Toeplitz ``G`` from the block Schur algorithm, ``O(L^2 P^3)``
for ``L`` blocks of ``P x P`` where a dense factorisation takes ``O(L^3 P^3)``."""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import torch

# museval adds numpy's float eps (absolute, not relative) to the Gram diagonal.
EPS = float(np.finfo(np.float64).eps)
# Ridges (times the largest channel energy) tried in turn where G is singular to working
# precision: the smallest with which the Schur recursion goes through is used.
RIDGES = (1e-12, 1e-11, 1e-10, 1e-9, 1e-8, 1e-7, 1e-6)
# Most rows of one block of the recursion (lags are grouped up to it).
SCHUR_BLOCK = 32


@contextmanager
def torch_threads(n: int | None, device: torch.device):
    """torch's CPU threads set to ``n`` inside (None: left alone), restored afterwards."""
    before = torch.get_num_threads()
    if n is not None and device.type == "cpu":
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def block_toeplitz_cholesky(
    blocks: torch.Tensor, lags_per_block: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factors ``R (B, L P, L P)``, ``R^T R = T`` (upper triangles only), of
    the block Toeplitz ``T`` with first block row ``blocks (B, L, P, P)`` (``T[a, a + k] =
    blocks[:, k] = T[a + k, a].T``), and ``ok (B,)``: False where the recursion broke down.

    The displacement ``T - Z T Z^T`` (``Z`` shifts by one block) is ``u^T u - v^T v`` for a
    ``P``-row generator; each step shifts ``u``, zeroes the leading block of ``v`` by a block
    hyperbolic rotation in mixed form (error of the order of Cholesky's: Bojanczyk, Brent,
    de Hoog and Sweet, 1995), and the rotated ``u`` is the next block row of ``R``, its
    diagonal block upper triangular. ``lags_per_block`` lags make one block (``T`` is block
    Toeplitz with ``g P x g P`` blocks too); None: the most with ``SCHUR_BLOCK`` rows at most."""
    if lags_per_block is None:
        n_lag, p = blocks.shape[1], blocks.shape[-1]
        lags_per_block = max(g for g in range(1, max(1, SCHUR_BLOCK // p) + 1) if n_lag % g == 0)
    blocks = group_blocks(blocks, lags_per_block)
    bsz, n_blk, p, _ = blocks.shape
    eye = torch.eye(p, dtype=blocks.dtype, device=blocks.device)
    u0, info = torch.linalg.cholesky_ex(blocks[:, 0], upper=True)
    failed = info != 0
    row = blocks.permute(0, 2, 1, 3).reshape(bsz, p, n_blk * p)
    r = blocks.new_empty(bsz, n_blk, p, n_blk * p)
    r[:, 0] = torch.linalg.solve_triangular(u0.mT, row, upper=False)
    v = r[:, 0, :, p:]  # the same row without its lag-0 block
    for k in range(1, n_blk):
        u = r[:, k - 1, :, (k - 1) * p : (n_blk - 1) * p]  # previous row, shifted one block
        # K u_k = v_k (u_k upper triangular); l_u l_u^T = I - K^T K, l_v l_v^T = I - K K^T
        refl = torch.linalg.solve_triangular(u[:, :, :p], v[:, :, :p], upper=True, left=False)
        pair = torch.stack([refl.mT, refl], dim=1)
        chol, info = torch.linalg.cholesky_ex(eye - pair @ pair.mT)
        failed |= (info != 0).any(dim=1)
        l_u, l_v = chol.unbind(dim=1)
        # new row l_u^-1 (u - K^T v); its lag-0 block l_u^T u_k is upper triangular
        to_u = torch.linalg.solve_triangular(l_u, eye, upper=False)
        u_new = (to_u @ u).baddbmm_(to_u @ refl.mT, v, alpha=-1)
        r[:, k, :, k * p :] = u_new
        # mixed form: v' = l_v^-1 (v - K u) = l_v^T v - l_v^-1 K (u - K^T v), u - K^T v = l_u u_new
        from_u = torch.linalg.solve_triangular(l_v, refl @ l_u, upper=False)
        v = (l_v.mT @ v).baddbmm_(from_u, u_new, alpha=-1)[:, :, p:]
    ok = ~failed & torch.isfinite(r[:, -1, :, -p:]).all(dim=(-2, -1))
    return r.reshape(bsz, n_blk * p, n_blk * p), ok


def group_blocks(blocks: torch.Tensor, g: int) -> torch.Tensor:
    """The first block row ``(B, L, P, P)`` of a symmetric block Toeplitz matrix as that of
    the same matrix with ``g P x g P`` blocks, ``(B, L / g, g P, g P)``: block ``d`` holds lag
    ``g d + j - i`` at ``(i, j)``, ``i, j < g`` (lag ``-m`` is the transpose of lag ``m``)."""
    bsz, n_lag, p, _ = blocks.shape
    if g == 1:
        return blocks
    ext = torch.cat([blocks[:, 1:g].flip(1).mT, blocks], dim=1)  # lags 1 - g..L - 1
    i = torch.arange(g, device=blocks.device)
    lag = g * torch.arange(n_lag // g, device=blocks.device)[:, None, None] + i - i[:, None]
    grouped = ext[:, lag + g - 1]  # (B, L / g, g, g, P, P)
    return grouped.transpose(3, 4).reshape(bsz, n_lag // g, g * p, g * p)


def dead_channels(x: torch.Tensor, energy: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """``(P,)`` mask of the channels of ``x (S, C, N)`` (``P = S C``) that add nothing to the
    span of the delayed references: all-zero channels, and copies of an earlier channel of
    the same ``group (P,)``. The energies ``(P,)`` rule out most pairs before comparing."""
    n_chan = x.shape[1]
    dead = torch.zeros_like(energy, dtype=torch.bool)
    for q in (energy == 0).nonzero().flatten().tolist():  # exactly zero: all zero, or underflow
        dead[q] = bool((x[q // n_chan, q % n_chan] == 0).all())
    close = (energy[:, None] - energy[None, :]).abs() <= 1e-9 * energy[:, None]
    candidate = torch.triu(close & (group[:, None] == group[None, :]) & ~dead, diagonal=1)
    for p, q in candidate.nonzero().tolist():
        if not dead[q] and torch.equal(x[p // n_chan, p % n_chan], x[q // n_chan, q % n_chan]):
            dead[q] = True
    return dead


def factorize(
    gamma: torch.Tensor, dead: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factors ``(B, L P, L P)`` of ``G + eps I``, ``G`` block Toeplitz with
    first block row ``gamma (B, L, P, P)``, with the ``dead (B, P)`` channels made identity
    (zero filters), and the ridges used ``(B,)`` (times ``scale``; 0 where none was needed)."""
    eye = torch.eye(gamma.shape[-1], dtype=gamma.dtype, device=gamma.device)
    live = (~dead).to(gamma.dtype)
    gamma = gamma * live[:, None, :, None] * live[:, None, None, :]
    gamma[:, 0] += eye * (1 - live)[:, None, :] + EPS * eye
    ridges = gamma.new_zeros(gamma.shape[0])
    # hundreds of tiny sequential ops: OpenMP's fork and join per op would cost far more
    with torch_threads(1, gamma.device):
        chol, ok = block_toeplitz_cholesky(gamma)
        for ridge in RIDGES:
            if bool(ok.all()):
                break
            loaded = gamma[~ok]
            loaded[:, 0] += ridge * scale * eye
            chol_ridged, ok_ridged = block_toeplitz_cholesky(loaded)
            fixed = (~ok).nonzero().flatten()[ok_ridged]
            chol[fixed] = chol_ridged[ok_ridged]
            ridges[fixed] = ridge
            ok[fixed] = True
    if not bool(ok.all()):
        raise ValueError(
            "bss_eval_v4: the Gram matrix of the delayed references stays singular with a "
            f"ridge of {RIDGES[-1]:g} x the largest channel energy; the references are too "
            "degenerate to evaluate (e.g. constant or a few pure tones)"
        )
    return chol, ridges


def cho_solve(chol: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(R^T R)^-1 b`` for upper triangular ``R``."""
    y = torch.linalg.solve_triangular(chol.mT, b, upper=False)
    return torch.linalg.solve_triangular(chol, y, upper=True)


def distortion_filters(
    r: torch.Tensor, refs: torch.Tensor, filter_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The filters from the correlations ``r (2 L - 1, P, 2 P)`` (lags ``1 - L..L - 1``) of
    the reference channels of ``refs (S, C, N)`` with the reference and estimate channels:
    ``c_all (L, P, P)`` projects estimate channel ``q`` on every reference channel ``p``
    (museval's ``C``), ``c_own (L, P, C)`` the estimate of source ``i`` on reference ``i``
    alone (museval's ``Cj``), at rows ``p = (i, ci)``."""
    n_src, n_chan, _ = refs.shape
    p = n_src * n_chan
    # gamma[k][p, q] = <ref_p advanced by k, ref_q>: the first block row of G[(a, p), (b, q)]
    # = <ref_p delayed a, ref_q delayed b>; rhs[a][p, q] = <ref_p delayed a, est_q>
    gamma = r[filter_len - 1 :, :, :p]
    rhs = r[filter_len - 1 - torch.arange(filter_len, device=r.device), :, p:]
    energy = torch.diagonal(gamma[0])
    scale = energy.max().item()  # ridges, where needed, relative to the largest energy
    source = torch.arange(n_src, device=r.device).repeat_interleave(n_chan)
    dead_all = dead_channels(refs, energy, torch.zeros_like(source))
    chol, ridges = factorize(gamma[None], dead_all[None], scale)
    c_all = cho_solve(chol[0], (rhs * ~dead_all[:, None]).reshape(filter_len * p, p))
    c_all = c_all.reshape(filter_len, p, p)
    del chol
    if n_src == 1:  # museval solves the same system twice: SIR's zero interference is exact
        warn_ridge(ridges)
        return c_all, c_all
    # each source's own system: its diagonal block of G, (S, L, C, C), factorised in a batch
    dead_own = dead_channels(refs, energy, source)
    own = torch.diagonal(gamma.reshape(filter_len, n_src, n_chan, n_src, n_chan), 0, 1, 3)
    chol_own, ridges_own = factorize(own.permute(3, 0, 1, 2), dead_own.view(n_src, n_chan), scale)
    warn_ridge(torch.cat([ridges, ridges_own]))
    # rhs_own[i][(a, ci), c] = rhs[a][(i, ci), (i, c)]: estimate i against reference i only
    rhs_own = (rhs * ~dead_own[:, None]).reshape(filter_len, n_src, n_chan, n_src, n_chan)
    rhs_own = torch.diagonal(rhs_own, 0, 1, 3).permute(3, 0, 1, 2)
    c_own = cho_solve(chol_own, rhs_own.reshape(n_src, filter_len * n_chan, n_chan))
    c_own = c_own.reshape(n_src, filter_len, n_chan, n_chan).transpose(0, 1)
    return c_all, c_own.reshape(filter_len, p, n_chan)


def warn_ridge(ridges: torch.Tensor) -> None:
    if bool((ridges > 0).any()):
        msg = (
            "bss_eval_v4: the Gram matrix of the delayed references is singular to working "
            "precision (references without a noise floor, e.g. band-limited synthetic stems "
            f"never quantised); used a ridge of {ridges.max().item():g} x the largest channel "
            "energy. museval's ISR/SIR/SAR are rounding noise on such references (they change "
            "with a one-ulp change of the input), so they cannot be matched; SDR is unaffected."
        )
        warnings.warn(msg, RuntimeWarning, stacklevel=5)
