"""Spleeter-style source separation: one magnitude-masking U-Net per stem.

After Deezer's Spleeter (Hennequin, Khlif, Voituret & Moussallam, JOSS 2020; the U-Net of
Jansson et al., ISMIR 2017), following its released code (spleeter/model/functions/unet.py
and the 2/4/5-stem JSON configs): STFT with n_fft 4096 and hop 1024; the magnitudes of the
first F = 1024 bins of every audio channel are the input channels of each stem's U-Net,
trained on patches of T = 512 frames. The U-Net: six 5x5 stride-2 convolutions
(16 ... 512 channels), each followed by batch norm and leaky ReLU(0.2); six 5x5 stride-2
transposed convolutions, each followed by ReLU then batch norm, with dropout 0.5 after the
first three, and skips that concatenate the encoder's raw convolution outputs; a last
4x4 dilation-2 convolution gives one sigmoid mask per audio channel, applied to the input
magnitudes. (Spleeter's graph also builds a batch norm + activation after the sixth conv
whose result is never used; it is left out here.) Padding reproduces TensorFlow's "same"
(one row/column before, two after for the stride-2 layers), and weights use TensorFlow's
He-uniform init, so the released checkpoints could be mapped in one to one.

Bins from F up: the released configs use ``mask_extension: zeros`` (the estimates are
band-limited to F bins, i.e. 11 kHz at 44.1 kHz); ``"average"`` extends each mask with its
mean over frequency (per frame and channel), which keeps the ratio-masked stems summing to
the mixture at all frequencies.

Separation (eval mode by default): ratio masks from the stems' squared estimated
magnitudes ``(|S_i|^2 + eps / S) / (sum_j |S_j|^2 + eps)`` applied to the mixture STFT, or,
with ``wiener_iterations > 0``, multichannel Wiener filtering initialised by soft masks
(norbert's ``wiener`` as Spleeter calls it). Training mode applies the sigmoid masks
directly (estimate = mask * mixture STFT, i.e. the mixture phase).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from audiolab.audio.stft import Stft, no_autocast
from audiolab.audio.wiener import wiener

# Spleeter's value, used in the ratio masks
EPSILON = 1e-10


def _activation(kind: str) -> nn.Module:
    if kind == "leaky_relu":
        return nn.LeakyReLU(0.2)
    if kind == "relu":
        return nn.ReLU()
    if kind == "elu":
        return nn.ELU()
    raise ValueError(f"unknown activation {kind!r} (leaky_relu, relu or elu)")


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    # Keras defaults: epsilon 1e-3, moving averages with momentum 0.99
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class _DownConv(nn.Conv2d):
    """5x5 stride-2 convolution with TensorFlow "same" padding (1 before, 2 after, for the
    even sizes used here)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, 5, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.pad(x, (1, 2, 1, 2)))


