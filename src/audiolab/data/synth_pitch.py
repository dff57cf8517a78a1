"""Procedurally generated harmonic tones with exact frame-level f0 labels.

Every example is a function of ``(seed, stream, index)`` alone: its random parameters
come from ``numpy.random.default_rng([seed, stream, index])`` and the signal is
rendered for a whole batch at once in torch. Validation and test sets are therefore
fixed, and the training stream never repeats (a new block of indices every epoch).

One example is a clip whose frames (``frame_length`` samples, ``hop_length`` apart)
are labelled with the instantaneous f0 at their centre and a voicing flag:
``{"frames": (T, frame_length), "f0": (T,), "voiced": (T,), "times": (T,)}`` (``times``: the
frame centres in seconds, as every pitch evaluation batch carries them). Training clips are a
single frame long, so every training example is an independent draw; evaluation clips
are ``clip_seconds`` long contours.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from audiolab.data.sampling import EpochSampler

STREAM_TRAIN, STREAM_VAL, STREAM_TEST = 0, 1, 2
CONTOURS = ("steady", "vibrato", "glide", "glide_vibrato")


class SynthToneRenderer:
    """Renders batches of harmonic tones from per-example parameters.

    Args:
        sample_rate: output rate in Hz.
        fmin, fmax: f0 range in Hz; every contour stays inside it.
        snr_db: range of the signal-to-noise ratio of the added white noise.
        clean_prob: probability that an example has no noise at all.
        unvoiced_fraction: expected fraction of time inside unvoiced gaps.
        gap_seconds: range of the length of one unvoiced gap.
        max_harmonics: number of partials rendered (those above 0.45 x the sample rate
            are faded out, so nothing aliases).
        max_glide_cents_per_second: steepest glide.
        vibrato_cents: range of the vibrato depth (peak deviation).
        vibrato_hz: range of the vibrato rate.
        sine_prob: probability that an example is a pure sine (its first partial only):
            test tones and sweeps, where a tracker has one partial to go on.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        fmin: float = 32.7,
        fmax: float = 1975.5,
        snr_db: tuple[float, float] = (0.0, 40.0),
        clean_prob: float = 0.2,
        unvoiced_fraction: float = 0.15,
        gap_seconds: tuple[float, float] = (0.03, 0.3),
        max_harmonics: int = 40,
        max_glide_cents_per_second: float = 1200.0,
        vibrato_cents: tuple[float, float] = (10.0, 80.0),
        vibrato_hz: tuple[float, float] = (3.0, 8.0),
        sine_prob: float = 0.0,
    ) -> None:
        check_f0_range(fmin, fmax, sample_rate)
        if not 0.0 <= unvoiced_fraction < 1.0:
            raise ValueError(f"unvoiced_fraction must be in [0, 1), got {unvoiced_fraction}")
        if snr_db[0] > snr_db[1] or gap_seconds[0] > gap_seconds[1] or gap_seconds[0] <= 0:
            raise ValueError(f"bad ranges: snr_db={snr_db}, gap_seconds={gap_seconds}")
        self.sample_rate = sample_rate
        self.cents_range = (1200 * math.log2(fmin / 10), 1200 * math.log2(fmax / 10))
        self.snr_db = snr_db
        self.clean_prob = clean_prob
        self.gap_seconds = gap_seconds
        mean_gap = 0.5 * (gap_seconds[0] + gap_seconds[1])
        # Gaps are a Poisson process; with rate r and mean length m the covered fraction
        # of time is about 1 - exp(-r m).
        self.gap_rate = -math.log(1.0 - unvoiced_fraction) / mean_gap
        self.max_harmonics = max_harmonics
        self.max_glide = max_glide_cents_per_second
        self.vibrato_cents = vibrato_cents
        self.vibrato_hz = vibrato_hz
        if not 0.0 <= sine_prob <= 1.0:
            raise ValueError(f"sine_prob must be in [0, 1], got {sine_prob}")
        self.sine_prob = sine_prob

    # -- parameters ------------------------------------------------------------------
    def draw(self, rng: np.random.Generator, n_samples: int) -> dict[str, np.ndarray]:
        """Random parameters of one example."""
        sr = self.sample_rate
        duration = n_samples / sr
        lo, hi = self.cents_range
        kind = rng.integers(len(CONTOURS))
        glide = kind in (2, 3)
        vibrato = kind in (1, 3)
        depth = rng.uniform(*self.vibrato_cents) if vibrato else 0.0
        slope = rng.uniform(-self.max_glide, self.max_glide) if glide else 0.0
        # Keep the whole contour inside [lo, hi]: the glide's excursion and the vibrato
        # depth are shrunk when the range is narrower than they need.
        span = abs(slope) * duration
        if span + 2 * depth > hi - lo:
            scale = (hi - lo) / (span + 2 * depth)
            slope, depth, span = slope * scale, depth * scale, span * scale
        start_lo = lo + depth + max(0.0, -slope * duration)
        start_hi = hi - depth - max(0.0, slope * duration)
        start = rng.uniform(start_lo, max(start_lo, start_hi))

        harmonics = np.arange(1, self.max_harmonics + 1)
        tilt = rng.uniform(0.0, 2.0)
        amps = harmonics.astype(np.float64) ** -tilt * rng.uniform(0.2, 1.0, self.max_harmonics)
        if rng.random() < 0.2:  # odd partials only (clarinet-like)
            amps[1::2] = 0.0
        phases = rng.uniform(0, 2 * np.pi, self.max_harmonics)
        # drawn only when enabled, so that other configs keep their random streams
        if self.sine_prob > 0 and rng.random() < self.sine_prob:
            amps[1:] = 0.0

        n_gaps = rng.poisson(self.gap_rate * (duration + self.gap_seconds[1]))
        gap_len = rng.uniform(*self.gap_seconds, n_gaps)
        gap_start = rng.uniform(-self.gap_seconds[1], duration, n_gaps)
        noisy = rng.random() >= self.clean_prob
        return {
            "start": np.float64(start),
            "slope": np.float64(slope),
            "depth": np.float64(depth),
            "rate": np.float64(rng.uniform(*self.vibrato_hz)),
            "vphase": np.float64(rng.uniform(0, 2 * np.pi)),
            "amps": amps,
            "phases": phases,
            "gap_start": gap_start,
            "gap_len": gap_len,
            "snr_db": np.float64(rng.uniform(*self.snr_db) if noisy else np.inf),
            "level": np.float64(10 ** rng.uniform(-1.3, -0.05)),
            "noise": rng.standard_normal(n_samples).astype(np.float32),
        }

    # -- rendering ------------------------------------------------------------------
    def contour_cents(self, p: dict[str, torch.Tensor], t: torch.Tensor) -> torch.Tensor:
        """f0 in cents at times ``t`` (seconds, shape (N,) or (B, N)), shape (B, N)."""
        vib = p["depth"][:, None] * torch.sin(2 * math.pi * p["rate"][:, None] * t + p["vphase"][:, None])
        return p["start"][:, None] + p["slope"][:, None] * t + vib

    def voicing(self, p: dict[str, torch.Tensor], t: torch.Tensor) -> torch.Tensor:
        """Amplitude envelope in [0, 1] (0 inside gaps, 5 ms ramps), shape (B, N)."""
        ramp = 0.005
        start = p["gap_start"][:, :, None]
        end = start + p["gap_len"][:, :, None]
        inside = torch.minimum(t[None, None] - start, end - t[None, None]) / ramp
        dip = inside.clamp(0.0, 1.0).amax(dim=1) if start.shape[1] else torch.zeros_like(t).expand(start.shape[0], -1)
        return 1.0 - dip

    def render(self, params: list[dict[str, np.ndarray]], n_samples: int, centers: torch.Tensor):
        """Audio ``(B, n_samples)``, f0 in Hz at ``centers`` ``(B, T)`` and voicing ``(B, T)``."""
        sr = self.sample_rate
        p = stack_params(params)
        t = torch.arange(n_samples, dtype=torch.float64) / sr
        f0 = 10.0 * torch.exp2(self.contour_cents(p, t) / 1200.0)  # (B, N)
        audio = self.synthesize(p, f0, self.voicing(p, t).float())

        tc = centers.double() / sr
        f0_c = 10.0 * torch.exp2(self.contour_cents(p, tc) / 1200.0)
        voiced = self.voicing(p, tc) >= 0.5
        return audio, f0_c.float(), voiced

    def synthesize(self, p: dict[str, torch.Tensor], f0: torch.Tensor, envelope: torch.Tensor) -> torch.Tensor:
        """Harmonic tones on an f0 given for every sample, ``(B, N)`` in Hz (float64), with
        an amplitude ``envelope`` ``(B, N)`` in [0, 1]; partial amplitudes and phases,
        noise and level come from :func:`stack_params` of :meth:`draw`. Audio ``(B, N)``."""
        sr = self.sample_rate
        # The phase is accumulated in float64 (no drift over long clips); the partials,
        # the bulk of the work, are rendered in float32.
        phase = torch.remainder(torch.cumsum(2 * math.pi * f0 / sr, dim=-1), 2 * math.pi).float()
        f0 = f0.float()
        h = torch.arange(1, self.max_harmonics + 1, dtype=torch.float32)[None, :, None]
        # Partials fade out between 0.40 and 0.45 x the sample rate: no aliasing, no clicks.
        gain = p["amps"].float()[:, :, None] * ((0.45 * sr - h * f0[:, None, :]) / (0.05 * sr)).clamp_(0.0, 1.0)
        partials = torch.sin(h * phase[:, None, :] + p["phases"].float()[:, :, None])
        tone = torch.einsum("bhn,bhn->bn", gain, partials)
        tone = tone / tone.abs().amax(dim=-1, keepdim=True).clamp_min(1e-9)
        tone = tone * envelope
        rms = tone.pow(2).mean(dim=-1, keepdim=True).sqrt().clamp_min(1e-4)
        noise_rms = rms * 10.0 ** (-p["snr_db"].float()[:, None] / 20.0)
        audio = tone + noise_rms * p["noise"]
        return audio / audio.abs().amax(dim=-1, keepdim=True).clamp_min(1e-9) * p["level"].float()[:, None]


