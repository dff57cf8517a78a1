"""What every task's LightningModule shares: injectable optimizer and LR scheduler, the
monitored metric, and the report hook."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

MODES = ("min", "max")


def _builds_plateau(factory: Callable[..., object]) -> bool:
    """True when ``factory`` (a class or a ``functools.partial`` of one) builds a
    :class:`ReduceLROnPlateau`."""
    target = getattr(factory, "func", factory)
    return isinstance(target, type) and issubclass(target, ReduceLROnPlateau)


class TaskModule(L.LightningModule):
    """Base of the task modules. Subclasses declare their headline validation metric
    (``monitor``, ``monitor_mode``, class attributes): what ``train.py`` uses when the config
    leaves ``optimized_metric`` / ``optimized_mode`` null.

    ``train.py`` hands the run's ``optimized_metric`` / ``optimized_mode`` in as ``monitor`` /
    ``monitor_mode`` (the checkpoint callback interpolates the same two keys), so one pair
    decides what the best checkpoint is and what a plateau scheduler watches, and in which
    direction: a :class:`ReduceLROnPlateau` is built with ``mode=monitor_mode``.

    Args:
        optimizer: a partial optimizer (``_partial_: true``), called with ``params``.
        scheduler: an optional partial LR scheduler, called with ``optimizer``; stepped
            every ``scheduler_interval`` (``epoch`` or ``step``). A ``ReduceLROnPlateau``
            also gets ``mode``: leave it out of its config.
        monitor, monitor_mode: the monitored metric and ``min`` or ``max`` (None: the
            class's own).
    """

    task: str = ""  # what the task is called in messages; DataModules list the tasks they serve
    monitor: str = "val/loss"
    monitor_mode: str = "min"

    def __init__(
        self,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        scheduler_interval: str = "epoch",
        monitor: str | None = None,
        monitor_mode: str | None = None,
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        if monitor_mode is not None and monitor_mode not in MODES:
            raise ValueError(f"monitor_mode (optimized_mode) must be 'min' or 'max', got {monitor_mode!r}")
        # instance attributes over the class's defaults
        if monitor is not None:
            self.monitor = str(monitor)
        if monitor_mode is not None:
            self.monitor_mode = str(monitor_mode)
        if scheduler is not None and _builds_plateau(scheduler):
            fixed = getattr(scheduler, "keywords", {}).get("mode")
            if fixed is not None and fixed != self.monitor_mode:
                raise ValueError(
                    f"model.scheduler.mode={fixed} but {self.monitor} is monitored in {self.monitor_mode} "
                    f"mode: leave mode out of the ReduceLROnPlateau config (optimized_mode sets it), or set "
                    f"optimized_mode={fixed}"
                )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval

    def evaluation_step(self, batch, stage: str):
        """One validation (``stage='val'``) or test (``stage='test'``) batch."""
        raise NotImplementedError

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluation_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.evaluation_step(batch, "test")

    def build_scheduler(self, optimizer: torch.optim.Optimizer):
        """The configured scheduler for ``optimizer``; a plateau scheduler in ``monitor_mode``."""
        if _builds_plateau(self.scheduler_factory):
            return self.scheduler_factory(optimizer=optimizer, mode=self.monitor_mode)
        return self.scheduler_factory(optimizer=optimizer)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": self.build_scheduler(optimizer),
                "monitor": self.monitor,
                "interval": self.scheduler_interval,
            },
        }

    def report(self, datamodule, metrics: dict[str, float], out: Path, trainer=None):
        """``eval.py``'s report of this task (:func:`audiolab.reports.write_report`): a
        :class:`~audiolab.reports.Report` of headline rows and markdown sections, figures
        written under ``out``; ``trainer`` gives access to the callbacks' results. The
        base reports nothing of its own (``report.md`` then lists every metric)."""
        from audiolab.reports import Report

        return Report()
