"""Frame-level pitch accuracy metrics (torchmetrics, so they reduce correctly under DDP).

Definitions follow ``mir_eval.melody``: over the frames where the reference is voiced,
raw pitch accuracy (RPA) counts estimates within ``cent_tolerance`` of the reference;
raw chroma accuracy (RCA) does the same after folding octave errors away.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from audiolab.pitch.cents import hz_to_cents


class _VoicedFrameAccuracy(Metric):
    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, cent_tolerance: float = 50.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cent_tolerance = cent_tolerance
        self.add_state("hits", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @staticmethod
    def _error(est_cents: torch.Tensor, ref_cents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, est_cents: torch.Tensor, ref_hz: torch.Tensor, ref_voiced: torch.Tensor) -> None:
        """``est_cents``: estimated pitch in cents (relative to 10 Hz) for every frame;
        ``ref_hz`` and ``ref_voiced``: the reference, same shape."""
        mask = ref_voiced.bool() & (ref_hz > 0)
        ref = hz_to_cents(ref_hz[mask].double())
        err = self._error(est_cents[mask].double(), ref)
        self.hits += (err < self.cent_tolerance).sum()
        self.total += mask.sum()

    def compute(self) -> torch.Tensor:
        return self.hits.float() / self.total.clamp_min(1).float()


class RawPitchAccuracy(_VoicedFrameAccuracy):
    @staticmethod
    def _error(est_cents, ref_cents):
        return (est_cents - ref_cents).abs()


class RawChromaAccuracy(_VoicedFrameAccuracy):
    @staticmethod
    def _error(est_cents, ref_cents):
        diff = (est_cents - ref_cents).abs()
        return (diff - 1200.0 * torch.floor(diff / 1200.0 + 0.5)).abs()
