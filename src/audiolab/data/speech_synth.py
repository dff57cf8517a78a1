"""Speech-like audio with exact frame-level f0 labels, for training and evaluating pitch trackers.

Two ways to get a labelled clip, both on the pitch grid of :mod:`audiolab.audio.pitch_grid`
(16 kHz, frame ``i`` centred on sample ``i * 160``, a clip of ``n`` samples has ``1 + n // 160``
frames):

- :func:`draw_utterance` + :func:`render_utterance`: a procedural utterance (prosody, voiced
  runs and gaps, moving formants) rendered with a glottal source through a formant filter.
- :func:`resynthesize`: real speech labelled by a teacher tracker, re-rendered with the same
  glottal source on exactly those labels and the real recording's spectral envelope, so the
  labels are exact by construction while the timbre, level and channel stay real.

The source (:func:`glottal_excitation`) is the derivative of a Rosenberg glottal flow pulse
driven by phase accumulation of the per-sample f0. The per-sample f0 is interpolated from the
frame labels (linear in log frequency), so at every frame centre the instantaneous f0 *is* the
label; jitter displaces pulse epochs (not periods), so the phase stays locked to the label and
a frame's mean f0 deviates from it by a few cents at most. Voicing ramps lie between frame
centres: a voiced centre has full voicing, an unvoiced centre none (only noise).

:func:`degrade` / :func:`draw_degradation` model what users' recordings go through (noise,
reverberation, band limits, gain, DC, clipping) on whole clips, :func:`augment_frames` does the
cheap subset batched on 1024-sample training frames.

Every function is deterministic given its ``numpy.random.Generator``; the signal work is torch,
float32 (phase accumulation in float64, which long clips need).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from audiolab.audio.pitch_grid import HOP_LENGTH, SAMPLE_RATE

N_FFT = 512  # STFT of the formant filter / envelope: 32 ms Hann windows
STFT_HOP = 128
OVERSAMPLE = 4  # the glottal flow is rendered at 4x the output rate, then band-limited
VOICE_KEYS = (
    "open_quotient",
    "speed_quotient",
    "jitter",
    "shimmer",
    "tilt_db",
    "breath",
    "frication_db",
    "creak",
    "creak_below_hz",
    "creak_jitter",
    "creak_alternation",
    "formant_scale",
)
NOISE_COLOURS = ("white", "pink", "brown", "babble")
MAX_GLIDE = 2.5  # octaves per second: the fastest f0 change draw_utterance makes


# --------------------------------------------------------------------------- helpers


def _noise(rng: np.random.Generator, *shape: int) -> torch.Tensor:
    """Standard normal noise drawn from ``rng`` (so every signal is a function of the seed)."""
    return torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))


def _interp(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``values`` (K, ...) sampled at 0, 1, ..., K-1 at fractional
    ``positions`` (held constant outside that range)."""
    k = values.shape[0]
    pos = positions.clamp(0, k - 1)
    i0 = pos.floor().long().clamp(max=k - 1)
    i1 = (i0 + 1).clamp(max=k - 1)
    w = (pos - i0.to(pos.dtype)).to(values.dtype)
    w = w.reshape(w.shape + (1,) * (values.dim() - 1))
    return values[i0] * (1 - w) + values[i1] * w


def fill_unvoiced(
    f0: torch.Tensor, voiced: torch.Tensor, default_hz: float = 100.0
) -> torch.Tensor:
    """``f0`` with every unvoiced frame set to the f0 of the nearest voiced frame (ties: the
    earlier one), so that per-sample interpolation never sees a meaningless value. All
    ``default_hz`` when nothing is voiced."""
    f0 = f0.float()
    voiced = voiced.bool()
    if not voiced.any():
        return torch.full_like(f0, default_hz)
    idx = torch.arange(len(f0))
    big = len(f0) * 2
    prev = torch.cummax(torch.where(voiced, idx, torch.full_like(idx, -big)), 0).values
    nxt = torch.where(voiced, idx, torch.full_like(idx, big)).flip(0).cummin(0).values.flip(0)
    use_prev = (idx - prev) <= (nxt - idx)
    nearest = torch.where(use_prev, prev, nxt).clamp(0, len(f0) - 1)
    return f0[nearest]


