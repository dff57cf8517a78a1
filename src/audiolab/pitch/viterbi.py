"""Viterbi decoding in batched torch (any device), for pitch tracking over the CREPE grid.

The decoder is the max-product algorithm in log space. Its forward pass is sequential in
time by nature; each step is three tensor operations over the whole batch (add the
transition band, take the maximum over sources, add the observation), and the transition
matrix is stored as a band: with CREPE's transition (a frame moves at most 11 bins) a step
touches 360 x 23 entries instead of 360 x 360.

The loop computes no back-pointers. It keeps every frame's scores instead, and the
back-tracking recomputes the one pointer it needs per frame, that of the state the path is
in (23 candidates), on the host. Taking a pointer for every state and frame costs more than
the whole forward pass on a CPU (an indexed reduction per step, or a second pass over
frames x band x states), and the path needs one per frame. Past a memory budget the scores
are kept for one segment of frames at a time: a first pass saves each segment's first row,
and the back-tracking recomputes the segments from the last to the first.

Numerics follow ``librosa.sequence.viterbi`` so that both give the same path for the
same inputs: scores in float64, ``log(p + tiny)`` with ``tiny`` the smallest normal
number of the probabilities' dtype, a uniform initial distribution, ties resolved to the
lowest state. One deliberate difference: transitions outside the band (zero in the
matrix) are impossible here, while librosa gives them ``log(tiny)`` (about -87 for
float32 probabilities); the paths differ only where librosa's path takes such a
"zero-probability" jump.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from audiolab.audio.pitch_grid import N_BINS
from audiolab.utils.threads import one_cpu_thread_when

# Frames whose log-observations are taken at once: bounds that temporary on long inputs.
BLOCK = 256
# Scores held at once (bytes): longer inputs are decoded in segments, at twice the time.
_SCORES_BYTES = 2**28
# Up to this many sequences, the back-tracking follows each alone (see _backtrack).
_LANES_ONE_BY_ONE = 4
# Fewer sequences than this are decoded on one CPU thread: a step is then a few
# microseconds of work, and a second thread saved 8 % of the wall time of one 300-frame
# sequence for 76 % more CPU time (2 sequences: 7 % for 85 %; 4: 24 % for 53 %).
_PARALLEL_SEQUENCES = 4


def crepe_transition(n_bins: int = N_BINS, reach: int = 12, dtype=torch.float64, device=None) -> torch.Tensor:
    """CREPE's transition matrix: weights ``max(reach - |i - j|, 0)``, each row normalised
    to sum to one, shape ``(n_bins, n_bins)``. Built once per arguments and shared (a
    short clip would otherwise spend a third of its decoding time building it): do not
    modify it in place."""
    return _crepe_transition(n_bins, reach, dtype, torch.device(device) if device is not None else torch.device("cpu"))


@functools.lru_cache(maxsize=8)
def _crepe_transition(n_bins: int, reach: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    idx = torch.arange(n_bins, device=device)
    weights = (reach - (idx[:, None] - idx[None, :]).abs()).clamp_min(0).to(dtype)
    return weights / weights.sum(dim=1, keepdim=True)


def _bandwidth(transition: torch.Tensor) -> int:
    """Largest ``|i - j|`` with a non-zero transition."""
    i, j = torch.nonzero(transition, as_tuple=True)
    return int((i - j).abs().max()) if i.numel() else 0


def _check_observations(observations: torch.Tensor) -> None:
    if observations.dim() < 2 or observations.shape[-2] < 1 or not observations.dtype.is_floating_point:
        raise ValueError(
            "viterbi takes floating-point observations of shape (..., frames, states), got "
            f"{observations.dtype} of shape {tuple(observations.shape)}"
        )
    low, high = torch.aminmax(observations)  # NaN when any is: the test below fails then
    if not (bool(low >= 0) and bool(high <= 1)):
        raise ValueError("observation probabilities must be finite and within [0, 1]")


def _check_model(n: int, transition: torch.Tensor, initial: torch.Tensor | None) -> None:
    if transition.shape != (n, n):
        raise ValueError(f"the transition matrix must be ({n}, {n}) for {n} states, got {tuple(transition.shape)}")
    rows = transition.sum(dim=1)
    if (transition < 0).any() or not torch.allclose(rows, torch.ones_like(rows)):
        raise ValueError("the transition matrix must be non-negative with rows that sum to 1")
    if initial is not None and initial.shape != (n,):
        raise ValueError(f"the initial distribution must have shape ({n},), got {tuple(initial.shape)}")


def _band(transition: torch.Tensor, dtype: torch.dtype, device: torch.device, tiny: float) -> torch.Tensor:
    """The transition as a band ``(2 reach + 1, states)``: ``band[d, j]`` is log p(source
    ``j + d - reach`` -> target ``j``), -inf outside the matrix or the band."""
    n_states = transition.shape[0]
    reach = _bandwidth(transition)
    states = torch.arange(n_states, device=device)
    offsets = torch.arange(-reach, reach + 1, device=device)
    source = offsets[:, None] + states[None, :]
    inside = (source >= 0) & (source < n_states)
    log_trans = torch.log(transition.to(device, dtype) + tiny)
    return torch.where(inside, log_trans[source.clamp(0, n_states - 1), states[None, :]], -torch.inf)


@functools.lru_cache(maxsize=8)
def _crepe_model(n_bins: int, device: torch.device, tiny: float) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """CREPE's band (float64), its transpose on the host and the uniform log-initial
    distribution, as :func:`viterbi` builds them. Shared: never modified."""
    band = _band(crepe_transition(n_bins, device=device), torch.float64, device, tiny)
    log_init = torch.log(torch.full((n_bins,), 1.0 / n_bins, dtype=torch.float64, device=device) + tiny)
    return band, band.T.contiguous().cpu().numpy(), log_init


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
        States, ``long`` tensor of shape ``observations.shape[:-1]``. Memory: the scores,
        ``dtype`` numbers per frame and (state + band), at most 256 MB of them (about 87,000
        frames of one sequence in float64): longer inputs are decoded in segments, at twice
        the forward time. On an accelerator they are copied to the host for the
        back-tracking.
    """
    n_states = observations.shape[-1]
    _check_observations(observations)
    _check_model(n_states, transition, initial)
    device = observations.device
    tiny = torch.finfo(observations.dtype).tiny
    band = _band(transition, dtype, device, tiny)
    if initial is None:
        initial = torch.full((n_states,), 1.0 / n_states, dtype=dtype, device=device)
    log_init = torch.log(initial.to(device, dtype) + tiny)
    return _decode(observations, band, band.T.contiguous().cpu().numpy(), log_init)


