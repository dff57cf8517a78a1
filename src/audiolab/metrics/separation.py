"""Fast separation metrics for validation. (museval's BSSEval v4 lives with the
evaluation callbacks.)"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

# The MDX challenge's stabiliser: a silent reference with a silent estimate scores 0 dB.
USDR_DELTA = 1e-7


def usdr(
    estimates: torch.Tensor, references: torch.Tensor, delta: float = USDR_DELTA
) -> torch.Tensor:
    """Utterance-level SDR in dB (the MDX challenge's "SDR", also called uSDR): one
    number per excerpt and target over the whole signal, all channels together,
    ``10 log10((|s|^2 + d) / (|s - s_hat|^2 + d))``. Inputs ``(..., C, T)``; output
    ``(...)``; computed in float64."""
    ref = references.double()
    num = ref.square().sum(dim=(-2, -1)) + delta
    den = (ref - estimates.double()).square().sum(dim=(-2, -1)) + delta
    return 10.0 * torch.log10(num / den)


class MeanUsdr(Metric):
    """Mean uSDR per target over excerpts; ``update(estimates, references)`` with
    ``(B, S, C, T)`` tensors; ``compute()`` gives ``{target: dB, ..., "mean": dB}``."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, targets: Sequence[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.targets = list(targets)
        n = len(self.targets)
        self.add_state("total", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, estimates: torch.Tensor, references: torch.Tensor) -> None:
        if estimates.shape != references.shape or estimates.shape[1] != len(self.targets):
            raise ValueError(
                f"estimates {tuple(estimates.shape)} and references {tuple(references.shape)} must both be "
                f"(B, {len(self.targets)}, C, T) for targets {self.targets}"
            )
        self.total += usdr(estimates, references).sum(dim=0)
        self.count += estimates.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        per_target = (self.total / self.count.clamp_min(1)).float()
        scores = {name: per_target[i] for i, name in enumerate(self.targets)}
        scores["mean"] = per_target.mean()
        return scores