def frames_to_samples(
    f0: torch.Tensor, voiced: torch.Tensor, n_samples: int, hop: int = HOP_LENGTH
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample f0 (Hz) and voicing amplitude from frame labels centred on ``i * hop``.

    f0 is interpolated linearly in log frequency (unvoiced frames first take their nearest
    voiced neighbour's f0), so the f0 at each frame centre is exactly its label. Voicing is a
    raised-cosine ramp between neighbouring centres (a 10 ms ramp at hop 160): 1 at every voiced
    centre, 0 at every unvoiced one."""
    if f0.shape != voiced.shape or f0.dim() != 1:
        raise ValueError(
            f"f0 and voiced must both be (T,), got {tuple(f0.shape)} and {tuple(voiced.shape)}"
        )
    pos = torch.arange(n_samples, dtype=torch.float64) / hop
    log_f0 = torch.log(fill_unvoiced(f0, voiced).double())
    f0_s = torch.exp(_interp(log_f0, pos)).float()
    v = voiced.double()
    lin = _interp(v, pos)
    # A linear ramp between a 0 and a 1 centre, reshaped to a raised cosine (same end points).
    voicing = (0.5 - 0.5 * torch.cos(math.pi * lin)).float()
    return f0_s, voicing


def _stft(audio: torch.Tensor, n_fft: int = N_FFT, hop: int = STFT_HOP) -> torch.Tensor:
    """Complex STFT ``(frames, n_fft // 2 + 1)``, Hann window, frames centred on ``j * hop``."""
    window = torch.hann_window(n_fft, dtype=audio.dtype, device=audio.device)
    spec = torch.stft(
        audio, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True
    )
    return spec.transpose(0, 1)


def _istft(
    spec: torch.Tensor, length: int, n_fft: int = N_FFT, hop: int = STFT_HOP
) -> torch.Tensor:
    window = torch.hann_window(n_fft, dtype=spec.real.dtype, device=spec.device)
    return torch.istft(spec.transpose(0, 1), n_fft, hop, window=window, center=True, length=length)


def _tilt_curve(
    tilt_db_per_octave: float, corner_hz: float, n_bins: int, sample_rate: int
) -> torch.Tensor:
    """Magnitude falling by ``tilt_db_per_octave`` per octave above ``corner_hz`` (flat below)."""
    freqs = torch.linspace(0, sample_rate / 2, n_bins)
    octaves = torch.log2(freqs.clamp_min(corner_hz) / corner_hz)
    return 10.0 ** (-tilt_db_per_octave * octaves / 20.0)


# --------------------------------------------------------------------------- the voice


def draw_voice(rng: np.random.Generator) -> dict:
    """Random voice parameters for :func:`glottal_excitation` (and ``formant_scale`` for
    :func:`draw_utterance`).

    - ``open_quotient`` (0.4-0.8): open share of each glottal cycle (lax voices are higher).
    - ``speed_quotient`` (1.5-4): opening / closing duration, the pulse's asymmetry.
    - ``jitter`` (0-2 %): per-cycle period perturbation; ``shimmer`` (0-15 %): per-cycle amplitude.
    - ``tilt_db`` (0-8 dB/octave above 500 Hz): extra spectral tilt (breathy/soft voices).
    - ``breath`` (0-0.6, mostly small): aspiration noise level relative to the pulses.
    - ``frication_db`` (-30 to -8): typical unvoiced noise level relative to voiced speech.
    - ``creak`` (20 % of voices): below ``creak_below_hz`` the voice turns creaky (epoch
      jitter up to ``creak_jitter``, every other pulse weaker by ``creak_alternation``).
    - ``formant_scale`` (0.85-1.2): vocal tract size, multiplies the formant frequencies.
    """
    return {
        "open_quotient": float(rng.uniform(0.4, 0.8)),
        "speed_quotient": float(rng.uniform(1.5, 4.0)),
        "jitter": float(rng.uniform(0.0, 0.02)),
        "shimmer": float(rng.uniform(0.0, 0.15)),
        "tilt_db": float(rng.uniform(0.0, 8.0)),
        "breath": float(0.6 * rng.random() ** 2),
        "frication_db": float(rng.uniform(-30.0, -8.0)),
        "creak": bool(rng.random() < 0.2),
        "creak_below_hz": float(rng.uniform(70.0, 130.0)),
        "creak_jitter": float(rng.uniform(0.005, 0.02)),
        "creak_alternation": float(rng.uniform(0.05, 0.15)),
        "formant_scale": float(rng.uniform(0.85, 1.2)),
    }


def _check_voice(params: dict) -> dict:
    missing = [key for key in VOICE_KEYS if key not in params]
    if missing:
        raise KeyError(
            f"voice params lack {missing}: pass the dict draw_voice(rng) returns (or None to draw one)"
        )
    oq = params["open_quotient"]
    if not 0.05 < oq < 1.0:
        raise ValueError(f"open_quotient must be in (0.05, 1), got {oq}: draw_voice gives 0.4-0.8")
    return params


def _flow_pulse(phase: torch.Tensor, open_quotient: float, speed_quotient: float) -> torch.Tensor:
    """Rosenberg glottal flow over one cycle (``phase`` in [0, 1)): a raised-cosine opening of
    duration ``tp``, a quarter-cosine closing of ``tn`` (``tp / tn = speed_quotient``, ``tp + tn
    = open_quotient``), then closed. Continuous, peak 1; its derivative jumps at closure, which
    is why it is differentiated only after band-limiting."""
    tn = open_quotient / (1.0 + speed_quotient)
    tp = open_quotient - tn
    rising = 0.5 - 0.5 * torch.cos(math.pi * phase / tp)
    falling = torch.cos(0.5 * math.pi * (phase - tp) / tn)
    flow = torch.where(phase < tp, rising, falling)
    return torch.where(phase < open_quotient, flow, torch.zeros_like(flow))


def glottal_excitation(
    f0: torch.Tensor,
    voicing: torch.Tensor,
    rng: np.random.Generator,
    params: dict | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> torch.Tensor:
    """A glottal source: Rosenberg flow-derivative pulses where voiced, noise where not.

    Args:
        f0: ``(N,)`` Hz per sample (every sample, also unvoiced ones: positive and finite).
        voicing: ``(N,)`` pulse amplitude in [0, 1] per sample; 0 = unvoiced (noise only).
        rng: the source of every random choice.
        params: :func:`draw_voice`'s dict; None draws one from ``rng``.
        sample_rate: of ``f0`` / ``voicing`` and the result.

    Returns:
        ``(N,)`` float32; the pulses have RMS 1 over fully voiced samples.

    Phase accumulation of ``f0`` (float64) gives the cycles. Jitter displaces each cycle's
    epoch by a random share of a period (period perturbation = difference of neighbouring
    displacements), so the long-term phase follows ``f0`` exactly. Shimmer scales whole cycles
    (the flow is 0 at cycle boundaries, so nothing jumps). The flow is rendered at
    ``OVERSAMPLE`` times the rate, its spectrum truncated to the output band (no aliasing even
    at 600 Hz: the flow falls 12 dB/octave), differentiated and tilted there. Aspiration is
    noise gated by the flow (louder while the glottis is open); frication is noise with a slowly
    wandering level, weighted by ``1 - voicing``.
    """
    params = _check_voice(draw_voice(rng) if params is None else params)
    f0 = torch.as_tensor(f0, dtype=torch.float32)
    voicing = torch.as_tensor(voicing, dtype=torch.float32)
    if f0.dim() != 1 or f0.shape != voicing.shape:
        raise ValueError(
            f"f0 and voicing must both be (N,), got {tuple(f0.shape)} and {tuple(voicing.shape)}"
        )
    if (
        not bool(torch.isfinite(f0).all())
        or bool((f0 <= 0).any())
        or bool((f0 >= sample_rate / 2).any())
    ):
        raise ValueError(
            f"f0 must be finite and in (0, {sample_rate / 2}) Hz at every sample, got range "
            f"[{float(f0.min())}, {float(f0.max())}]: fill unvoiced samples (fill_unvoiced) first"
        )
    n = len(f0)
    m = n * OVERSAMPLE
    f0_up = _interp(f0.double(), torch.arange(m, dtype=torch.float64) / OVERSAMPLE)
    phase0 = rng.random() + torch.cumsum(f0_up / (sample_rate * OVERSAMPLE), 0)
    cycle = phase0.floor().long()
    n_cycles = int(cycle[-1]) + 2

    # Per-cycle randomness: creak strength from the f0 at the cycle's start.
    starts = torch.searchsorted(phase0, torch.arange(n_cycles, dtype=torch.float64)).clamp(
        max=m - 1
    )
    f0_cycle = f0_up[starts].float()
    creak = torch.zeros(n_cycles)
    if params["creak"]:
        below = params["creak_below_hz"]
        creak = ((below - f0_cycle) / (0.3 * below)).clamp(0, 1)
    spread = params["jitter"] / math.sqrt(2.0) + creak * params["creak_jitter"]
    displacement = (_noise(rng, n_cycles) * spread).clamp(-0.2, 0.2).double()
    amplitude = (1.0 + params["shimmer"] * _noise(rng, n_cycles)).clamp(0.3, 1.7)
    amplitude = amplitude * (
        1.0 - params["creak_alternation"] * creak * (torch.arange(n_cycles) % 2)
    )

    frac0 = phase0 - cycle
    phase = (
        phase0
        + displacement[cycle]
        + (displacement[(cycle + 1).clamp(max=n_cycles - 1)] - displacement[cycle]) * frac0
    )
    k = phase.floor().long().clamp(0, n_cycles - 1)
    shape = _flow_pulse(
        (phase - phase.floor()).float(), params["open_quotient"], params["speed_quotient"]
    )
    shape = shape * amplitude[k]
    voicing_up = _interp(voicing, torch.arange(m, dtype=torch.float32) / OVERSAMPLE)
    # Scaling the flow by 1 / f0 makes its derivative's level independent of f0.
    flow = shape * voicing_up * (100.0 / f0_up.float())

    spec = torch.fft.rfft(flow)[: n // 2 + 1]
    freqs = torch.arange(n // 2 + 1, dtype=torch.float32) / n  # cycles per output sample
    tilt = _tilt_curve(params["tilt_db"], 500.0, n // 2 + 1, sample_rate)
    spec = spec * (2j * math.pi * freqs) * tilt
    if n % 2 == 0:
        spec[-1] = 0  # the Nyquist bin of a real signal cannot hold the differentiated phase
    pulses = torch.fft.irfft(spec, n=n)
    full = voicing > 0.5
    if full.any():
        pulses = pulses / pulses[full].pow(2).mean().sqrt().clamp_min(1e-8)

    gate = 0.3 + 0.7 * shape[::OVERSAMPLE] / amplitude.max()
    aspiration = params["breath"] * _noise(rng, n) * gate * voicing
    # Frication level: knots every 25 ms, uniform in dB around the voice's level.
    n_knots = n // (sample_rate // 40) + 2
    knots_db = params["frication_db"] + torch.from_numpy(
        rng.uniform(-25.0, 5.0, n_knots).astype(np.float32)
    )
    level = _interp(
        10.0 ** (knots_db / 20.0), torch.arange(n, dtype=torch.float32) / (sample_rate // 40)
    )
    frication = _noise(rng, n) * level * (1.0 - voicing)
    return (pulses + aspiration + frication).float()


# --------------------------------------------------------------------------- utterances


def draw_utterance(
    rng: np.random.Generator,
    seconds: float,
    fmin: float = 40.0,
    fmax: float = 600.0,
    formant_scale: float | None = None,
) -> dict:
    """Random speech-like frame labels on the 10-ms pitch grid.

    Returns ``{"f0": (T,) Hz float32, "voiced": (T,) bool, "formants": (T, 4) Hz,
    "bandwidths": (T, 4) Hz}`` (torch), ``T = round(seconds * 100) + 1``.

    Prosody in octaves: a speaker base (log-uniform over ``[fmin, fmax]``), phrases of 1-3 s
    each with declination, Gaussian pitch accents (slopes kept under ~2 octaves/s), in 40 % of
    utterances fast glides (0.5-2 octaves/s over 0.1-0.4 s), a small slow wander, the rate
    capped at ``MAX_GLIDE`` (2.5 octaves/s); the contour is then shifted (or compressed) into
    ``[fmin, fmax]``. Voiced runs of 30-400 ms and unvoiced gaps of 20-250 ms, both
    log-uniform (so many short ones). The f0 of an unvoiced frame is its nearest voiced frame's. Formants glide between random vowel targets every
    80-250 ms, scaled by ``formant_scale`` (None: draw 0.85-1.2, as :func:`draw_voice`).
    """
    if not 0 < fmin < fmax:
        raise ValueError(f"need 0 < fmin < fmax, got fmin={fmin}, fmax={fmax}")
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    frame_rate = SAMPLE_RATE / HOP_LENGTH
    n_frames = max(2, int(round(seconds * frame_rate)) + 1)
    t = np.arange(n_frames) / frame_rate
    duration = t[-1] + 1.0 / frame_rate
    lo, hi = math.log2(fmin), math.log2(fmax)

    phrases = np.zeros(n_frames)
    start = 0.0
    while start < duration:  # phrases: a reset, then declination by 0.05-0.4 octave
        length = rng.uniform(1.0, 3.0)
        inside = (t >= start) & (t < start + length)
        phrases[inside] = (
            rng.uniform(-0.1, 0.2) - rng.uniform(0.05, 0.4) * (t[inside] - start) / length
        )
        start += length
    # Resets take 0.5 s (Hann smoothing): at most ~2 octaves/s, never a jump inside a voiced run.
    hann = np.hanning(int(0.5 * frame_rate) + 2)[1:-1]
    padded = np.pad(phrases, len(hann) // 2, mode="edge")
    contour = rng.uniform(lo, hi) + np.convolve(padded, hann / hann.sum(), mode="valid")[:n_frames]
    for centre in rng.uniform(0, duration, rng.poisson(2.0 * duration)):  # pitch accents
        height = rng.uniform(0.05, 0.5) * (1 if rng.random() < 0.8 else -1)
        width = max(rng.uniform(0.05, 0.15), 0.3 * abs(height))  # peak slope ~0.6 h / w <= 2 oct/s
        contour += height * np.exp(-0.5 * ((t - centre) / width) ** 2)
    if rng.random() < 0.4:  # fast glides: a ramp, then hold the new level
        for begin in rng.uniform(0, duration, 1 + rng.poisson(duration / 3.0)):
            slope = rng.uniform(0.5, 2.0) * rng.choice([-1.0, 1.0])
            contour += slope * np.clip(t - begin, 0, rng.uniform(0.1, 0.4))
    knots = rng.normal(0, 0.05, int(duration / 0.3) + 2)
    contour += np.interp(t, np.arange(len(knots)) * 0.3, knots)
    # Where accents, glides and resets pile up, cap the rate at MAX_GLIDE octaves per second.
    steps = np.clip(np.diff(contour), -MAX_GLIDE / frame_rate, MAX_GLIDE / frame_rate)
    contour = contour[0] + np.concatenate([[0.0], np.cumsum(steps)])
    span = contour.max() - contour.min()
    if span > hi - lo:
        contour = lo + (contour - contour.min()) * (hi - lo) / span
    contour -= max(contour.max() - hi, 0.0)
    contour += max(lo - contour.min(), 0.0)
    f0 = np.clip(2.0**contour, fmin, fmax)

    voiced = np.zeros(n_frames, dtype=bool)
    i, state = 0, rng.random() < 0.5
    while i < n_frames:
        ms = (
            math.exp(rng.uniform(math.log(30), math.log(400)))
            if state
            else math.exp(rng.uniform(math.log(20), math.log(250)))
        )
        length = max(2 if not state else 3, int(round(ms * frame_rate / 1000)))
        voiced[i : i + length] = state
        i, state = i + length, not state
    if not voiced.any():
        voiced[n_frames // 4 : max(n_frames // 4 + 3, 3 * n_frames // 4)] = True

    scale = rng.uniform(0.85, 1.2) if formant_scale is None else float(formant_scale)
    formants, bandwidths = _formant_tracks(rng, t, duration, scale)
    f0_t = torch.from_numpy(f0.astype(np.float32))
    voiced_t = torch.from_numpy(voiced)
    return {
        "f0": fill_unvoiced(f0_t, voiced_t),
        "voiced": voiced_t,
        "formants": formants,
        "bandwidths": bandwidths,
    }


def _formant_tracks(rng: np.random.Generator, t: np.ndarray, duration: float, scale: float):
    """Formant and bandwidth tracks ``(T, 4)``: linear glides between vowel targets drawn every
    80-250 ms (F1 250-900, F2 700-2600, F3 1800-3300, F4 3000-4500 Hz, kept in order), smoothed
    over 30 ms, times ``scale``; bandwidths 50-250 Hz."""
    times = [0.0]
    while times[-1] < duration:
        times.append(times[-1] + rng.uniform(0.08, 0.25))
    k = len(times)
    f1 = rng.uniform(250, 900, k)
    f2 = rng.uniform(np.maximum(700, f1 + 200), 2600)
    f3 = rng.uniform(np.maximum(1800, f2 + 300), 3300)
    f4 = rng.uniform(np.maximum(3000, f3 + 300), 4500)
    targets = np.stack([f1, f2, f3, f4], axis=1)
    widths = rng.uniform(50, 250, (k, 4))
    box = np.ones(3) / 3.0  # 30 ms moving average softens the corners of the glides

    def track(values):
        out = np.stack([np.interp(t, times, values[:, j]) for j in range(4)], axis=1)
        padded = np.pad(out, ((1, 1), (0, 0)), mode="edge")
        return np.stack([np.convolve(padded[:, j], box, mode="valid") for j in range(4)], axis=1)

    formants = np.clip(track(targets) * scale, 100.0, 0.45 * SAMPLE_RATE)
    return torch.from_numpy(formants.astype(np.float32)), torch.from_numpy(
        track(widths).astype(np.float32)
    )


def formant_envelope(
    formants: torch.Tensor,
    bandwidths: torch.Tensor,
    n_stft_frames: int,
    sample_rate: int = SAMPLE_RATE,
) -> torch.Tensor:
    """Magnitude envelope ``(n_stft_frames, N_FFT // 2 + 1)`` of a cascade of four two-pole
    resonators (Klatt style, unit gain at DC, peak ~F/B at each formant).

    ``formants`` / ``bandwidths`` are ``(T, 4)`` Hz on the 10-ms grid; they are interpolated to
    the STFT frames (frame ``j`` centred on sample ``j * STFT_HOP``)."""
    if formants.dim() != 2 or formants.shape != bandwidths.shape:
        raise ValueError(
            f"formants and bandwidths must both be (T, n_formants), got {tuple(formants.shape)} and {tuple(bandwidths.shape)}"
        )
    pos = torch.arange(n_stft_frames, dtype=torch.float32) * STFT_HOP / HOP_LENGTH
    freq = _interp(formants.float(), pos).unsqueeze(-1)  # (frames, 4, 1)
    bw = _interp(bandwidths.float(), pos).unsqueeze(-1)
    r = torch.exp(-math.pi * bw / sample_rate)
    theta = 2 * math.pi * freq / sample_rate
    omega = torch.linspace(0, math.pi, N_FFT // 2 + 1)
    z1 = torch.polar(torch.ones_like(omega), -omega)  # e^{-j w}
    denominator = 1 - 2 * r * torch.cos(theta) * z1 + r**2 * z1**2
    dc = 1 - 2 * r * torch.cos(theta) + r**2
    return (dc.abs() / denominator.abs()).prod(dim=1)


def spectral_envelope(
    audio: torch.Tensor,
    n_fft: int = N_FFT,
    hop: int = STFT_HOP,
    n_cepstrum: int | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> torch.Tensor:
    """Smooth magnitude envelope ``(frames, n_fft // 2 + 1)`` of ``audio`` (N,): the log
    magnitude STFT (Hann, frames centred on ``j * hop``) liftered to its lowest ``n_cepstrum``
    quefrencies (default 2 ms, so the harmonics of voices up to ~500 Hz are smoothed away), the
    last quarter tapered to avoid ringing. Magnitudes are floored 100 dB below the clip's
    maximum, so silence and empty bands (8-kHz recordings upsampled) stay near that floor."""
    if audio.dim() != 1:
        raise ValueError(f"audio must be (N,), got shape {tuple(audio.shape)}")
    n_cepstrum = int(round(0.002 * sample_rate)) if n_cepstrum is None else int(n_cepstrum)
    if not 1 <= n_cepstrum <= n_fft // 2:
        raise ValueError(f"n_cepstrum must be in [1, {n_fft // 2}], got {n_cepstrum}")
    magnitude = _stft(audio.float(), n_fft, hop).abs()
    floor = magnitude.max().clamp_min(1e-12) * 1e-5
    cepstrum = torch.fft.irfft(torch.log(magnitude + floor), n=n_fft, dim=-1)
    q = torch.arange(n_fft)
    q = torch.minimum(q, n_fft - q).float()  # the cepstrum of a real spectrum is symmetric
    taper_start = 0.75 * n_cepstrum
    lifter = torch.where(
        q < taper_start,
        1.0,
        0.5 + 0.5 * torch.cos(math.pi * (q - taper_start) / (n_cepstrum - taper_start)),
    )
    lifter = torch.where(q < n_cepstrum, lifter, torch.zeros_like(lifter))
    return torch.exp(torch.fft.rfft(cepstrum * lifter, dim=-1).real)


def apply_envelope(
    excitation: torch.Tensor, envelope: torch.Tensor, keep_level: bool = True
) -> torch.Tensor:
    """Impose ``envelope`` ``(frames, N_FFT // 2 + 1)`` on ``excitation`` (N,) in the STFT domain.

    The excitation's own smooth envelope (:func:`spectral_envelope`) is divided out first, so
    the result's smooth spectrum is ``envelope`` and only the fine structure (harmonics, noise)
    comes from the excitation. With ``keep_level`` the division keeps each frame's level (the
    own envelope is normalised to unit mean square per frame): use it for envelopes without a
    level (a formant filter). Without it, the level comes from ``envelope`` too (resynthesis)."""
    spec = _stft(excitation.float())
    if envelope.shape != spec.shape:
        raise ValueError(
            f"envelope must be (frames, bins) = {tuple(spec.shape)} for {len(excitation)} samples "
            f"(n_fft {N_FFT}, hop {STFT_HOP}, centred frames), got {tuple(envelope.shape)}"
        )
    own = spectral_envelope(excitation.float())
    if keep_level:
        own = own / own.pow(2).mean(dim=-1, keepdim=True).sqrt()
    return _istft(spec / own * envelope, len(excitation))


def _peak_normalise(audio: torch.Tensor, peak: float) -> torch.Tensor:
    return audio * (peak / audio.abs().max().clamp_min(1e-8))


def render_utterance(
    utterance: dict,
    rng: np.random.Generator,
    params: dict | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render :func:`draw_utterance`'s labels to ``(audio (N,), f0 (T,), voiced (T,))``.

    ``N = (T - 1) * HOP_LENGTH + 1``: the last sample is the last frame's centre, and
    ``1 + N // HOP_LENGTH == T``. The glottal source on the per-sample labels
    (:func:`frames_to_samples`) goes through the formant filter (:func:`formant_envelope`,
    times a -6 dB/octave source slope above 300 Hz plus the voice's extra tilt, since
    :func:`apply_envelope` flattens the source's own envelope); the peak is set to -20..-1 dBFS.
    """
    if sample_rate != SAMPLE_RATE:
        raise ValueError(
            f"render_utterance works on the {SAMPLE_RATE}-Hz pitch grid, got sample_rate={sample_rate}"
        )
    params = _check_voice(draw_voice(rng) if params is None else params)
    f0, voiced = utterance["f0"].float(), utterance["voiced"].bool()
    n = (len(f0) - 1) * HOP_LENGTH + 1
    f0_s, voicing = frames_to_samples(f0, voiced, n)
    excitation = glottal_excitation(f0_s, voicing, rng, params, sample_rate)
    n_stft = 1 + n // STFT_HOP
    envelope = formant_envelope(utterance["formants"], utterance["bandwidths"], n_stft, sample_rate)
    envelope = envelope * _tilt_curve(6.0 + params["tilt_db"], 300.0, N_FFT // 2 + 1, sample_rate)
    audio = apply_envelope(excitation, envelope, keep_level=True)
    audio = _peak_normalise(audio, 10.0 ** (rng.uniform(-20.0, -1.0) / 20.0))
    return audio.float(), f0, voiced


def resynthesize(
    audio: torch.Tensor,
    f0: torch.Tensor,
    voiced: torch.Tensor,
    rng: np.random.Generator,
    params: dict | None = None,
) -> torch.Tensor:
    """Real 16-kHz speech ``audio`` (N,) re-rendered on its frame labels (``f0``, ``voiced``,
    ``(T,)`` with ``T = 1 + N // HOP_LENGTH``, e.g. from a teacher tracker).

    The excitation is :func:`glottal_excitation` on exactly those labels (unvoiced f0 values
    are ignored), and each STFT frame gets the real audio's smooth envelope and level
    (:func:`spectral_envelope`; formants, tilt, band limits - an 8-kHz recording's empty band
    above 4 kHz stays empty). Unvoiced frames become noise under the real envelope. Same
    length as ``audio``, RMS matched to it, peak at most 0.99."""
    audio = torch.as_tensor(audio, dtype=torch.float32)
    if audio.dim() != 1:
        raise ValueError(f"audio must be (N,) mono 16-kHz samples, got shape {tuple(audio.shape)}")
    n = len(audio)
    if f0.shape != voiced.shape or len(f0) != 1 + n // HOP_LENGTH:
        raise ValueError(
            f"f0 and voiced must be (1 + N // {HOP_LENGTH},) = ({1 + n // HOP_LENGTH},) for N={n} samples, "
            f"got {tuple(f0.shape)} and {tuple(voiced.shape)}"
        )
    voiced = voiced.bool()
    f0 = torch.where(
        voiced, f0.float().clamp(20.0, 2000.0), torch.zeros_like(f0, dtype=torch.float32)
    )
    f0_s, voicing = frames_to_samples(f0, voiced, n)
    excitation = glottal_excitation(f0_s, voicing, rng, params)
    out = apply_envelope(excitation, spectral_envelope(audio), keep_level=False)
    out = out * (audio.pow(2).mean().sqrt() / out.pow(2).mean().sqrt().clamp_min(1e-12))
    peak = float(out.abs().max())
    if peak > 0.99:
        out = out * (0.99 / peak)
    return out.float()


# --------------------------------------------------------------------------- degradations


def _coloured_noise(rng: np.random.Generator, n: int, colour: str) -> torch.Tensor:
    """Noise of unit RMS: white, pink (1/f power), brown (1/f^2) or babble-like (speech-shaped
    noise whose level is modulated at syllable rates, 2-8 Hz)."""
    if colour not in NOISE_COLOURS:
        raise ValueError(f"unknown noise colour {colour!r}: use one of {NOISE_COLOURS}")
    spec = torch.fft.rfft(_noise(rng, n))
    freqs = torch.fft.rfftfreq(n, 1.0 / SAMPLE_RATE).clamp_min(20.0)
    if colour == "pink":
        spec = spec / freqs.sqrt()
    elif colour == "brown":
        spec = spec / freqs
    elif colour == "babble":  # long-term speech spectrum: flat to 500 Hz, -9 dB/octave above
        spec = spec * _tilt_curve(9.0, 500.0, len(freqs), SAMPLE_RATE) * (freqs > 80)
    noise = torch.fft.irfft(spec, n=n)
    if colour == "babble":
        t = torch.arange(n) / SAMPLE_RATE
        rates = torch.from_numpy(rng.uniform(2.0, 8.0, 4).astype(np.float32))
        offsets = torch.from_numpy(rng.uniform(0, 2 * math.pi, 4).astype(np.float32))
        modulation = (1.0 + torch.sin(2 * math.pi * rates[:, None] * t + offsets[:, None])).mean(0)
        noise = noise * (0.2 + modulation)
    return noise / noise.pow(2).mean().sqrt().clamp_min(1e-12)


def room_impulse_response(
    rng: np.random.Generator, rt60: float, sample_rate: int = SAMPLE_RATE
) -> torch.Tensor:
    """A synthetic RIR: the direct path at sample 0 (amplitude 1), 3-8 early reflections in the
    first 2-25 ms, then exponentially decaying noise (-60 dB after ``rt60`` s, 1.2 * rt60 long)
    with a direct-to-reverberant energy ratio of -6..+6 dB."""
    if not 0 < rt60 <= 5:
        raise ValueError(f"reverb_rt60 must be in (0, 5] seconds, got {rt60}")
    length = max(int(1.2 * rt60 * sample_rate), int(0.03 * sample_rate))
    t = torch.arange(length) / sample_rate
    onset = rng.uniform(0.002, 0.008)
    tail = _noise(rng, length) * torch.exp(-6.9078 * t / rt60) * (t >= onset)
    drr_db = rng.uniform(-6.0, 6.0)
    tail = tail * (10 ** (-drr_db / 20) / tail.pow(2).sum().sqrt().clamp_min(1e-12))
    rir = tail
    n_early = int(rng.integers(3, 9))
    delays = rng.integers(int(0.002 * sample_rate), int(0.025 * sample_rate), n_early)
    gains = rng.uniform(0.1, 0.6, n_early) * rng.choice([-1.0, 1.0], n_early)
    rir[torch.from_numpy(delays)] += torch.from_numpy(gains.astype(np.float32))
    rir[0] = 1.0
    return rir


def _fft_convolve(signal: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Linear convolution, truncated to ``len(signal)`` (a kernel's sample 0 is not delayed)."""
    size = len(signal) + len(kernel) - 1
    out = torch.fft.irfft(torch.fft.rfft(signal, n=size) * torch.fft.rfft(kernel, n=size), n=size)
    return out[: len(signal)]


def _band_mask(freqs: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """1 inside ``[low, high]`` Hz, 0 outside, with raised-cosine ramps 10 % of the edge
    frequency wide *inside* the band (nothing below ``low`` or above ``high`` passes). A
    ``low`` of 0 makes it a low-pass (DC passes)."""
    ramp_low = (0.1 * low).clamp_min(1.0)
    ramp_high = (0.1 * high).clamp_min(1.0)
    up = torch.where(low > 0, ((freqs - low) / ramp_low).clamp(0, 1), torch.ones_like(freqs))
    down = ((high - freqs) / ramp_high).clamp(0, 1)
    return (0.5 - 0.5 * torch.cos(math.pi * up)) * (0.5 - 0.5 * torch.cos(math.pi * down))


def degrade(
    audio: torch.Tensor,
    rng: np.random.Generator,
    noise_snr_db: float | None = None,
    reverb_rt60: float | None = None,
    band: str | None = None,
    gain_db: float = 0.0,
    dc: float = 0.0,
    clip: float | None = None,
) -> torch.Tensor:
    """A clip (N,) at 16 kHz through what recordings meet, in this order:

    1. ``reverb_rt60`` (s): convolution with :func:`room_impulse_response` (direct path
       undelayed, same length out, RMS kept).
    2. ``noise_snr_db``: white, pink, brown or babble-like noise (``rng`` picks) at exactly
       this SNR relative to the (reverberant) signal's power over the clip.
    3. ``band``: ``"telephone"`` (300-3400 Hz) or ``"lowpass"`` (random cutoff 2-6 kHz), an
       FFT-domain mask over the whole clip.
    4. ``gain_db``, then ``dc`` added, then hard clipping at ``clip`` times the peak so far.
    """
    x = torch.as_tensor(audio, dtype=torch.float32)
    if x.dim() != 1:
        raise ValueError(f"audio must be (N,), got shape {tuple(x.shape)}")
    n = len(x)
    if reverb_rt60 is not None:
        rms = x.pow(2).mean().sqrt()
        x = _fft_convolve(x, room_impulse_response(rng, float(reverb_rt60)))
        x = x * (rms / x.pow(2).mean().sqrt().clamp_min(1e-12))
    if noise_snr_db is not None:
        colour = NOISE_COLOURS[int(rng.integers(len(NOISE_COLOURS)))]
        power = x.pow(2).mean()
        x = x + _coloured_noise(rng, n, colour) * (power * 10 ** (-float(noise_snr_db) / 10)).sqrt()
    if band is not None:
        if band == "telephone":
            low, high = 300.0, 3400.0
        elif band == "lowpass":
            low, high = 0.0, float(rng.uniform(2000.0, 6000.0))
        else:
            raise ValueError(f"band must be None, 'telephone' or 'lowpass', got {band!r}")
        freqs = torch.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
        mask = _band_mask(freqs, torch.tensor(low), torch.tensor(high))
        x = torch.fft.irfft(torch.fft.rfft(x) * mask, n=n)
    x = x * 10 ** (gain_db / 20) + dc
    if clip is not None:
        if not 0 < clip <= 1:
            raise ValueError(f"clip is a fraction of the peak in (0, 1], got {clip}")
        limit = float(x.abs().max()) * clip
        x = x.clamp(-limit, limit)
    return x


def draw_degradation(rng: np.random.Generator, strength: str = "train") -> dict:
    """Keyword arguments for :func:`degrade`.

    ``"train"``: a random subset - noise (60 %, -5..30 dB SNR), reverb (30 %, RT60 0.1-1.0 s),
    a band limit (30 %), gain (50 %, -20..+6 dB), DC (10 %), clipping (15 %, at 0.2-0.8 of the
    peak). ``"eval"``: always noise at 0-20 dB SNR plus reverb of RT60 0.2-0.8 s, nothing else.
    """
    if strength == "eval":
        return {
            "noise_snr_db": float(rng.uniform(0.0, 20.0)),
            "reverb_rt60": float(rng.uniform(0.2, 0.8)),
        }
    if strength != "train":
        raise ValueError(f"strength must be 'train' or 'eval', got {strength!r}")
    draws = rng.random(6)
    kwargs: dict = {}
    if draws[0] < 0.6:
        kwargs["noise_snr_db"] = float(rng.uniform(-5.0, 30.0))
    if draws[1] < 0.3:
        kwargs["reverb_rt60"] = float(rng.uniform(0.1, 1.0))
    if draws[2] < 0.3:
        kwargs["band"] = "telephone" if rng.random() < 0.5 else "lowpass"
    if draws[3] < 0.5:
        kwargs["gain_db"] = float(rng.uniform(-20.0, 6.0))
    if draws[4] < 0.1:
        kwargs["dc"] = float(rng.uniform(-0.05, 0.05))
    if draws[5] < 0.15:
        kwargs["clip"] = float(rng.uniform(0.2, 0.8))
    return kwargs


def augment_frames(frames: torch.Tensor, rng: np.random.Generator, p: float = 0.5) -> torch.Tensor:
    """Batched training augmentation of pitch frames ``(B, 1024)`` (any frame length works).

    Each frame independently, with probability ``p``, gets a random subset (each 50 %) of:
    coloured noise (white/pink/brown) at -5..30 dB SNR relative to the frame's power, a band
    limit (telephone 300-3400 Hz or low-pass 1.5-6 kHz, an rfft mask of the frame), hard
    clipping at 0.1-0.7 of the frame's peak, gain -30..+6 dB, and a DC offset (up to 10 % of
    the peak). Frames not chosen are returned bit-identical. All random draws have fixed
    shapes, so the result depends on ``rng``'s state and ``frames`` alone."""
    if frames.dim() != 2:
        raise ValueError(f"frames must be (B, samples), got shape {tuple(frames.shape)}")
    if not 0 <= p <= 1:
        raise ValueError(f"p must be a probability in [0, 1], got {p}")
    b, n = frames.shape
    x = frames.float()
    chosen = torch.from_numpy(rng.random(b) < p)
    use = chosen[:, None] & torch.from_numpy(
        rng.random((b, 5)) < 0.5
    )  # noise, band, clip, gain, dc
    u = torch.from_numpy(rng.random((b, 8)).astype(np.float32))
    white = _noise(rng, b, n)

    freqs = torch.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    exponent = torch.floor(u[:, 0] * 3)[:, None]  # 0 white, 1 pink, 2 brown (power ~ 1/f^k)
    shaped = torch.fft.irfft(torch.fft.rfft(white) * freqs.clamp_min(20.0) ** (-exponent / 2), n=n)
    snr_db = -5.0 + 35.0 * u[:, 1:2]
    power = x.pow(2).mean(dim=1, keepdim=True)
    scale = (
        power * 10 ** (-snr_db / 10) / shaped.pow(2).mean(dim=1, keepdim=True).clamp_min(1e-12)
    ).sqrt()
    x = torch.where(use[:, 0:1], x + shaped * scale, x)

    telephone = u[:, 2:3] < 0.5
    low = torch.where(telephone, 300.0, 0.0)
    high = torch.where(telephone, 3400.0, 1500.0 + 4500.0 * u[:, 3:4])
    mask = _band_mask(freqs, low, high)
    x = torch.where(use[:, 1:2], torch.fft.irfft(torch.fft.rfft(x) * mask, n=n), x)

    peak = x.abs().amax(dim=1, keepdim=True)
    limit = peak * (0.1 + 0.6 * u[:, 4:5])
    x = torch.where(use[:, 2:3], torch.maximum(torch.minimum(x, limit), -limit), x)
    gain = 10 ** ((-30.0 + 36.0 * u[:, 5:6]) / 20)
    x = torch.where(use[:, 3:4], x * gain, x)
    offset = (u[:, 6:7] - 0.5) * 0.2 * x.abs().amax(dim=1, keepdim=True)
    x = torch.where(use[:, 4:5], x + offset, x)
    return x.to(frames.dtype)
