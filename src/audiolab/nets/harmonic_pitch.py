"""A fast pitch network on a harmonic stack of the frame's log spectrum.

CREPE learns its front end from the waveform with a 512-tap strided convolution and then
spends most of its 1.3 GFLOP per frame on wide convolutions over time. This network puts
the known structure of pitch into a fixed front end instead, and learns only what is left:

1. the 1024-sample frame (the same frames as CREPE: 16 kHz, so ``predict`` and every data
   module feed both) is normalised, Hann-windowed and zero-padded to ``n_fft``; its
   magnitude spectrum is taken in dB;
2. a *harmonic stack* (as in the HCQT of Bittner et al., ISMIR 2017, "Deep salience
   representations for f0 estimation in polyphonic music"): channel ``h`` at output bin
   ``p`` is the spectrum at ``h`` times the frequency of bin ``p`` (linear interpolation
   between FFT bins), for ``h`` in ``harmonics``. The stack is indexed on the output grid
   itself (CREPE's 360 bins of 20 cents), so a shift of the pitch is a shift along the
   bins, and a convolution over the bins sees a note's partials in its channels;
3. a few 1-D convolutions over the 360 bins (translation-equivariant in log frequency,
   dilated for a wide view along the pitch axis: octave and subharmonic errors), then a
   1x1 convolution to one logit per bin.

About 1/500 of CREPE-full's multiply-adds at the default size (see ``macs_per_frame``).
The output is the same as CREPE's (360 sigmoid activations), so the same loss, decoders,
periodicity and metrics apply.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from audiolab.audio.pitch_grid import FRAME_LENGTH, N_BINS, SAMPLE_RATE, bin_cents


class HarmonicPitchNet(nn.Module):
    """Pitch network over a harmonic stack of the log spectrum (see the module docstring).

    Args:
        harmonics: multiples of each bin's frequency stacked as input channels (0.5 gives a
            view one octave down, against octave errors).
        channels: width of the hidden convolutions.
        kernel_size: taps of every hidden convolution along the bins (odd).
        dilations: one hidden convolution per entry, with that dilation along the bins.
        n_fft: FFT size (the frame is zero-padded to it; 2048 halves the bin spacing of the
            interpolated spectrum).
        floor_db: the dB spectrum is clipped this far below its frame's maximum.
        dropout: dropout before the output convolution.
        bin_stride: the hidden convolutions work on every ``bin_stride``-th bin (the first
            one strides over the stack) and the output convolution gives ``bin_stride``
            logits per position, one per bin it covers: ``bin_stride`` times fewer
            multiply-adds for the same view along the bins. 1 keeps every bin.
    """

    def __init__(
        self,
        harmonics: Sequence[float] = (0.5, 1, 2, 3, 4, 5, 6),
        channels: int = 16,
        kernel_size: int = 5,
        dilations: Sequence[int] = (1, 2, 4, 8),
        n_fft: int = 2048,
        floor_db: float = 80.0,
        dropout: float = 0.0,
        bin_stride: int = 1,
    ) -> None:
        super().__init__()
        if bin_stride < 1 or N_BINS % bin_stride:
            raise ValueError(f"bin_stride must divide the {N_BINS} output bins, got {bin_stride}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (same-size convolutions over the bins), got {kernel_size}")
        if n_fft < FRAME_LENGTH:
            raise ValueError(f"n_fft must be at least the frame length {FRAME_LENGTH}, got {n_fft}")
        if not harmonics or min(harmonics) <= 0:
            raise ValueError(f"harmonics must be positive multiples of the bin frequency, got {list(harmonics)}")
        self.harmonics = [float(h) for h in harmonics]
        self.n_fft = n_fft
        self.floor_db = floor_db
        self.bin_stride = bin_stride
        self.register_buffer("window", torch.hann_window(FRAME_LENGTH, periodic=True), persistent=False)
        # where each (harmonic, bin) reads the spectrum: lower FFT bin and interpolation weight
        freqs = 10.0 * 2.0 ** (bin_cents(N_BINS, dtype=torch.float64) / 1200.0)
        position = torch.tensor(self.harmonics, dtype=torch.float64)[:, None] * freqs[None, :] * n_fft / SAMPLE_RATE
        n_bins = n_fft // 2 + 1
        # partials above Nyquist read the Nyquist bin (near the floor in band-limited audio)
        position = position.clamp(max=n_bins - 1)
        lower = position.floor().clamp(max=n_bins - 2)
        self.register_buffer("lower", lower.long().reshape(-1), persistent=False)
        self.register_buffer("upper", lower.long().reshape(-1) + 1, persistent=False)
        self.register_buffer("weight", (position - lower).float().reshape(-1), persistent=False)

        n_in = len(self.harmonics)
        self.input_norm = nn.BatchNorm1d(n_in)
        layers: list[nn.Module] = []
        c_in = n_in
        for i, dilation in enumerate(dilations):
            layers.append(ConvBNReLU(c_in, channels, kernel_size, dilation, stride=bin_stride if i == 0 else 1))
            c_in = channels
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Conv1d(c_in, bin_stride, 1)

    def macs_per_frame(self) -> int:
        """Multiply-adds of one frame: the FFT (about 2.5 n log2 n real operations), the
        harmonic stack and the convolutions."""
        fft = int(2.5 * self.n_fft * math.log2(self.n_fft))
        stack = 2 * len(self.harmonics) * N_BINS
        positions = N_BINS // self.bin_stride  # every convolution's output length
        convs = sum(m.in_channels * m.out_channels * m.kernel_size[0] * positions for m in self.modules() if isinstance(m, nn.Conv1d))
        return fft + stack + convs

    def stack(self, frames: torch.Tensor) -> torch.Tensor:
        """Harmonic stack of the dB spectrum, ``(frames, len(harmonics), 360)``."""
        if frames.shape[-1] != FRAME_LENGTH:
            raise ValueError(f"HarmonicPitchNet takes frames of {FRAME_LENGTH} samples at {SAMPLE_RATE} Hz, got shape {tuple(frames.shape)}")
        x = frames.reshape(-1, FRAME_LENGTH)
        x = x - x.mean(dim=-1, keepdim=True)
        # the standard deviation (n - 1 in the denominator) from the norm: the same value,
        # in a thirtieth of the time of ``std`` on 45 frames (measured on a CPU)
        x = x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) / math.sqrt(FRAME_LENGTH - 1)).clamp_min(1e-10)
        spectrum = torch.fft.rfft(x * self.window, n=self.n_fft).abs()
        db = 20.0 * torch.log10(spectrum.clamp_min(1e-8))
        db = torch.maximum(db, db.amax(dim=-1, keepdim=True) - self.floor_db)
        low, high = db.index_select(1, self.lower), db.index_select(1, self.upper)
        return torch.lerp(low, high, self.weight).reshape(-1, len(self.harmonics), N_BINS)

    def _hidden(self, frames: torch.Tensor) -> torch.Tensor:
        return self.body(self.input_norm(self.stack(frames)))

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """Pitch embedding: the last hidden layer, flattened, ``(*frames.shape[:-1], channels * 360)``."""
        return self._hidden(frames).reshape(*frames.shape[:-1], -1)

    def logits(self, frames: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid activations, shape ``(*frames.shape[:-1], 360)``."""
        # (frames, bin_stride, positions) -> bins in order: position p covers bins p * stride + j
        out = self.head(self.dropout(self._hidden(frames))).transpose(1, 2)
        return out.reshape(*frames.shape[:-1], N_BINS)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Sigmoid activations in [0, 1], shape ``(*frames.shape[:-1], 360)``."""
        return torch.sigmoid(self.logits(frames))


class ConvBNReLU(nn.Module):
    """Same-size convolution over the bins, batch norm, ReLU. In eval mode the batch norm is
    folded into the convolution's weights (one operation instead of two), and on a CPU the
    convolution is one matrix product over the gathered taps (:func:`conv1d_as_matmul`)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, stride=stride, padding=dilation * (kernel_size // 2), dilation=dilation)
        self.norm = nn.BatchNorm1d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.norm.track_running_stats:
            return torch.relu(self.norm(self.conv(x)))
        scale = self.norm.weight / torch.sqrt(self.norm.running_var + self.norm.eps)
        weight = self.conv.weight * scale[:, None, None]
        bias = (self.conv.bias - self.norm.running_mean) * scale + self.norm.bias
        stride, padding, dilation = self.conv.stride[0], self.conv.padding[0], self.conv.dilation[0]
        if x.device.type == "cpu":
            x = conv1d_as_matmul(x, weight, bias, stride, padding, dilation)
        else:  # the matmul was measured faster on CPUs only
            x = nn.functional.conv1d(x, weight, bias, stride=stride, padding=padding, dilation=dilation)
        return torch.relu_(x)


def conv1d_as_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int, padding: int, dilation: int) -> torch.Tensor:
    """``conv1d(x, weight, bias, stride, padding, dilation)`` for ``x (batch, c_in, length)``
    as one matrix product: the taps each output position reads are gathered into
    ``(batch, c_in * kernel, positions)`` first. With a dozen channels on a CPU this takes
    0.8 times the time of oneDNN's convolution, under half with dilation 8."""
    c_out, c_in, kernel = weight.shape
    span = dilation * (kernel - 1) + 1
    taps = nn.functional.pad(x, (padding, padding)).unfold(-1, span, stride)[..., ::dilation]  # (batch, c_in, positions, kernel)
    taps = taps.transpose(-1, -2).reshape(x.shape[0], c_in * kernel, -1)
    return torch.matmul(weight.reshape(c_out, c_in * kernel), taps) + bias[:, None]
