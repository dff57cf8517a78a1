"""Batched spectrogram features and their inverse (torch, any device).

The log-spectrogram pipeline is the classic FSDD sound-generation recipe: STFT with
the Nyquist bin dropped (n_fft 512 -> 256 bins), magnitude to dB (20 log10, amin 1e-5,
floor 80 dB below each clip's peak), then min-max normalisation of each clip to
[0, 1], keeping its min and max so that the spectrogram can be turned back into sound.
"""

from __future__ import annotations

import torch
import torchaudio


def pad_or_trim(audio: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Zero-pad on the right or cut the last axis to exactly ``n_samples``."""
    length = audio.shape[-1]
    if length >= n_samples:
        return audio[..., :n_samples]
    return torch.nn.functional.pad(audio, (0, n_samples - length))


def amplitude_to_db(amplitude: torch.Tensor, amin: float = 1e-5, top_db: float | None = 80.0) -> torch.Tensor:
    """``20 log10(max(amin, |x|))``, floored ``top_db`` below each spectrogram's own peak
    (the last two axes), as librosa's ``amplitude_to_db`` with ``ref=1``."""
    db = 20.0 * torch.log10(amplitude.clamp_min(amin))
    if top_db is not None:
        db = torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - top_db)
    return db


def db_to_amplitude(db: torch.Tensor) -> torch.Tensor:
    return torch.pow(10.0, db / 20.0)


def min_max_normalise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scale each item (last two axes) to [0, 1]; returns ``(normalised, min, max)`` with
    ``min``/``max`` of shape ``x.shape[:-2]``."""
    lo = x.amin(dim=(-2, -1))
    hi = x.amax(dim=(-2, -1))
    scale = (hi - lo).clamp_min(1e-8)
    return (x - lo[..., None, None]) / scale[..., None, None], lo, hi


def min_max_denormalise(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return x * (hi - lo)[..., None, None] + lo[..., None, None]


class LogSpectrogram(torch.nn.Module):
    """Waveforms ``(..., samples)`` -> dB magnitude spectrograms ``(..., bins, frames)``.

    Args:
        n_fft, hop_length: STFT size and hop (Hann window of n_fft, centred frames).
        drop_nyquist: drop the last bin (n_fft 512 gives 256 bins instead of 257).
        n_mels: when set, a mel filterbank of that many bands (on magnitudes) replaces
            the linear bins; ``sample_rate`` is then required.
        amin, top_db: as in :func:`amplitude_to_db`.
    """

    def __init__(
        self,
        n_fft: int = 512,
        hop_length: int = 256,
        drop_nyquist: bool = True,
        n_mels: int | None = None,
        sample_rate: int | None = None,
        amin: float = 1e-5,
        top_db: float | None = 80.0,
    ) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.drop_nyquist = drop_nyquist
        self.amin = amin
        self.top_db = top_db
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        if n_mels:
            if not sample_rate:
                raise ValueError("a mel spectrogram needs sample_rate")
            fb = torchaudio.functional.melscale_fbanks(
                n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate, norm="slaney", mel_scale="slaney"
            )
            self.register_buffer("mel_fb", fb, persistent=False)
        else:
            self.mel_fb = None

    def magnitude(self, audio: torch.Tensor) -> torch.Tensor:
        shape = audio.shape
        spec = torch.stft(
            audio.reshape(-1, shape[-1]),
            self.n_fft,
            self.hop_length,
            window=self.window.to(audio.dtype),
            center=True,
            pad_mode="constant",
            return_complex=True,
        ).abs()
        spec = spec.reshape(*shape[:-1], *spec.shape[-2:])
        if self.mel_fb is not None:
            return torch.einsum("...ft,fm->...mt", spec, self.mel_fb.to(spec.dtype))
        return spec[..., :-1, :] if self.drop_nyquist else spec

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return amplitude_to_db(self.magnitude(audio), self.amin, self.top_db)


def griffin_lim(
    magnitude: torch.Tensor, n_fft: int, hop_length: int, n_iter: int = 64, length: int | None = None
) -> torch.Tensor:
    """Waveforms from linear magnitude spectrograms ``(..., bins, frames)``. A spectrogram
    whose Nyquist bin was dropped (``n_fft // 2`` bins) gets it back as zeros."""
    if magnitude.shape[-2] == n_fft // 2:
        magnitude = torch.nn.functional.pad(magnitude, (0, 0, 0, 1))
    transform = torchaudio.transforms.GriffinLim(
        n_fft=n_fft, hop_length=hop_length, n_iter=n_iter, power=1.0, length=length, rand_init=False
    ).to(magnitude.device)
    return transform(magnitude)


def spectrogram_to_audio(
    spec: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    n_fft: int,
    hop_length: int,
    n_iter: int = 64,
    length: int | None = None,
) -> torch.Tensor:
    """Normalised log-spectrograms ``(B, 1, bins, frames)`` (or ``(B, bins, frames)``) and
    their dB ``min``/``max`` ``(B,)`` -> waveforms ``(B, samples)`` by Griffin-Lim."""
    if spec.dim() == 4:
        spec = spec[:, 0]
    magnitude = db_to_amplitude(min_max_denormalise(spec.float(), lo.float(), hi.float()))
    return griffin_lim(magnitude, n_fft, hop_length, n_iter=n_iter, length=length)
