"""Viterbi decoding in batched torch (any device), for pitch tracking over the CREPE grid.

The decoder is the max-product algorithm in log space. Its forward pass is sequential in
time by nature; each step is four tensor operations over the whole batch, and the
transition matrix is stored as a band: with CREPE's transition (a frame moves at most 11
bins) a step touches 360 x 23 entries instead of 360 x 360. Back-pointers are not taken
with an ``argmax`` inside the loop (on CPU an indexed reduction over a small axis costs
more than the rest of the step): the loop records which sources reach each best score,
and the first of them is found for a whole block of frames in one vectorised pass. The
back-tracking is vectorised as well, by pointer doubling: the composition of a block's
pointer maps takes log2(block) gathers instead of one step per frame.

Numerics follow ``librosa.sequence.viterbi`` so that both give the same path for the
same inputs: scores in float64, ``log(p + tiny)`` with ``tiny`` the smallest normal
number of the probabilities' dtype, a uniform initial distribution, ties resolved to the
lowest state. One deliberate difference: transitions outside the band (zero in the
matrix) are impossible here, while librosa gives them ``log(tiny)`` (about -87 for
float32 probabilities); the paths differ only where librosa's path takes such a
"zero-probability" jump.
"""

from __future__ import annotations

import torch

from audiolab.pitch.cents import N_BINS

# Frames processed per block: bounds the working memory (batch x block x band x states
# flags) on long inputs while keeping the number of vectorised passes small.
BLOCK = 256


def crepe_transition(n_bins: int = N_BINS, reach: int = 12, dtype=torch.float64, device=None) -> torch.Tensor:
    """CREPE's transition matrix: weights ``max(reach - |i - j|, 0)``, each row normalised
    to sum to one, shape ``(n_bins, n_bins)``."""
    idx = torch.arange(n_bins, device=device)
    weights = (reach - (idx[:, None] - idx[None, :]).abs()).clamp_min(0).to(dtype)
    return weights / weights.sum(dim=1, keepdim=True)


def _bandwidth(transition: torch.Tensor) -> int:
    """Largest ``|i - j|`` with a non-zero transition."""
    i, j = torch.nonzero(transition, as_tuple=True)
    return int((i - j).abs().max()) if i.numel() else 0


def _check(observations: torch.Tensor, transition: torch.Tensor, initial: torch.Tensor | None) -> None:
    if observations.dim() < 2 or observations.shape[-2] < 1 or not observations.dtype.is_floating_point:
        raise ValueError(
            "viterbi takes floating-point observations of shape (..., frames, states), got "
            f"{observations.dtype} of shape {tuple(observations.shape)}"
        )
    n = observations.shape[-1]
    if transition.shape != (n, n):
        raise ValueError(f"the transition matrix must be ({n}, {n}) for {n} states, got {tuple(transition.shape)}")
    rows = transition.sum(dim=1)
    if (transition < 0).any() or not torch.allclose(rows, torch.ones_like(rows)):
        raise ValueError("the transition matrix must be non-negative with rows that sum to 1")
    if not torch.isfinite(observations).all() or (observations < 0).any() or (observations > 1).any():
        raise ValueError("observation probabilities must be finite and within [0, 1]")
    if initial is not None and initial.shape != (n,):
        raise ValueError(f"the initial distribution must have shape ({n},), got {tuple(initial.shape)}")


