"""Music source separation task: one LightningModule for every separation network."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn
from torchmetrics import MaxMetric

from audiolab.losses.separation import SeparationLoss
from audiolab.metrics.separation import MeanUsdr
from audiolab.models.base import TaskModule
from audiolab.reports import Report
from audiolab.separation import network_of, separate
from audiolab.utils.media import markdown_table


class SeparationModule(TaskModule):
    """Trains a waveform-to-waveform separation network ``(B, C, T) -> (B, S, C, T)``.

    Batches are dicts with ``mixture`` ``(B, C, T)`` and ``targets`` ``(B, S, C, T)`` in
    the network's target order. Training runs the network on the chunk directly;
    validation and test separate every excerpt or track with the shared overlap-add
    :func:`audiolab.separation.separate`, exactly as users will, and report the uSDR
    per target and its mean (``val/sdr_<target>``, ``val/sdr_mean``). ``test_step`` returns
    its estimates (``{"estimates": (B, S, C, T)}``, on the CPU), so that callbacks score
    the whole test tracks without separating them again (museval).

    Args:
        net: the separation network (``targets``, ``sample_rate`` attributes).
        optimizer: a partial optimizer (``_partial_: true`` in the config).
        loss: a :class:`SeparationLoss` (named terms, one value per target each).
        scheduler: an optional partial LR scheduler; ``scheduler_interval`` says
            whether it steps every ``epoch`` or ``step``.
        target_weights: ``{target: weight}`` of the training loss (default 1 each).
        chunk_seconds, overlap, window, separate_batch_size: how validation and test
            separate (see :func:`separate`).
        monitor, monitor_mode: the monitored metric (see :class:`TaskModule`).
    """

    task = "separation"
    monitor = "val/sdr_mean"
    monitor_mode = "max"

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        loss: SeparationLoss,
        scheduler: Callable[..., object] | None = None,
        scheduler_interval: str = "epoch",
        target_weights: Mapping[str, float] | None = None,
        chunk_seconds: float = 6.0,
        overlap: float = 0.25,
        window: str = "hann",
        separate_batch_size: int = 4,
        monitor: str | None = None,
        monitor_mode: str | None = None,
    ) -> None:
        super().__init__(optimizer, scheduler, scheduler_interval, monitor, monitor_mode)
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler", "loss"])
        self.net = network_of(net)
        self.loss = loss
        self.targets = list(self.net.targets)
        weights = dict(target_weights or {})
        unknown = sorted(set(weights) - set(self.targets))
        if unknown:
            raise ValueError(
                f"target_weights names {unknown}, which the network does not separate ({self.targets})"
            )
        self.register_buffer(
            "target_weights",
            torch.tensor([float(weights.get(t, 1.0)) for t in self.targets]),
            persistent=False,
        )
        self.val_sdr = MeanUsdr(self.targets)
        self.test_sdr = MeanUsdr(self.targets)
        self.val_sdr_best = MaxMetric()

    @property
    def sample_rate(self) -> int:
        return self.net.sample_rate

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is None:
            return
        rate = getattr(datamodule, "sample_rate", None)
        if rate is not None and rate != self.net.sample_rate:
            raise ValueError(
                f"the network separates {self.net.sample_rate} Hz audio but the data is at {rate} Hz: "
                f"set data.sample_rate={self.net.sample_rate}"
            )
        data_targets = getattr(datamodule, "targets", None)
        if data_targets is not None and list(data_targets) != self.targets:
            raise ValueError(
                f"the network separates {self.targets} but the data provides {list(data_targets)}: "
                "make model.net.targets and data.targets the same list"
            )

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        return self.net(mixture)

    def separate(self, mixture: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """Overlap-add separation with this module's validation settings."""
        hp = self.hparams
        return separate(
            self.net,
            mixture,
            chunk_seconds=hp.chunk_seconds,
            overlap=hp.overlap,
            window=hp.window,
            batch_size=hp.separate_batch_size,
            device=self.device,
            progress=progress,
        )

    def _weighted(self, per_target: torch.Tensor) -> torch.Tensor:
        return (per_target * self.target_weights).sum() / self.target_weights.sum()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        estimates = self.net(batch["mixture"])
        per_target, parts = self.loss(estimates, batch["targets"])
        loss = self._weighted(per_target)
        n = batch["mixture"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        for i, name in enumerate(self.targets):
            self.log(
                f"train/loss_{name}", per_target[i], on_step=False, on_epoch=True, batch_size=n
            )
        if len(parts) > 1:
            for term, value in parts.items():
                self.log(
                    f"train/{term}",
                    self._weighted(value),
                    on_step=False,
                    on_epoch=True,
                    batch_size=n,
                )
        return loss

    def evaluation_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """Separate the batch, log the loss and update the uSDR; returns the estimates
        ``(B, S, C, T)`` on the CPU, where :func:`separate` leaves them."""
        separated = self.separate(batch["mixture"])
        estimates = separated.to(self.device)
        references = batch["targets"]
        per_target, _ = self.loss(estimates, references)
        n = references.shape[0]
        self.log(
            f"{stage}/loss", self._weighted(per_target), on_epoch=True, batch_size=n, sync_dist=True
        )
        getattr(self, f"{stage}_sdr").update(estimates, references)
        return separated

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """A test batch (whole tracks): its estimates go to the callbacks' ``on_test_batch_end``
        as ``outputs["estimates"]``."""
        return {"estimates": self.evaluation_step(batch, "test")}

    def _log_sdr(self, stage: str) -> torch.Tensor:
        scores = getattr(self, f"{stage}_sdr").compute()
        for name, value in scores.items():
            self.log(f"{stage}/sdr_{name}", value, prog_bar=name == "mean")
        getattr(self, f"{stage}_sdr").reset()
        return scores["mean"]

    def on_validation_epoch_end(self) -> None:
        mean = self._log_sdr("val")
        if self.trainer.sanity_checking:
            return
        self.val_sdr_best.update(mean)
        self.log("val/sdr_mean_best", self.val_sdr_best.compute())

    def on_test_epoch_end(self) -> None:
        self._log_sdr("test")

    # -- eval.py's report ---------------------------------------------------------------
    def report(self, datamodule, metrics: dict[str, float], out: Path, trainer=None) -> Report:
        """Whole-track uSDR per target and its mean; with the museval callback, its test
        aggregate (kept in memory by the callback, whatever split it scored) and box plots
        of the per-track scores."""
        from audiolab.callbacks.museval import MusevalCallback

        report = Report()
        rows = [[t, metrics.get(f"test/sdr_{t}", float("nan"))] for t in self.targets]
        rows.append(["mean", metrics.get("test/sdr_mean", float("nan"))])
        report.headline += [(f"test/sdr_{name}", value, None) for name, value in rows]
        report.sections.append(
            "## Whole-track SDR (uSDR, dB, mean over test tracks)\n\n"
            + markdown_table(["target", "uSDR"], rows)
        )
        for callback in getattr(trainer, "callbacks", None) or []:
            if isinstance(callback, MusevalCallback):
                museval = callback.report(out, "test")
                if museval is not None:
                    report.headline += museval.headline
                    report.sections += museval.sections
        return report
