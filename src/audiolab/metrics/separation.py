"""Fast separation metrics: whole-signal uSDR (validation) and chunk-median cSDR, the
MDX challenge's quick numbers. (BSSEval v4 is in :mod:`audiolab.metrics.bss_eval`.)"""

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


def csdr(
    estimates: torch.Tensor,
    references: torch.Tensor,
    chunk_samples: int,
    delta: float = USDR_DELTA,
) -> torch.Tensor:
    """Chunk-level SDR in dB (the MDX challenge's "cSDR"): the :func:`usdr` of every
    ``chunk_samples``-long chunk, then the median over chunks (the mean of the two middle
    values for an even count, as ``numpy.median``). A trailing partial chunk is dropped,
    as museval's framing drops a partial frame; a signal shorter than one chunk is one
    chunk. Inputs ``(..., C, T)``; output ``(...)``; computed in float64."""
    if estimates.shape != references.shape:
        raise ValueError(
            f"estimates {tuple(estimates.shape)} and references {tuple(references.shape)} "
            "must have the same (..., C, T) shape"
        )
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples must be a positive number of samples, got {chunk_samples}")
    length = references.shape[-1]
    size = min(chunk_samples, length)
    count = max(length // chunk_samples, 1)

    def chunks(x: torch.Tensor) -> torch.Tensor:  # (..., C, T) -> (..., K, C, W)
        return x[..., : count * size].unflatten(-1, (count, size)).transpose(-3, -2)

    per_chunk = usdr(chunks(estimates), chunks(references), delta)
    return torch.quantile(per_chunk, 0.5, dim=-1)


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
