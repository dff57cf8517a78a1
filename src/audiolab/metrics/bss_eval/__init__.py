"""BSSEval v4 (museval's default "images" mode) in batched float64 torch.

The definitions of ``museval.metrics.bss_eval(refs, ests, window, hop,
framewise_filters=False, bsseval_sources_version=False)``: distortion filters of
``filter_len`` taps are estimated once over the whole track by least squares (``(G + eps
I) c = D``, ``G`` the Gram matrix of all delayed reference channels), each frame's
references are projected with them, and the metrics come from the energies of the parts.
Done differently from museval, to the same numbers: ``G`` is block Toeplitz, so one block
Schur recursion factorises it for every estimate (:mod:`.schur`); its correlations (lags
below ``L``) are summed from the spectra of the frames, or of tiles where the frames do not
tile the track, plus the pairs across tile boundaries (:mod:`.spectra`); the frames are
projected in the frequency domain and the energies read off the spectra (:mod:`.energies`).

Degenerate references that real stems have (an all-zero channel, a copy of another
channel: dual mono) make ``G`` singular but for museval's ``eps``: that channel is taken out
of the least squares (the projection, all the metrics see, is museval's). Where ``G`` is
singular to working precision without such a cause (no noise floor: band-limited synthetic
audio never quantised), museval's ISR/SIR/SAR are rounding noise (a one-ulp change of the
references moves them by up to 19 dB); there the diagonal gets the smallest ridge in
``schur.RIDGES`` (times the largest channel energy) that lets the Schur recursion through,
with a warning, and that stable projection is reported (SDR needs none: it is museval's).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.profiler import record_function

from audiolab.metrics.bss_eval.energies import filter_spectra, frame_energies
from audiolab.metrics.bss_eval.framing import frame_starts, next_fast_len, silent_frames
from audiolab.metrics.bss_eval.schur import distortion_filters, torch_threads
from audiolab.metrics.bss_eval.spectra import tiling, track_correlations

__all__ = ["bss_eval_v4"]


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
    layout; 1-D/2-D inputs are read like ``np.atleast_3d``), numpy or torch; the maths runs
    in float64 on the device of the first torch input. Estimate ``j`` is scored against
    reference ``j`` (no permutation search). Returns ``{"sdr", "isr", "sir", "sar"}``, each
    float64 ``(n_sources, n_frames)``; frames where any reference or estimate is silent are
    NaN, as in museval.

    ``num_threads``: torch CPU threads for the call (restored afterwards; None keeps torch's
    setting). One by default: most of the work is many mid-sized ops, where OpenMP gains
    little on a few cores and loses when they are busy; score tracks in parallel processes."""
    device = next((x.device for x in (references, estimates) if torch.is_tensor(x)), None)
    with torch_threads(num_threads, device or torch.device("cpu")):
        return _bss_eval_v4(references, estimates, window, hop, filter_len, device)


def _as_3d_float64(x: np.ndarray | torch.Tensor, device: torch.device | None) -> torch.Tensor:
    """``np.atleast_3d`` semantics (museval's input handling), as a float64 tensor."""
    t = torch.as_tensor(x)
    t = (t if device is None else t.to(device)).to(torch.float64)
    return t[None, :, None] if t.ndim == 1 else t[:, :, None] if t.ndim == 2 else t


def _safe_db(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """museval's ``_safe_db``: +inf where the denominator is exactly zero."""
    return torch.where(den == 0, torch.inf, 10.0 * torch.log10(num / den))


def _bss_eval_v4(references, estimates, window, hop, filter_len, device) -> dict[str, torch.Tensor]:
    refs = _as_3d_float64(references, device)
    ests = _as_3d_float64(estimates, device)
    if refs.shape != ests.shape:
        raise ValueError(f"shape mismatch: references {refs.shape}, estimates {ests.shape}")
    if refs.ndim != 3 or refs.numel() == 0:
        raise ValueError(f"expected non-empty (n_sources, n_samples, n_channels), got {refs.shape}")
    n_src, n_samples, n_chan = refs.shape
    starts, win_len = frame_starts(n_samples, window, hop)
    with record_function("bss_eval.silence"):
        silent = silent_frames(refs, ests, starts, win_len)
    # (S, C, N) views of museval's (S, N, C) layout: the tracks are not copied
    signals = [refs.transpose(1, 2), ests.transpose(1, 2)]
    n_fft = next_fast_len(win_len + filter_len - 1)  # neither convolution nor correlation wraps
    tiles = tiling(n_samples, starts, win_len, n_fft, filter_len - 1, n_src * n_chan)
    with record_function("bss_eval.correlations"):
        r, spec = track_correlations(signals, tiles, filter_len - 1)
    with record_function("bss_eval.filters"):
        c_all, c_own = distortion_filters(r, signals[0], filter_len)
        filt = filter_spectra(c_all, c_own, n_fft, n_src)
    with record_function("bss_eval.energies"):
        energies = frame_energies(signals, spec, filt, starts, win_len, n_fft)
    e_dist, e_spat, e_interf, e_artif, e_true, e_target, e_image = energies
    out = {
        "sdr": _safe_db(e_true, e_dist),
        "isr": _safe_db(e_true, e_spat),
        "sir": _safe_db(e_image, e_interf),
        "sar": _safe_db(e_target, e_artif),
    }
    # NaN in frames where some reference or estimate is silent, as in museval
    return {k: torch.where(silent[:, None], torch.nan, v).T.contiguous() for k, v in out.items()}
