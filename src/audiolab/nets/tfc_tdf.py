"""TFC-TDF U-Net for music source separation (waveform in, waveforms out).

Choi, Kim, Chung, Lee & Jung, "Investigating U-Nets with various Intermediate Blocks for
Spectrogram-based Singing Voice Separation", ISMIR 2020 (reference code:
github.com/ws-choi/ISMIR2020_U_Nets_SVS). The mixture STFT is fed as "complex-as-channels"
(real and imaginary parts of every audio channel as input channels, cut to the first
``dim_f`` bins); a U-Net of TFC-TDF blocks turns it into the target's complex spectrogram
(``output="direct"``) or a complex ratio mask applied to the mixture (``output="mask"``);
bins from ``dim_f`` up are zero in the estimates.

Two block flavours, both "TFC then TDF":

* ``block="dense"`` (the paper's): TFC = ``num_tfc_layers`` densely connected
  [conv kt x kf, norm, act] layers, each seeing the concatenation of the block input and
  all previous outputs; the block outputs the last layer's maps. TDF = ``tdf_layers``
  [linear over frequency, norm, act] layers (``f -> f / bottleneck_factor -> f``) applied
  frame by frame and channel by channel, added to the TFC output as a residual.
  Down/upsampling: 2x2 stride-2 (transposed) conv + norm. Skip connections concatenate
  (the paper's Dense U-Net), or multiply (``skip="multiply"``, as KUIELab's MDX-Net later
  did). First layer: 1x1 conv + norm + act; last: 1x1 conv, no activation (the reference
  code's first and last convs span two bins instead, mapping 2049 <-> 2048 bins).
* ``block="residual"`` (TFC-TDF v3: KUIELab's MDX23 model and the keras.io example):
  ``num_tfc_layers`` pre-activation units per scale, each
  ``x -> tfc1 -> (+ tdf) -> tfc2 -> + 1x1 shortcut(x)`` with [norm, act, conv] TFCs;
  pre-activation resampling; and v3's head: the decoder output is multiplied by the first
  conv's output, concatenated with the input and mapped by 1x1 conv, act, 1x1 conv.

Frequency can be folded into channels (``num_subbands`` contiguous bands, TFC-TDF v3 /
MDX-Net style), and channels can grow by ``channel_growth`` at each downsampling (0 keeps
the paper's constant width). Widths: ``channels + i * channel_growth`` at scale i.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from audiolab.audio.stft import Stft, no_autocast

Norm = Literal["batch", "instance", "group"]
Activation = Literal["relu", "gelu"]


def make_norm(kind: str, channels: int, groups: int) -> nn.Module:
    """Normalisation over the channel axis of ``(B, C, H, W)`` maps."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":  # affine, as keras GroupNormalization(groups=-1)
        return nn.GroupNorm(channels, channels)
    if kind == "group":
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"unknown norm {kind!r} (batch, instance or group)")


def make_activation(kind: str) -> nn.Module:
    if kind == "relu":
        return nn.ReLU()
    if kind == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {kind!r} (relu or gelu)")


