"""Batched STFT / iSTFT module (torch, any device).

The transforms always run in (at least) float32 with autocast disabled: under bf16/fp16
autocast a spectrogram loses too much precision for the inverse to give back the signal.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that turns autocast off on ``device`` (a no-op where autocast does not exist)."""
    if device.type in ("cpu", "cuda", "mps", "xpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    # float64 stays float64; half / bfloat16 / integers are computed in float32
    return torch.promote_types(dtype, torch.float32) if dtype.is_floating_point else torch.float32


class Stft(nn.Module):
    """Centred STFT with a periodic Hann window, batched over any leading axes.

    ``forward``: waveform ``(..., T)`` -> complex ``(..., n_fft // 2 + 1, frames)`` with
    ``frames = T // hop_length + 1``. ``inverse``: the exact inverse (overlap-add with the
    same window), cropped or zero-padded to ``length`` samples.

    Args:
        n_fft: FFT size (and window length).
        hop_length: hop in samples (default ``n_fft // 4``).
        pad_mode: how the signal is extended by ``n_fft // 2`` at both ends ("reflect" needs
            more than ``n_fft // 2`` samples; "constant" pads with zeros).
    """

    def __init__(
        self, n_fft: int = 2048, hop_length: int | None = None, pad_mode: str = "reflect"
    ) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length or n_fft // 4
        self.pad_mode = pad_mode
        # not persistent: it is a function of n_fft, so checkpoints need not carry it
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def num_frames(self, length: int) -> int:
        """Frames that ``forward`` gives for a signal of ``length`` samples."""
        return length // self.hop_length + 1

    def padded_length(self, length: int, frame_multiple: int = 1) -> int:
        """The shortest length, at least ``length`` and long enough for the reflect padding
        (more than ``n_fft // 2`` samples), whose frame count is a multiple of
        ``frame_multiple``: what a network with that many time downsamplings is padded to."""
        if length < 1:
            raise ValueError("the signal must have at least one sample")
        min_frames = max(-(-length // self.hop_length), self.n_fft // (2 * self.hop_length) + 1) + 1
        frames = -(-min_frames // frame_multiple) * frame_multiple
        return (frames - 1) * self.hop_length

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        lead, length = wave.shape[:-1], wave.shape[-1]
        dtype = _real_dtype(wave.dtype)
        with no_autocast(wave.device):
            spec = torch.stft(
                wave.reshape(-1, length).to(dtype),
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                window=self.window.to(dtype),
                center=True,
                pad_mode=self.pad_mode,
                return_complex=True,
            )
        return spec.reshape(*lead, *spec.shape[-2:])

    def inverse(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        lead = spec.shape[:-2]
        if not spec.is_complex():
            raise ValueError("Stft.inverse expects a complex spectrogram")
        with no_autocast(spec.device):
            wave = torch.istft(
                spec.reshape(-1, *spec.shape[-2:]),
                n_fft=self.n_fft,
                hop_length=self.hop_length,
                window=self.window.to(spec.real.dtype),
                center=True,
                length=length,
            )
        return wave.reshape(*lead, length)