def crepe_viterbi(observations: torch.Tensor) -> torch.Tensor:
    """:func:`viterbi` under CREPE's transition (:func:`crepe_transition`) with a uniform
    initial distribution and float64 scores: the same path, without building and checking
    the transition on every call (it is prepared once per state count and device)."""
    _check_observations(observations)
    tiny = torch.finfo(observations.dtype).tiny
    return _decode(observations, *_crepe_model(observations.shape[-1], observations.device, tiny))


def _decode(observations: torch.Tensor, band: torch.Tensor, band_host: np.ndarray, log_init: torch.Tensor) -> torch.Tensor:
    """The path through checked ``observations (..., frames, states)`` under a band of
    log-transitions (``band_host``: its transpose as a numpy array, for the back-tracking),
    starting from the log-distribution ``log_init``."""
    lead, (n_frames, n_states) = observations.shape[:-2], observations.shape[-2:]
    device, dtype = observations.device, band.dtype
    obs = observations.reshape(-1, n_frames, n_states)
    tiny = torch.finfo(obs.dtype).tiny
    reach = band.shape[0] // 2
    batch, padded = obs.shape[0], n_states + 2 * reach
    # frames whose scores are held at once; longer inputs are decoded in segments
    seg = max(2, _SCORES_BYTES // (batch * padded * band.element_size()))
    # no autograd bookkeeping in the loop: a tenth of the time of each small operation
    with torch.inference_mode(), one_cpu_thread_when(batch < _PARALLEL_SEQUENCES, device):
        scores = torch.empty((batch, min(seg, n_frames), padded), dtype=dtype, device=device)
        if n_frames <= seg:
            _forward(obs, band, log_init, tiny, scores, 0)
            path = _backtrack(scores.cpu().numpy(), band_host, reach)
            return torch.from_numpy(path).to(device).reshape(*lead, n_frames)
        # Segments share their boundary frame: segment k holds frames starts[k] ..
        # starts[k + 1]. A first pass keeps only each segment's first row; the back-tracking
        # then recomputes the segments last to first from those rows (twice the forward
        # time, memory bounded by `seg` frames).
        starts = list(range(0, n_frames - 1, seg - 1)) + [n_frames - 1]
        n_segments = len(starts) - 1
        first_rows: list[torch.Tensor | None] = [None]  # segment 0 starts from log_init

        def fill(k: int) -> torch.Tensor:
            a, b = starts[k], starts[k + 1]
            if k:
                scores[:, 0] = first_rows[k]
            _forward(obs, band, None if k else log_init, tiny, scores[:, : b - a + 1], a)
            return scores[:, : b - a + 1]

        for k in range(n_segments):
            if k:  # the previous segment's last frame
                first_rows.append(scores[:, starts[k] - starts[k - 1]].clone())
            fill(k)
        path = np.empty((batch, n_frames), dtype=np.int64)
        last = None
        for k in range(n_segments - 1, -1, -1):
            # the last segment is still in the buffer
            segment = fill(k) if k < n_segments - 1 else scores[:, : starts[k + 1] - starts[k] + 1]
            path[:, starts[k] : starts[k + 1] + 1] = _backtrack(segment.cpu().numpy(), band_host, reach, last)
            last = path[:, starts[k]]
    return torch.from_numpy(path).to(device).reshape(*lead, n_frames)


def _forward(
    obs: torch.Tensor, band: torch.Tensor, log_init: torch.Tensor | None, tiny: float, scores: torch.Tensor, first: int
) -> None:
    """Fill ``scores (batch, m, states + 2 reach)`` with the scores of frames ``first ..
    first + m - 1``: the states padded with -inf by ``reach`` on both sides, so that a
    sliding window of the band's width over a frame sees every source of each target. Row
    0 starts from ``log_init`` when given, else it must hold frame ``first`` already."""
    n_states = obs.shape[-1]
    n_frames = scores.shape[1]
    width = band.shape[0]
    reach = width // 2
    scores[..., :reach] = -torch.inf
    scores[..., reach + n_states :] = -torch.inf
    candidates = torch.empty((scores.shape[0], width, n_states), dtype=band.dtype, device=band.device)
    best = torch.empty((scores.shape[0], n_states), dtype=band.dtype, device=band.device)
    add, amax = torch.add, torch.amax  # looked up once: the loop runs once per frame
    for start in range(0, n_frames, BLOCK):
        stop = min(start + BLOCK, n_frames)
        # the frames' log-observations first (the log in the observations' own dtype, as
        # librosa); each step then adds the best transition into its row
        low = start if start or log_init is not None else 1
        interior = scores[:, low:stop, reach : reach + n_states]
        interior.copy_(torch.log(obs[:, first + low : first + stop] + tiny))
        if start == 0 and log_init is not None:
            scores[:, 0, reach : reach + n_states] += log_init
        # rows[i]: frame start - 1 + i; windows[i][b, d, j]: its score of source j + d - reach
        before = max(start - 1, 0)
        rows = scores[:, before:stop, reach : reach + n_states].unbind(1)
        windows = scores[:, before:stop].unfold(-1, width, 1).transpose(-1, -2).unbind(1)
        for window, row in zip(windows[:-1], rows[1:], strict=True):
            add(window, band, out=candidates)
            amax(candidates, dim=1, out=best)
            row.add_(best)


def _backtrack(scores: np.ndarray, band: np.ndarray, reach: int, last: np.ndarray | None = None) -> np.ndarray:
    """States of the best path from the padded scores ``(batch, frames, states + 2 reach)``
    and the band ``(states, 2 reach + 1)`` (``band[j, d]``: log-probability of source
    ``j + d - reach`` to ``j``): the last state is ``last`` (default: the best final
    score), each earlier one the first best source of the next (librosa's tie rule). A few sequences are chased
    one by one (slices are the cheapest numpy operations); more, as one batch per frame."""
    batch, n_frames, padded = scores.shape
    width = band.shape[1]
    path = np.empty((batch, n_frames), dtype=np.int64)
    path[:, -1] = scores[:, -1, reach : padded - reach].argmax(axis=-1) if last is None else last
    if batch <= _LANES_ONE_BY_ONE:
        for b in range(batch):
            lane, state = scores[b], int(path[b, -1])
            for t in range(n_frames - 1, 0, -1):
                # the padded index of source state + d - reach is state + d
                state += int((lane[t - 1, state : state + width] + band[state]).argmax()) - reach
                path[b, t - 1] = state
        return path
    lanes, window, state = np.arange(batch)[:, None], np.arange(width), path[:, -1]
    for t in range(n_frames - 1, 0, -1):
        candidates = scores[lanes, t - 1, state[:, None] + window] + band[state]
        state = state + candidates.argmax(axis=-1) - reach
        path[:, t - 1] = state
    return path
