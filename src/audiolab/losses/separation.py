"""Separation losses. Every term maps estimates and references ``(B, S, C, T)`` waveforms
to one value per target ``(S,)``, so terms can be summed with weights and targets can be
weighted by the task module; :class:`SeparationLoss` combines named terms from config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from audiolab.audio.stft import Stft


def _per_target(x: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but the target axis (dim 1)."""
    return x.transpose(0, 1).reshape(x.shape[1], -1).mean(dim=1)


class WaveformL1(nn.Module):
    """Mean absolute error of the waveforms."""

    def forward(self, estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        return _per_target((estimates.float() - references.float()).abs())


class SpectrogramLoss(nn.Module):
    """L1 or MSE between spectrograms: ``complex`` compares real and imaginary parts (the
    loss TFC-TDF U-Nets are trained with), ``magnitude`` compares magnitudes (Spleeter's
    loss on masked magnitude spectrograms). ``max_bin`` limits it to the bins a network
    with a frequency cutoff (``dim_f``, ``freq_bins``) can produce."""

    def __init__(
        self,
        n_fft: int = 2048,
        hop_length: int = 512,
        norm: str = "l1",
        kind: str = "complex",
        max_bin: int | None = None,
    ) -> None:
        super().__init__()
        if norm not in ("l1", "mse"):
            raise ValueError(f"norm must be 'l1' or 'mse', got {norm!r}")
        if kind not in ("complex", "magnitude"):
            raise ValueError(f"kind must be 'complex' or 'magnitude', got {kind!r}")
        self.norm, self.kind, self.max_bin = norm, kind, max_bin
        self.stft = Stft(n_fft, hop_length)

    def forward(self, estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        def spec(wave: torch.Tensor) -> torch.Tensor:
            return self.stft(wave)[..., : self.max_bin, :]

        if self.kind == "complex":  # the STFT is linear: one transform of the difference
            diff = torch.view_as_real(spec(estimates - references))
        else:
            diff = spec(estimates).abs() - spec(references).abs()
        return _per_target(diff.abs() if self.norm == "l1" else diff.square())


class MultiResolutionStftLoss(nn.Module):
    """Spectral convergence plus log-magnitude L1, averaged over several STFT
    resolutions (Yamamoto et al., Parallel WaveGAN, 2020): penalises errors that one
    resolution alone would miss (pre-echo at long windows, smearing at short ones)."""

    def __init__(
        self,
        fft_sizes: Sequence[int] = (512, 1024, 2048),
        hop_sizes: Sequence[int] | None = None,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        hop_sizes = list(hop_sizes) if hop_sizes is not None else [n // 4 for n in fft_sizes]
        if len(hop_sizes) != len(fft_sizes):
            raise ValueError(
                f"need one hop size per FFT size, got {list(fft_sizes)} and {hop_sizes}"
            )
        self.stfts = nn.ModuleList(Stft(n, h) for n, h in zip(fft_sizes, hop_sizes, strict=True))
        self.eps = eps

    def forward(self, estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for stft in self.stfts:
            est, ref = stft(estimates).abs(), stft(references).abs()
            # Spectral convergence per (item, target): ||ref - est||_F / ||ref||_F.
            num = (ref - est).square().flatten(2).sum(-1).sqrt()
            den = ref.square().flatten(2).sum(-1).sqrt() + self.eps
            convergence = (num / den).mean(0)
            log_mag = _per_target((torch.log(ref + self.eps) - torch.log(est + self.eps)).abs())
            total = total + convergence + log_mag
        return total / len(self.stfts)


class SeparationLoss(nn.Module):
    """A weighted sum of named loss terms, each giving one value per target.

    Args:
        terms: ``{name: loss module}``; each is called as ``term(estimates, references)``
            and returns ``(S,)``.
        weights: ``{name: weight}`` (default 1 for every term).
    """

    def __init__(
        self, terms: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None
    ) -> None:
        super().__init__()
        if not terms:
            raise ValueError("SeparationLoss needs at least one term")
        self.terms = nn.ModuleDict(dict(terms))
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.terms))
        if unknown:
            raise ValueError(
                f"loss weights for unknown terms {unknown}; the terms are {sorted(self.terms)}"
            )
        self.weights = {name: float(weights.get(name, 1.0)) for name in self.terms}

    def forward(
        self, estimates: torch.Tensor, references: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns the weighted total per target ``(S,)`` and each term's ``(S,)``."""
        parts = {name: term(estimates, references) for name, term in self.terms.items()}
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, parts
