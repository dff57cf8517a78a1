"""Post-processing of decoded pitch, batched over any leading axes (torch, any device).

Conventions: pitch tracks are ``(..., frames)`` tensors (Hz or cents) in which ``NaN``
marks an unvoiced frame; periodicity is the network's activation at the decoded bin,
in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from audiolab.audio.stft import Stft

# A-weighting (IEC 61672-1): pole frequencies in Hz, and the offset that makes the
# weighting 0 dB at 1 kHz.
_A_POLES = (20.598997, 107.65265, 737.86223, 12194.217)
_A_OFFSET_DB = 2.0
LOUDNESS_FLOOR_DB = -100.0


def periodicity(activations: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """The activation of each frame at its decoded bin: ``activations`` ``(..., bins)``,
    ``bins`` ``activations.shape[:-1]`` -> ``activations.shape[:-1]``."""
    return activations.gather(-1, bins.unsqueeze(-1)).squeeze(-1)


def threshold(pitch: torch.Tensor, periodicity: torch.Tensor, value: float = 0.21) -> torch.Tensor:
    """``pitch`` with the frames whose periodicity is below ``value`` set to NaN."""
    return pitch.masked_fill(periodicity < value, math.nan)


def hysteresis_voicing(periodicity: torch.Tensor, low: float = 0.19, high: float = 0.31) -> torch.Tensor:
    """Voiced frames by hysteresis thresholding: a run of consecutive frames with
    periodicity at least ``low`` is voiced when one of its frames reaches ``high``. Short
    dips of confidence inside a note do not cut it, and isolated weak frames do not start
    one. Returns a bool tensor of the shape of ``periodicity`` ``(..., frames)``."""
    if not low <= high:
        raise ValueError(f"hysteresis needs low <= high, got low={low} and high={high}")
    shape = periodicity.shape
    p = periodicity.reshape(-1, shape[-1])
    above = p >= low
    before = torch.cat([torch.zeros_like(above[:, :1]), above[:, :-1]], dim=1)
    starts = above & ~before
    # a number per run, unique over the whole batch: run index within the row, offset by
    # the row; frames below `low` go to a dummy slot
    run = torch.cumsum(starts, dim=1)
    n_slots = shape[-1] + 1
    slot = torch.where(above, run + n_slots * torch.arange(p.shape[0], device=p.device)[:, None], 0)
    strong = torch.zeros(p.shape[0] * n_slots, dtype=torch.uint8, device=p.device)
    strong = strong.scatter_reduce(0, slot.flatten(), (p >= high).flatten().to(torch.uint8), "amax")
    return (above & strong[slot].bool()).reshape(shape)


def hysteresis(pitch: torch.Tensor, periodicity: torch.Tensor, low: float = 0.19, high: float = 0.31) -> torch.Tensor:
    """``pitch`` with the frames that :func:`hysteresis_voicing` calls unvoiced set to NaN."""
    return pitch.masked_fill(~hysteresis_voicing(periodicity, low, high), math.nan)


def a_weighting_db(frequencies: torch.Tensor) -> torch.Tensor:
    """A-weighting in dB at ``frequencies`` (Hz); -inf at 0 Hz."""
    f2 = frequencies.double() ** 2
    p1, p2, p3, p4 = (p**2 for p in _A_POLES)
    gain = p4 * f2**2 / ((f2 + p1) * torch.sqrt((f2 + p2) * (f2 + p3)) * (f2 + p4))
    return (20.0 * torch.log10(gain) + _A_OFFSET_DB).to(frequencies.dtype)


def a_weighted_loudness(
    audio: torch.Tensor, sample_rate: int, hop_length: int, n_fft: int | None = None
) -> torch.Tensor:
    """A-weighted level of every frame in dB full scale: the mean square of the
    Hann-windowed frame after A-weighting (through Parseval, from its spectrum), so that
    a full-scale 1 kHz sine reads -3 dB and digital silence the floor, -100 dB.

    This is a level, not torchcrepe's mean of floored dB values over frequency bins,
    which reads a clean loud tone as near-silent because most of its bins are empty.

    Frames are centred every ``hop_length`` samples with zero padding, the same frames as
    :func:`audiolab.pitch.predict`: ``audio`` ``(..., samples)`` -> ``(..., samples //
    hop_length + 1)``. ``n_fft`` defaults to 64 ms (1024 samples at 16 kHz, CREPE's frame)."""
    n_fft = n_fft or round(0.064 * sample_rate)
    stft = Stft(n_fft, hop_length, pad_mode="constant").to(audio.device)
    power = stft(audio).abs().square()  # (..., bins, frames)
    freqs = torch.linspace(0, sample_rate / 2, power.shape[-2], device=audio.device, dtype=torch.float64)
    gain = torch.pow(10.0, a_weighting_db(freqs) / 10.0)
    # the one-sided spectrum holds each frequency but DC (and Nyquist) twice over
    gain[1 : n_fft - n_fft // 2] *= 2.0
    scale = n_fft * stft.window.double().square().sum()
    mean_square = torch.einsum("...ft,f->...t", power.double(), gain) / scale
    floor = 10.0 ** (LOUDNESS_FLOOR_DB / 10.0)
    return (10.0 * torch.log10(mean_square.clamp_min(floor))).to(power.dtype)


def silence_gate(periodicity: torch.Tensor, loudness: torch.Tensor, threshold_db: float = -60.0) -> torch.Tensor:
    """Periodicity set to 0 on frames quieter than ``threshold_db``
    (:func:`a_weighted_loudness`), where the network's confidence means nothing."""
    return periodicity.masked_fill(loudness < threshold_db, 0.0)


def _windows(x: torch.Tensor, window: int) -> torch.Tensor:
    if window < 1 or window % 2 == 0:
        raise ValueError(f"the filter window must be an odd number of frames, got {window}")
    half = window // 2
    shape = x.shape
    padded = F.pad(x.reshape(-1, 1, shape[-1]), (half, half), value=math.nan)
    return padded.unfold(-1, window, 1).reshape(*shape, window)


def nan_median_filter(x: torch.Tensor, window: int = 3, keep_nan: bool = True) -> torch.Tensor:
    """Running median over ``window`` frames (odd) along the last axis, ignoring NaNs (an
    all-NaN window gives NaN; an even count of values takes the lower middle one). With
    ``keep_nan`` a frame that is NaN stays NaN, so smoothing never voices an unvoiced frame."""
    out = _windows(x, window).nanmedian(dim=-1).values
    return out.masked_fill(torch.isnan(x), math.nan) if keep_nan else out


def nan_mean_filter(x: torch.Tensor, window: int = 3, keep_nan: bool = True) -> torch.Tensor:
    """Running mean over ``window`` frames (odd), ignoring NaNs; as :func:`nan_median_filter`."""
    out = _windows(x, window).nanmean(dim=-1)
    return out.masked_fill(torch.isnan(x), math.nan) if keep_nan else out