class _UpConv(nn.ConvTranspose2d):
    """5x5 stride-2 transposed convolution with TensorFlow "same" cropping: the output is
    exactly twice the input size, cropped one row/column from the start."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, 5, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return super().forward(x)[..., 1 : 1 + 2 * h, 1 : 1 + 2 * w]


class SpleeterStemUNet(nn.Module):
    """One stem's U-Net: magnitudes ``(B, C, frames, F)`` -> mask logits of the same shape
    (both spatial sizes must be multiples of 64)."""

    def __init__(
        self,
        audio_channels: int = 2,
        filters: Sequence[int] = (16, 32, 64, 128, 256, 512),
        conv_activation: str = "leaky_relu",
        deconv_activation: str = "relu",
        dropout: float = 0.5,
        dropout_layers: int = 3,
    ) -> None:
        super().__init__()
        widths = [audio_channels, *filters]
        self.down = nn.ModuleList(
            _DownConv(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        # the deepest conv's output goes straight to the decoder (see the module doc)
        self.down_post = nn.ModuleList(
            nn.Sequential(_batch_norm(c), _activation(conv_activation)) for c in filters[:-1]
        )
        # decoder layer i maps to filters[-2 - i] (1 for the last), reading the previous
        # output concatenated with the matching encoder conv output
        outs = [*reversed(filters[:-1]), 1]
        ins = [filters[-1]] + [2 * c for c in outs[:-1]]
        self.up = nn.ModuleList(_UpConv(a, b) for a, b in zip(ins, outs, strict=True))
        self.up_post = nn.ModuleList(
            nn.Sequential(
                _activation(deconv_activation),
                _batch_norm(c),
                *([nn.Dropout(dropout)] if i < dropout_layers else []),
            )
            for i, c in enumerate(outs)
        )
        self.last = nn.Conv2d(1, audio_channels, 4, dilation=2, padding=3)
        self._init_like_tensorflow()

    def _init_like_tensorflow(self) -> None:
        # He-uniform weights (limit sqrt(6 / fan_in)) and zero biases
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, conv in enumerate(self.down):
            x = conv(x)
            if i < len(self.down_post):
                skips.append(x)
                x = self.down_post[i](x)
        for conv, post in zip(self.up, self.up_post, strict=True):
            x = post(conv(x))
            if skips:
                x = torch.cat([skips.pop(), x], dim=1)
        return self.last(x)


class SpleeterUNet(nn.Module):
    """Waveform ``(B, C, T)`` -> stem waveforms ``(B, S, C, T)``, Spleeter style.

    Any ``T >= 1`` works (zero-padded to a multiple of 64 frames, cropped back).

    Args:
        targets: stem names, S = len(targets).
        audio_channels: C (the U-Net input and mask channels).
        sample_rate: the rate the network is meant for (informational).
        n_fft, hop_length: STFT (periodic Hann window, centred frames).
        freq_bins: F, the bins given to the U-Nets (a multiple of 64).
        filters: encoder widths.
        conv_activation, deconv_activation: "leaky_relu" (0.2), "relu" or "elu" (the
            released 2-stem model uses leaky ReLU / ReLU, the 4- and 5-stem ones ELU / ELU).
        dropout: after the first three decoder layers.
        mask_activation: "sigmoid" per stem, or "softmax" across stems (the released 5-stem
            model).
        mask_extension: "zeros" or "average", how masks cover the bins from F up.
        wiener_iterations: EM iterations of multichannel Wiener filtering used with ratio
            masks (0: plain ratio masks).
    """

    def __init__(
        self,
        targets: Sequence[str] = ("vocals", "accompaniment"),
        audio_channels: int = 2,
        sample_rate: int = 44100,
        n_fft: int = 4096,
        hop_length: int = 1024,
        freq_bins: int = 1024,
        filters: Sequence[int] = (16, 32, 64, 128, 256, 512),
        conv_activation: str = "leaky_relu",
        deconv_activation: str = "relu",
        dropout: float = 0.5,
        mask_activation: Literal["sigmoid", "softmax"] = "sigmoid",
        mask_extension: Literal["zeros", "average"] = "zeros",
        wiener_iterations: int = 0,
    ) -> None:
        super().__init__()
        self.targets = list(targets)
        if not self.targets:
            raise ValueError("at least one target is needed")
        self.frame_multiple = 2 ** len(filters)
        if freq_bins % self.frame_multiple or freq_bins > n_fft // 2 + 1:
            raise ValueError(
                f"freq_bins={freq_bins} must be a multiple of {self.frame_multiple} and <= {n_fft // 2 + 1}"
            )
        if mask_activation not in ("sigmoid", "softmax"):
            raise ValueError(f"unknown mask_activation {mask_activation!r} (sigmoid or softmax)")
        if mask_extension not in ("zeros", "average"):
            raise ValueError(f"unknown mask_extension {mask_extension!r} (zeros or average)")
        self.audio_channels = audio_channels
        self.sample_rate = sample_rate
        self.n_fft, self.hop_length, self.freq_bins = n_fft, hop_length, freq_bins
        self.mask_activation, self.mask_extension = mask_activation, mask_extension
        self.wiener_iterations = wiener_iterations
        self.stft = Stft(n_fft, hop_length)
        self.unets = nn.ModuleList(
            SpleeterStemUNet(audio_channels, filters, conv_activation, deconv_activation, dropout)
            for _ in self.targets
        )

    def masks(self, mag: torch.Tensor) -> torch.Tensor:
        """The U-Nets' masks ``(B, S, C, F, N)`` in [0, 1] for input magnitudes ``(B, C, F, N)``."""
        x = mag.transpose(-1, -2)  # (B, C, frames, F): kernels over (time, frequency) as in TF
        logits = torch.stack([unet(x) for unet in self.unets], dim=1).transpose(-1, -2)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # autocast outputs
        return (
            torch.sigmoid(logits)
            if self.mask_activation == "sigmoid"
            else torch.softmax(logits, dim=1)
        )

    def _extend(self, mask: torch.Tensor, n_bins: int) -> torch.Tensor:
        """Masks over F bins ``(..., F, N)`` -> over all ``n_bins`` bins."""
        extra = n_bins - mask.shape[-2]
        if self.mask_extension == "zeros":
            return nn.functional.pad(mask, (0, 0, 0, extra))
        return torch.cat(
            [mask, mask.mean(dim=-2, keepdim=True).expand(*mask.shape[:-2], extra, -1)], dim=-2
        )

    def forward(self, mixture: torch.Tensor, ratio_masks: bool | None = None) -> torch.Tensor:
        """Separate ``mixture (B, C, T)``; ``ratio_masks`` (default: ``not self.training``)
        selects ratio masks (+ Wiener filtering if configured) over the plain sigmoid masks."""
        if mixture.dim() != 3 or mixture.shape[1] != self.audio_channels:
            raise ValueError(
                f"expected a (batch, {self.audio_channels}, samples) mixture, got {tuple(mixture.shape)}"
            )
        if ratio_masks is None:
            ratio_masks = not self.training
        length = mixture.shape[-1]
        padded = self.stft.padded_length(length, self.frame_multiple)
        wave = nn.functional.pad(mixture, (0, padded - length))
        spec = self.stft(wave)  # (B, C, n_bins, N)
        n_bins = spec.shape[-2]
        mag = spec[:, :, : self.freq_bins].abs()
        masks = self.masks(mag)
        with no_autocast(mixture.device):
            mix = spec.unsqueeze(1)
            if not ratio_masks:
                est = self._extend(masks, n_bins) * mix
            elif self.wiener_iterations > 0:
                # magnitude estimates over all bins, soft-mask initialisation, then EM
                mags = self._extend(masks, n_bins) * spec.abs().unsqueeze(1)
                est = wiener(mags, spec, iterations=self.wiener_iterations, softmask=True)
            else:
                power = (masks * mag.unsqueeze(1)).square()
                ratio = (power + EPSILON / len(self.targets)) / (
                    power.sum(dim=1, keepdim=True) + EPSILON
                )
                est = self._extend(ratio, n_bins) * mix
            return self.stft.inverse(est, wave.shape[-1])[..., :length]