def viterbi(
    observations: torch.Tensor,
    transition: torch.Tensor,
    initial: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Most likely state sequence of a hidden Markov model.

    Args:
        observations: ``p(observation at t | state s)``, shape ``(..., frames, states)``,
            values in [0, 1]; the leading axes are decoded independently, in one batch.
        transition: ``transition[i, j] = p(state j at t + 1 | state i at t)``, rows summing
            to one. A banded matrix (zero beyond some ``|i - j|``) is decoded in time
            proportional to the band, not to the number of states; its zeros are
            impossible transitions. A matrix without zeros is decoded densely (slower),
            exactly as librosa does.
        initial: distribution of the first state (uniform when ``None``).
        dtype: of the scores. float64 (the default, as librosa) keeps long paths exact;
            float32 is faster on GPUs, where close decisions may then differ.

    Returns:
        States, ``long`` tensor of shape ``observations.shape[:-1]``. Memory: one byte of
        back-pointer per frame and state (for bands up to 255 wide), plus one block of
        working buffers.
    """
    _check(observations, transition, initial)
    lead, (n_frames, n_states) = observations.shape[:-2], observations.shape[-2:]
    device = observations.device
    obs = observations.reshape(-1, n_frames, n_states)
    batch = obs.shape[0]
    tiny = torch.finfo(obs.dtype).tiny

    reach = _bandwidth(transition)
    width = 2 * reach + 1
    states = torch.arange(n_states, device=device)
    offsets = torch.arange(-reach, reach + 1, device=device)
    # band[d, j]: log p(source j + d - reach -> target j); -inf outside the matrix or band
    source = offsets[:, None] + states[None, :]
    inside = (source >= 0) & (source < n_states)
    log_trans = torch.log(transition.to(device, dtype) + tiny)
    band = torch.where(inside, log_trans[source.clamp(0, n_states - 1), states[None, :]], -torch.inf)
    if initial is None:
        initial = torch.full((n_states,), 1.0 / n_states, dtype=dtype, device=device)
    log_init = torch.log(initial.to(device, dtype) + tiny)

    # Scores padded with -inf by `reach` on both sides, so that a sliding window of `width`
    # over the state axis sees every source of each target. Row r of the buffer holds
    # frame start + r - 1 of the current block; row 0 the last frame of the previous one.
    block = min(BLOCK, n_frames)
    scores = torch.full((batch, block + 1, n_states + 2 * reach), -torch.inf, dtype=dtype, device=device)
    rows = scores[:, :, reach : reach + n_states].unbind(1)
    # windows[r][b, d, j] = score of source j + d - reach in row r (views, made once)
    windows = scores.unfold(-1, width, 1).transpose(-1, -2).unbind(1)
    candidates = torch.empty((batch, width, n_states), dtype=dtype, device=device)
    best = torch.empty((batch, n_states), dtype=dtype, device=device)
    # equality of the bit patterns: the same as float equality here (no NaN, and no -0.0:
    # sums of logs of numbers <= 1 give +0.0 at most), and a faster comparison on CPU
    int_dtype = torch.int64 if dtype == torch.float64 else torch.int32
    candidates_bits, best_bits = candidates.view(int_dtype), best.view(int_dtype)[:, None]
    # which sources reach the best score, per step of the block; the back-pointer is the
    # first of them (librosa's tie rule). A CPU argmax over the band would cost more than
    # the rest of the step, so the loop only records the equality and the first index is
    # found for the whole block at once below.
    is_best = torch.zeros((batch, block, width, n_states), dtype=torch.bool, device=device)
    is_best_rows = is_best.unbind(1)
    # first matching d has the largest rank, so a max over the band axis finds it
    rank = torch.arange(width, 0, -1, device=device, dtype=torch.int16 if width > 255 else torch.uint8)[:, None]
    ptr_dtype = torch.uint8 if width <= 255 else torch.int16
    pointers = torch.zeros((batch, n_frames, n_states), dtype=ptr_dtype, device=device)

    for start in range(0, n_frames, block):
        stop = min(start + block, n_frames)
        # the log in the observations' own dtype, as librosa, then scores in `dtype`
        log_obs = torch.log(obs[:, start:stop] + tiny).to(dtype).unbind(1)
        first = 0
        if start == 0:
            torch.add(log_obs[0], log_init, out=rows[1])
            first = 1
        for t in range(first, stop - start):
            torch.add(windows[t], band, out=candidates)
            torch.amax(candidates, dim=1, out=best)
            torch.eq(candidates_bits, best_bits, out=is_best_rows[t])
            torch.add(best, log_obs[t], out=rows[t + 1])
        matches = is_best[:, first : stop - start].to(rank.dtype) * rank
        pointers[:, start + first : stop] = (width - matches.amax(dim=2)).to(ptr_dtype)
        scores[:, 0] = scores[:, stop - start]

    last = rows[0].argmax(dim=-1)
    path = _backtrack(pointers, last, reach)
    return path.reshape(*lead, n_frames)


def _backtrack(pointers: torch.Tensor, last: torch.Tensor, reach: int) -> torch.Tensor:
    """States from back-pointers ``(batch, frames, states)`` (band offsets: the source of
    state ``j`` at frame ``t`` is ``j + pointers[t, j] - reach`` at ``t - 1``) and the
    final states ``(batch,)``, by pointer doubling within blocks of frames."""
    batch, n_frames, n_states = pointers.shape
    states = torch.arange(n_states, device=pointers.device)
    path = torch.empty((batch, n_frames), dtype=torch.long, device=pointers.device)
    path[:, -1] = last
    end = n_frames  # path[:, end - 1] is known
    while end > 1:
        begin = max(1, end - BLOCK)
        # maps[t]: state at frame begin + t -> its predecessor at frame begin + t - 1
        maps = pointers[:, begin:end].long() + (states - reach)
        step = 1
        while step < end - begin:
            # compose: maps[t] becomes maps[t] o maps[t + step]
            maps[:, :-step] = maps[:, :-step].gather(-1, maps[:, step:])
            step *= 2
        known = path[:, end - 1, None, None].expand(batch, end - begin, 1)
        path[:, begin - 1 : end - 1] = maps.gather(-1, known).squeeze(-1)
        end = begin
    return path
