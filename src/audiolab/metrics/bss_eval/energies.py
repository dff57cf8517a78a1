"""Per-frame energies of museval's decomposition (``_bss_decomp_mtifilt``): the frames'
references are projected with the whole-track filters in the frequency domain, and the
energies read off the spectra by Parseval, so no inverse FFT is taken."""

from __future__ import annotations

import torch

from audiolab.metrics.bss_eval import spectra
from audiolab.metrics.bss_eval.framing import frames


def filter_spectra(
    c_all: torch.Tensor, c_own: torch.Tensor, n_fft: int, n_src: int
) -> torch.Tensor:
    """The filters as frequency-major ``(F, P, 2 P)`` matrices (``(F, P, P)`` for one source,
    where the two coincide): on all references (museval's s_true + e_spat + e_interf) and,
    block diagonal, on the own reference (s_true + e_spat); one matmul projects on both."""
    filter_len, p, n_chan = c_own.shape
    q = p if n_src == 1 else 2 * p
    taps = c_all.new_zeros(p, q, filter_len)
    taps[:, :p] = c_all.permute(1, 2, 0)
    if n_src > 1:  # own[(i, ci), (j, c)] = c_own[(i, ci), c] where i == j
        own = taps[:, p:].unflatten(1, (n_src, n_chan)).unflatten(0, (n_src, n_chan))
        torch.diagonal(own, 0, 0, 2).copy_(c_own.unflatten(1, (n_src, n_chan)).permute(2, 3, 0, 1))
    taps = taps.view(p * q, filter_len)
    n_freq = n_fft // 2 + 1
    out = c_all.new_empty(n_freq, p * q, dtype=torch.complex128)
    rows = min(p * q, max(1, spectra.FFT_ELEMS // n_freq))
    padded = c_all.new_zeros(rows, n_fft)  # padded by hand: rfft's own padding is slower
    for r0 in range(0, p * q, rows):
        n = min(rows, p * q - r0)
        padded[:n, :filter_len] = taps[r0 : r0 + n]
        out[:, r0 : r0 + n] = torch.fft.rfft(padded[:n]).T
    return out.view(n_freq, p, q)


def sample_energies(signals: list[torch.Tensor], starts: list[int], win_len: int) -> torch.Tensor:
    """``||estimate - reference||^2`` and ``||reference||^2`` per frame and channel, ``(T, 2,
    P)``, summed over the samples as museval does, of ``signals`` (``(S, C, N)`` each)."""
    n_src, n_chan = signals[0].shape[:2]
    out = signals[0].new_empty(len(starts), 2, n_src, n_chan)
    framed = [frames(x, starts, win_len).permute(0, 2, 3, 1) for x in signals]  # (S, T, W, C)
    step = max(1, spectra.FFT_ELEMS // (n_src * n_chan * win_len))
    for t0 in range(0, len(starts), step):
        ref, est = (x[:, t0 : t0 + step] for x in framed)
        diff = est - ref
        out[t0 : t0 + step, 0] = (diff * diff).sum(dim=2).transpose(0, 1)
        out[t0 : t0 + step, 1] = (ref * ref).sum(dim=2).transpose(0, 1)
    return out.flatten(2)


def frame_energies(
    signals: list[torch.Tensor], spec, filt, starts: list[int], win_len: int, n_fft: int
) -> torch.Tensor:
    """Energies ``(7, T, S)`` per frame and source of: estimate - s_true, e_spat, e_interf,
    e_artif, s_true, s_true + e_spat + e_interf, s_true + e_spat. The first and fifth need no
    projection (:func:`sample_energies`); the others come from the frames' spectra ``spec (F,
    T, 2 P)`` (references, estimates; None: taken here group by group) and the filters
    ``filt`` (:func:`filter_spectra`), in frequency chunks that stay in cache."""
    n_src, n_chan = signals[0].shape[:2]
    p = n_src * n_chan
    n_freq = n_fft // 2 + 1
    n_proj = filt.shape[-1]
    # Parseval on the half spectrum of a real signal: interior bins count twice, the first
    # and (for even sizes) the last once, all divided by n_fft
    edges = [0, n_freq - 1] if n_fft % 2 == 0 else [0]
    total = filt.real.new_zeros(len(starts), 5, p)

    def project(z: torch.Tensor, h: torch.Tensor, proj: torch.Tensor, parts: torch.Tensor):
        """s_true + e_spat + e_interf, s_true + e_spat (one source: once) into ``proj (F, T,
        2 P)``, e_spat, e_interf, e_artif into ``parts (F, T, 3, P)``, of the bins ``z``."""
        ref, est = z[..., :p], z[..., p:]
        torch.matmul(ref, h, out=proj)
        proj_all = proj[..., :p]
        proj_own = proj[..., p:] if n_src > 1 else proj_all
        torch.sub(proj_own, ref, out=parts[:, :, 0])
        torch.sub(proj_all, proj_own, out=parts[:, :, 1])
        torch.sub(est, proj_all, out=parts[:, :, 2])

    def add_group(t0: int, group: torch.Tensor) -> None:
        """Add the energies of frames ``t0..``, spectra ``group (F, T', 2 P)``."""
        t1 = t0 + group.shape[1]
        f_step = max(1, spectra.CHUNK_ELEMS // (2 * p * (t1 - t0)))
        proj = filt.new_empty(f_step, t1 - t0, n_proj)
        parts = filt.new_empty(f_step, t1 - t0, 3, p)
        # squares summed bin by bin over the chunks, over a chunk's bins once at the end
        sq_proj = filt.real.new_zeros(f_step, t1 - t0, n_proj, 2)
        sq_parts = filt.real.new_zeros(f_step, t1 - t0, 3 * p, 2)
        for f0 in range(0, n_freq, f_step):
            n = min(f_step, n_freq - f0)
            project(group[f0 : f0 + n], filt[f0 : f0 + n], proj[:n], parts[:n])
            for x, sq in ((proj, sq_proj), (parts, sq_parts)):
                flat = torch.view_as_real(x[:n]).view(sq[:n].shape)
                sq[:n].addcmul_(flat, flat)
        edge_proj = filt.new_empty(len(edges), t1 - t0, n_proj)
        edge_parts = filt.new_empty(len(edges), t1 - t0, 3, p)
        project(group[edges], filt[edges], edge_proj, edge_parts)
        for sq, edge, at in ((sq_parts, edge_parts, 0), (sq_proj, edge_proj, 3)):
            edge = torch.view_as_real(edge).reshape(len(edges), t1 - t0, -1, 2)
            # (the edges count once, and were summed with the interior bins above)
            summed = 2 * sq.sum(dim=(0, -1)) - (edge * edge).sum(dim=(0, -1))
            if n_src == 1 and at == 3:
                summed = torch.cat([summed, summed], dim=-1)
            total[t0:t1, at : at + summed.shape[-1] // p] += summed.reshape(t1 - t0, -1, p)

    if spec is not None:
        add_group(0, spec[:, : len(starts)])
    else:
        per_group = min(len(starts), spectra.frames_per_group(2 * p, n_fft))
        buf = filt.new_empty(n_freq, per_group, 2 * p)
        for t0 in range(0, len(starts), per_group):
            part = starts[t0 : t0 + per_group]
            add_group(t0, spectra.frame_spectra(signals, part, win_len, n_fft, buf[:, : len(part)]))
    total /= n_fft
    samples = sample_energies(signals, starts, win_len)
    total = torch.cat([samples[:, :1], total[:, :3], samples[:, 1:], total[:, 3:]], dim=1)
    return total.reshape(len(starts), 7, n_src, n_chan).sum(dim=-1).permute(1, 0, 2)
