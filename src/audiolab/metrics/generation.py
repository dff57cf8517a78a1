"""Generation quality from a classifier: Inception Score on its class probabilities and
the Frechet distance between Gaussians fitted to its embeddings (FID-style, without
pretrained ImageNet networks: the classifier is trained with audiolab on the data)."""

from __future__ import annotations

import torch


def inception_score(probs: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``exp(E_x KL(p(y|x) || p(y)))`` for class probabilities ``(N, classes)``: 1 when
    every sample looks the same to the classifier, ``classes`` at best (every sample
    confidently one class, all classes equally often)."""
    probs = probs.double()
    marginal = probs.mean(dim=0, keepdim=True)
    kl = (probs * (torch.log(probs + eps) - torch.log(marginal + eps))).sum(dim=1)
    return torch.exp(kl.mean())


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
    """``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` between Gaussians fitted to
    two sets of embeddings ``(N, dim)`` (float64; the trace of the square root is taken
    as that of the symmetric ``S_a^(1/2) S_b S_a^(1/2)``, which has the same eigenvalues)."""
    a, b = features_a.double(), features_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * trace_sqrt
