"""What every task's LightningModule shares: injectable optimizer and LR scheduler."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch


class TaskModule(L.LightningModule):
    """Base of the task modules. Subclasses declare their headline validation metric
    (``monitor``, ``monitor_mode``): it picks the best checkpoint, drives plateau
    schedulers and is what ``train.py`` returns to sweepers unless the config says
    otherwise.

    Args:
        optimizer: a partial optimizer (``_partial_: true``), called with ``params``.
        scheduler: an optional partial LR scheduler, called with ``optimizer``; stepped
            every ``scheduler_interval`` (``epoch`` or ``step``).
    """

    task: str = ""  # what the task is called in messages; DataModules list the tasks they serve
    monitor: str = "val/loss"
    monitor_mode: str = "min"

    def __init__(
        self,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        scheduler_interval: str = "epoch",
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval

    def evaluation_step(self, batch, stage: str) -> None:
        """One validation (``stage='val'``) or test (``stage='test'``) batch."""
        raise NotImplementedError

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluation_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.evaluation_step(batch, "test")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor, "interval": self.scheduler_interval},
        }