def check_f0_range(fmin: float, fmax: float, sample_rate: int) -> None:
    """Raise a ValueError naming the problem when ``[fmin, fmax]`` cannot be rendered."""
    nyquist = sample_rate / 2
    if not (0 < fmin < fmax < nyquist):
        raise ValueError(
            f"impossible f0 range fmin={fmin} Hz, fmax={fmax} Hz at sample_rate={sample_rate} Hz: "
            f"need 0 < fmin < fmax < {nyquist:g} Hz (the Nyquist frequency). "
            "Fix data.fmin / data.fmax (CREPE covers 32.7 to 1975.5 Hz)."
        )


def stack_params(params: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack per-example parameters; variable-length gap lists are padded with empty gaps."""
    out = {}
    for key in params[0]:
        values = [np.atleast_1d(p[key]) for p in params]
        if key in ("gap_start", "gap_len"):
            width = max(len(v) for v in values)
            values = [np.pad(v, (0, width - len(v)), constant_values=0.0 if key == "gap_len" else -1.0) for v in values]
        out[key] = torch.from_numpy(np.stack(values))
        if key not in ("amps", "phases", "gap_start", "gap_len", "noise"):
            out[key] = out[key][:, 0]
    return out


class SynthPitchDataset(Dataset):
    """A fixed-size window ``[offset, offset + size)`` of an endless deterministic stream.

    ``__getitems__`` renders a whole batch in one pass (the DataLoader calls it with the
    batch's indices); ``__getitem__`` renders one example.
    """

    def __init__(
        self,
        renderer: SynthToneRenderer,
        size: int,
        n_frames: int,
        seed: int,
        stream: int,
        frame_length: int = 1024,
        hop_length: int = 160,
    ) -> None:
        self.renderer = renderer
        self.size = size
        self.seed = seed
        self.stream = stream
        self.frame_length = frame_length
        self.hop_length = hop_length
        self.n_frames = n_frames
        self.n_samples = frame_length + (n_frames - 1) * hop_length
        self.centers = frame_length // 2 + hop_length * torch.arange(n_frames)

    def __len__(self) -> int:
        return self.size

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        params = [
            self.renderer.draw(np.random.default_rng([self.seed, self.stream, int(i)]), self.n_samples)
            for i in indices
        ]
        audio, f0, voiced = self.renderer.render(params, self.n_samples, self.centers)
        frames = audio.unfold(-1, self.frame_length, self.hop_length)
        times = self.centers.double() / self.renderer.sample_rate
        return [
            {"frames": fr, "f0": f, "voiced": v, "times": times, "index": torch.tensor(int(i))}
            for fr, f, v, i in zip(frames, f0, voiced, indices, strict=True)
        ]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]


class SynthPitchDataModule(L.LightningDataModule):
    """Synthetic pitch data (``data=synth_pitch``): no files, no network.

    Args:
        sample_rate, frame_length, hop_length: framing of the audio (CREPE: 16 kHz,
            1024-sample frames; 10 ms hop for evaluation clips).
        fmin, fmax: f0 range in Hz.
        clip_seconds: length of validation and test clips.
        batch_size: training frames per batch; eval_batch_size: clips per eval batch.
        train_batches_per_epoch, val_clips, test_clips: sizes.
        seed: seed of the data stream (independent of the global training seed).
        renderer: extra keyword arguments of :class:`SynthToneRenderer`.
    """

    tasks = ("pitch",)  # the task modules (``TaskModule.task``) this data serves

    def __init__(
        self,
        sample_rate: int = 16000,
        frame_length: int = 1024,
        hop_length: int = 160,
        fmin: float = 32.7,
        fmax: float = 1975.5,
        clip_seconds: float = 1.0,
        batch_size: int = 32,
        eval_batch_size: int = 8,
        train_batches_per_epoch: int = 300,
        val_clips: int = 32,
        test_clips: int = 128,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        renderer: dict | None = None,
    ) -> None:
        super().__init__()
        check_f0_range(fmin, fmax, sample_rate)
        self.save_hyperparameters(logger=False)
        self.sample_rate = sample_rate
        self.renderer = SynthToneRenderer(sample_rate=sample_rate, fmin=fmin, fmax=fmax, **(renderer or {}))
        n_eval_frames = 1 + round(clip_seconds * sample_rate) // hop_length
        common = dict(renderer=self.renderer, seed=seed, frame_length=frame_length, hop_length=hop_length)
        self.train_set = SynthPitchDataset(
            size=train_batches_per_epoch * batch_size, n_frames=1, stream=STREAM_TRAIN, **common
        )
        self.val_set = SynthPitchDataset(size=val_clips, n_frames=n_eval_frames, stream=STREAM_VAL, **common)
        self.test_set = SynthPitchDataset(size=test_clips, n_frames=n_eval_frames, stream=STREAM_TEST, **common)

    def _loader(self, dataset: Dataset, batch_size: int, sampler: Sampler | None = None) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=workers,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.hparams.batch_size, EpochSampler(len(self.train_set)))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.hparams.eval_batch_size)
