"""Diagonal Gaussian mixtures, one per class, fitted by EM in batched torch.

Used as an ex-post prior of a VAE (Ghosh et al. 2020, "From variational to deterministic
autoencoders"): after training, a mixture fitted to the encodings of the training set
describes where the decoder has actually learned to decode, which a single Gaussian
per class does not when a class has several modes (FSDD: six speakers per digit).
"""

from __future__ import annotations

import torch
from torch import nn


class ClassGaussianMixture(nn.Module):
    """``n_classes`` mixtures of ``n_components`` diagonal Gaussians over ``dim``
    dimensions. Parameters are buffers (saved in checkpoints, not trained by SGD);
    ``fitted`` says whether :meth:`fit` has run.

    Args:
        n_classes: number of classes (1 for an unconditional mixture).
        n_components: components per class.
        dim: dimensions of the data.
        min_var: variance floor of every component, relative to the class's variance.
    """

    def __init__(self, n_classes: int, n_components: int, dim: int, min_var: float = 1e-3) -> None:
        super().__init__()
        self.n_classes, self.n_components, self.dim, self.min_var = n_classes, n_components, dim, min_var
        self.register_buffer("weights", torch.full((n_classes, n_components), 1.0 / n_components))
        self.register_buffer("means", torch.zeros(n_classes, n_components, dim))
        self.register_buffer("variances", torch.ones(n_classes, n_components, dim))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, labels: torch.Tensor | None = None, iterations: int = 100, seed: int = 0) -> None:
        """EM on ``x`` ``(N, dim)`` with ``labels`` ``(N,)`` (all class 0 when None). Each
        class starts from ``n_components`` of its points picked at random (``seed``); a
        class with fewer points uses one component per point (the rest get weight 0),
        and a class without points keeps N(0, I)."""
        x = x.to(self.means)
        labels = torch.zeros(len(x), dtype=torch.long, device=x.device) if labels is None else labels.to(x.device)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        for c in range(self.n_classes):
            points = x[labels == c]
            if len(points) == 0:
                continue
            k = min(self.n_components, len(points))
            spread = points.var(dim=0) if len(points) > 1 else torch.ones_like(points[0])
            floor = self.min_var * spread.clamp_min(1e-12)
            means = points[torch.randperm(len(points), generator=generator)[:k].to(x.device)].clone()
            variances = spread.expand(k, -1).clone()
            weights = torch.full((k,), 1.0 / k, device=x.device, dtype=x.dtype)
            for _ in range(iterations):
                diff = points[:, None, :] - means
                log_r = weights.log() - 0.5 * (diff.pow(2) / variances + variances.log()).sum(-1)
                resp = torch.softmax(log_r, dim=1)  # (n, k)
                mass = resp.sum(0).clamp_min(1e-8)
                weights = mass / mass.sum()
                means = (resp.T @ points) / mass[:, None]
                variances = ((resp.T @ points.pow(2)) / mass[:, None] - means.pow(2)).clamp_min(0) + floor
            self.weights[c].zero_()
            self.weights[c, :k], self.means[c, :k], self.variances[c, :k] = weights, means, variances
        self.fitted.fill_(True)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """One draw per label, ``(N, dim)``; ``temperature`` scales the components' spread."""
        if not bool(self.fitted):
            raise RuntimeError("the mixture has not been fitted: call fit() first")
        w = self.weights[labels]
        pick = torch.multinomial(w, 1, generator=generator).squeeze(1)
        mean = self.means[labels, pick]
        std = self.variances[labels, pick].sqrt()
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + temperature * std * eps
