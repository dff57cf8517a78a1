"""Inception Score and Frechet distance against closed forms and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from audiolab.metrics.generation import frechet_distance, inception_score


def test_inception_score_extremes():
    one_hot = torch.eye(10).repeat(5, 1)  # confident, all classes equally often
    assert inception_score(one_hot).item() == pytest.approx(10.0, rel=1e-6)
    same = torch.zeros(50, 10)
    same[:, 3] = 1.0  # confident but always the same class
    assert inception_score(same).item() == pytest.approx(1.0, rel=1e-6)
    uniform = torch.full((50, 10), 0.1)  # never confident
    assert inception_score(uniform).item() == pytest.approx(1.0, rel=1e-6)


def test_frechet_distance_matches_scipy_and_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6)) + 0.5
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    want = ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root)
    got = frechet_distance(torch.from_numpy(a), torch.from_numpy(b)).item()
    assert got == pytest.approx(want, rel=1e-6)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(a)).item() == pytest.approx(0.0, abs=1e-6)
    # y = 2x + 1: mean shift m + 1 per axis, covariance 4 S; FD = |mean(x) + 1|^2 + Tr(S)
    x = torch.randn(20000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fd = frechet_distance(x, 2.0 * x + 1.0).item()
    assert fd == pytest.approx(((x.mean(0) + 1) ** 2).sum().item() + torch.trace(torch.cov(x.T)).item(), rel=1e-9)
    assert math.isfinite(fd)