class _Layers:
    """The per-network choices every block needs (norm, activation, kernel, bias, TDF shape)."""

    def __init__(
        self,
        norm: str,
        norm_groups: int,
        activation: str,
        kernel_size: int | Sequence[int],
        bias: bool,
        bottleneck_factor: int,
        min_bottleneck_units: int,
        tdf_layers: int,
    ) -> None:
        self.norm_kind, self.norm_groups, self.act_kind = norm, norm_groups, activation
        kt, kf = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.kernel, self.padding = (kt, kf), (kt // 2, kf // 2)
        self.bias = bias
        self.bottleneck_factor, self.min_units = bottleneck_factor, min_bottleneck_units
        if tdf_layers not in (1, 2):
            raise ValueError(f"tdf_layers must be 1 or 2, got {tdf_layers}")
        self.tdf_layers = tdf_layers

    def norm(self, channels: int) -> nn.Module:
        return make_norm(self.norm_kind, channels, self.norm_groups)

    def act(self) -> nn.Module:
        return make_activation(self.act_kind)

    def conv(self, c_in: int, c_out: int) -> nn.Conv2d:
        return nn.Conv2d(c_in, c_out, self.kernel, padding=self.padding, bias=self.bias)

    def tdf(self, channels: int, freq: int, pre_activation: bool) -> nn.Sequential:
        """Time-distributed fully connected layers over the last (frequency) axis."""
        hidden = max(freq // self.bottleneck_factor, self.min_units)
        sizes = [freq, hidden, freq] if self.tdf_layers == 2 else [freq, freq]
        layers: list[nn.Module] = []
        for f_in, f_out in zip(sizes[:-1], sizes[1:], strict=True):
            linear = nn.Linear(f_in, f_out, bias=self.bias)
            if pre_activation:
                layers += [self.norm(channels), self.act(), linear]
            else:
                layers += [linear, self.norm(channels), self.act()]
        return nn.Sequential(*layers)


class DenseTfcTdf(nn.Module):
    """The paper's TFC-TDF block: densely connected TFC, then ``x + TDF(x)``.

    Layer j sees ``c_in + j * growth`` channels and outputs ``growth`` maps, the last one
    ``c_out`` (the paper has ``growth == c_out``)."""

    def __init__(
        self, c_in: int, c_out: int, freq: int, num_layers: int, growth: int, lay: _Layers
    ) -> None:
        super().__init__()
        widths = [growth] * (num_layers - 1) + [c_out]
        self.tfc = nn.ModuleList(
            nn.Sequential(lay.conv(c_in + j * growth, width), lay.norm(width), lay.act())
            for j, width in enumerate(widths)
        )
        self.tdf = lay.tdf(c_out, freq, pre_activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, out = x, self.tfc[0](x)
        for layer in self.tfc[1:]:
            features = torch.cat([out, features], dim=1)
            out = layer(features)
        return out + self.tdf(out)


class _ResidualUnit(nn.Module):
    def __init__(self, c_in: int, c_out: int, freq: int, lay: _Layers) -> None:
        super().__init__()
        self.tfc1 = nn.Sequential(lay.norm(c_in), lay.act(), lay.conv(c_in, c_out))
        self.tdf = lay.tdf(c_out, freq, pre_activation=True)
        self.tfc2 = nn.Sequential(lay.norm(c_out), lay.act(), lay.conv(c_out, c_out))
        self.shortcut = nn.Conv2d(c_in, c_out, 1, bias=lay.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tfc1(x)
        h = self.tfc2(h + self.tdf(h))
        return h + self.shortcut(x)


class ResidualTfcTdf(nn.Sequential):
    """TFC-TDF v3 block: ``num_layers`` pre-activation residual TFC-TDF units."""

    def __init__(self, c_in: int, c_out: int, freq: int, num_layers: int, lay: _Layers) -> None:
        super().__init__(
            *(_ResidualUnit(c_in if i == 0 else c_out, c_out, freq, lay) for i in range(num_layers))
        )


class TfcTdfCore(nn.Module):
    """The U-Net on spectrogram-like maps ``(B, in_channels, frames, freq)`` ->
    ``(B, out_channels, frames, freq)``; ``frames`` must be a multiple of ``2**num_scales``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        freq: int,
        *,
        num_scales: int,
        channels: int,
        channel_growth: int,
        block: str,
        num_tfc_layers: int,
        growth: int,
        skip: str,
        lay: _Layers,
    ) -> None:
        super().__init__()
        if block not in ("dense", "residual"):
            raise ValueError(f"unknown block {block!r} (dense or residual)")
        if skip not in ("concat", "multiply"):
            raise ValueError(f"unknown skip {skip!r} (concat or multiply)")
        if freq % 2**num_scales:
            raise ValueError(f"{freq} frequency bins cannot be halved {num_scales} times")
        self.residual, self.concat = block == "residual", skip == "concat"
        widths = [channels + i * channel_growth for i in range(num_scales + 1)]
        freqs = [freq >> i for i in range(num_scales + 1)]

        def make_block(c_in: int, c_out: int, f: int) -> nn.Module:
            if self.residual:
                return ResidualTfcTdf(c_in, c_out, f, num_tfc_layers, lay)
            return DenseTfcTdf(c_in, c_out, f, num_tfc_layers, growth, lay)

        def resample(c_in: int, c_out: int, up: bool) -> nn.Sequential:
            conv_cls = nn.ConvTranspose2d if up else nn.Conv2d
            conv = conv_cls(c_in, c_out, 2, stride=2, bias=lay.bias)
            if self.residual:
                return nn.Sequential(lay.norm(c_in), lay.act(), conv)
            return nn.Sequential(conv, lay.norm(c_out))

        first = nn.Conv2d(in_channels, channels, 1, bias=lay.bias)
        self.first = first if self.residual else nn.Sequential(first, lay.norm(channels), lay.act())
        self.encoders = nn.ModuleList(
            make_block(widths[i], widths[i], freqs[i]) for i in range(num_scales)
        )
        self.downs = nn.ModuleList(
            resample(widths[i], widths[i + 1], up=False) for i in range(num_scales)
        )
        self.bottleneck = make_block(widths[-1], widths[-1], freqs[-1])
        scales = range(num_scales - 1, -1, -1)
        self.ups = nn.ModuleList(resample(widths[i + 1], widths[i], up=True) for i in scales)
        self.decoders = nn.ModuleList(
            make_block(widths[i] * (2 if self.concat else 1), widths[i], freqs[i]) for i in scales
        )
        if self.residual:
            self.head = nn.Sequential(
                nn.Conv2d(channels + in_channels, channels, 1, bias=lay.bias),
                lay.act(),
                nn.Conv2d(channels, out_channels, 1, bias=lay.bias),
            )
        else:
            self.head = nn.Conv2d(channels, out_channels, 1, bias=lay.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.first(x)
        h, skips = first, []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            h = encoder(h)
            skips.append(h)
            h = down(h)
        h = self.bottleneck(h)
        for up, decoder in zip(self.ups, self.decoders, strict=True):
            h, s = up(h), skips.pop()
            h = decoder(torch.cat([h, s], dim=1) if self.concat else h * s)
        if self.residual:
            # v3: gating by the first features, then the mixture itself, to limit artefacts
            return self.head(torch.cat([x, h * first], dim=1))
        return self.head(h)


class TfcTdfUNet(nn.Module):
    """Waveform ``(B, C, T)`` -> source waveforms ``(B, S, C, T)`` with a TFC-TDF U-Net.

    Any ``T >= 1`` works: the signal is zero-padded so that its frame count is a multiple of
    ``2**num_scales`` (and long enough for the STFT), and the outputs are cropped back.
    The defaults are our small preset that trains on a CPU (n_fft 2048 with the paper's
    ablation hop of 1024, 8 subbands, 4 scales, 16 + 32 i channels).

    Args:
        targets: source names, S = len(targets).
        audio_channels: C.
        sample_rate: the rate the network is meant for (informational).
        n_fft, hop_length: STFT (periodic Hann window, centred frames).
        dim_f: frequency bins processed (the first ``dim_f`` of ``n_fft // 2 + 1``); higher
            bins are zero in the estimates.
        num_subbands: fold the ``dim_f`` bins into this many contiguous bands stacked as
            channels (1 = no folding).
        num_scales: downsamplings (each halves frequency and time).
        channels: width of the first scale; ``channel_growth`` is added at each downsampling.
        block: "dense" (the paper's TFC-TDF) or "residual" (TFC-TDF v3); see the module doc.
        num_tfc_layers: conv layers per dense TFC (the paper's l), or residual units per
            block.
        growth: growth rate of the dense TFC (the paper's k); unused by "residual" blocks.
        kernel_size: TFC kernel, ``kt x kf`` or one int.
        bottleneck_factor, min_bottleneck_units: TDF hidden size
            ``max(f // bottleneck_factor, min_bottleneck_units)`` (the paper's bn, and its
            reference code's ``min_bn_units``).
        tdf_layers: 1 (``f -> f``) or 2 (``f -> hidden -> f``) linear layers.
        skip: "concat" (the paper) or "multiply" (MDX-Net) skip connections.
        output: "mask" (complex mask times the mixture STFT) or "direct" (complex mapping).
        multi_target: one U-Net with S outputs, or one U-Net per target (``nn.ModuleList``).
        norm: "batch", "instance" or "group" (``norm_groups`` groups; must divide every width).
        activation: "relu" or "gelu".
        bias: biases in convs and linear layers (the paper's code has them; v3 does not).
    """

    def __init__(
        self,
        targets: Sequence[str] = ("vocals", "drums", "bass", "other"),
        audio_channels: int = 2,
        sample_rate: int = 44100,
        n_fft: int = 2048,
        hop_length: int = 1024,
        dim_f: int = 1024,
        num_subbands: int = 8,
        num_scales: int = 4,
        channels: int = 16,
        channel_growth: int = 32,
        block: Literal["dense", "residual"] = "dense",
        num_tfc_layers: int = 2,
        growth: int = 16,
        kernel_size: int | Sequence[int] = 3,
        bottleneck_factor: int = 8,
        min_bottleneck_units: int = 16,
        tdf_layers: int = 2,
        skip: Literal["concat", "multiply"] = "concat",
        output: Literal["mask", "direct"] = "mask",
        multi_target: bool = True,
        norm: Norm = "batch",
        norm_groups: int = 2,
        activation: Activation = "relu",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.targets = list(targets)
        if not self.targets:
            raise ValueError("at least one target is needed")
        if output not in ("mask", "direct"):
            raise ValueError(f"unknown output {output!r} (mask or direct)")
        if not 0 < dim_f <= n_fft // 2 + 1 or dim_f % num_subbands:
            raise ValueError(
                f"dim_f={dim_f} must be in 1..{n_fft // 2 + 1} and divisible by num_subbands"
            )
        self.audio_channels = audio_channels
        self.sample_rate = sample_rate
        self.n_fft, self.hop_length, self.dim_f = n_fft, hop_length, dim_f
        self.num_subbands, self.num_scales = num_subbands, num_scales
        self.output, self.multi_target = output, multi_target
        self.stft = Stft(n_fft, hop_length)

        lay = _Layers(
            norm,
            norm_groups,
            activation,
            kernel_size,
            bias,
            bottleneck_factor,
            min_bottleneck_units,
            tdf_layers,
        )
        spec_channels = 2 * audio_channels * num_subbands

        def core(n_targets: int) -> TfcTdfCore:
            return TfcTdfCore(
                spec_channels,
                spec_channels * n_targets,
                dim_f // num_subbands,
                num_scales=num_scales,
                channels=channels,
                channel_growth=channel_growth,
                block=block,
                num_tfc_layers=num_tfc_layers,
                growth=growth,
                skip=skip,
                lay=lay,
            )

        if multi_target:
            self.unet = core(len(self.targets))
        else:
            self.unets = nn.ModuleList(core(1) for _ in self.targets)

    def _fold(self, low: torch.Tensor) -> torch.Tensor:
        """Complex ``(B, C, dim_f, N)`` -> network input ``(B, C * 2 * K, N, dim_f / K)``,
        channels ordered (audio channel, real/imag, band); a single copy."""
        b, c, _, n = low.shape
        x = torch.view_as_real(low).unflatten(2, (self.num_subbands, -1))  # (B, C, K, f, N, 2)
        return x.permute(0, 1, 5, 2, 4, 3).reshape(b, 2 * c * self.num_subbands, n, -1)

    def _unfold(self, out: torch.Tensor, n_bins: int) -> torch.Tensor:
        """Network output ``(B, S, C * 2 * K, N, f)`` -> complex ``(B, S, C, n_bins, N)``, zero
        from ``dim_f`` up (half-precision outputs are promoted to float32)."""
        b, s, _, n, f = out.shape
        out = out.unflatten(2, (self.audio_channels, 2, self.num_subbands))  # (B, S, C, 2, K, N, f)
        out = out.permute(0, 1, 2, 4, 6, 5, 3).reshape(b, s, self.audio_channels, self.dim_f, n, 2)
        out = out.to(torch.promote_types(out.dtype, torch.float32))
        out = nn.functional.pad(out, (0, 0, 0, 0, 0, n_bins - self.dim_f))
        return torch.view_as_complex(out)

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        if mixture.dim() != 3 or mixture.shape[1] != self.audio_channels:
            raise ValueError(
                f"expected a (batch, {self.audio_channels}, samples) mixture, got {tuple(mixture.shape)}"
            )
        length = mixture.shape[-1]
        padded = self.stft.padded_length(length, 2**self.num_scales)
        wave = nn.functional.pad(mixture, (0, padded - length))
        spec = self.stft(wave)  # (B, C, F, N), float32 or float64 complex
        low = spec[:, :, : self.dim_f]
        x = self._fold(low)
        if self.multi_target:
            out = self.unet(x).unflatten(1, (len(self.targets), -1))
        else:
            out = torch.stack([unet(x) for unet in self.unets], dim=1)
        with no_autocast(mixture.device):
            est = self._unfold(out, spec.shape[-2])  # (B, S, C, F, N)
            if self.output == "mask":
                est = est * spec.unsqueeze(1)
            return self.stft.inverse(est, wave.shape[-1])[..., :length]
