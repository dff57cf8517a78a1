"""Spectrogram classification task (e.g. which digit was spoken)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from audiolab.models.base import TaskModule


class SpecAugment(nn.Module):
    """SpecAugment masking (torchaudio), a fresh mask for every item of the batch."""

    def __init__(self, freq_mask: int = 24, time_mask: int = 8, n_freq_masks: int = 2, n_time_masks: int = 2) -> None:
        super().__init__()
        masks: list[nn.Module] = [torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True) for _ in range(n_freq_masks)]
        masks += [torchaudio.transforms.TimeMasking(time_mask, iid_masks=True) for _ in range(n_time_masks)]
        self.masks = nn.Sequential(*masks)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return self.masks(spec)


class ClassifierModule(TaskModule):
    """Cross-entropy classification of ``batch["spec"]`` into ``batch[label_key]``, with
    optional augmentation on the training batches; reports accuracy.

    Args:
        net: logits ``(B, n_classes)`` from spectrograms; ``net.embed`` gives features.
        augment: a module applied to training spectrograms (e.g. :class:`SpecAugment`).
        n_classes: number of classes.
        label_key: the batch key of the labels.
        label_smoothing: of the cross-entropy.
        monitor, monitor_mode: the monitored metric (see :class:`TaskModule`).
    """

    task = "digit classification"
    monitor = "val/acc"
    monitor_mode = "max"

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None = None,
        augment: nn.Module | None = None,
        n_classes: int = 10,
        label_key: str = "digit",
        label_smoothing: float = 0.0,
        monitor: str | None = None,
        monitor_mode: str | None = None,
    ) -> None:
        super().__init__(optimizer, scheduler, monitor=monitor, monitor_mode=monitor_mode)
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler", "augment"])
        self.net = net
        self.augment = augment
        self.val_acc = MulticlassAccuracy(n_classes, average="micro")
        self.test_acc = MulticlassAccuracy(n_classes, average="micro")

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return self.net(spec)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        spec = batch["spec"]
        if self.augment is not None:
            spec = self.augment(spec)
        loss = F.cross_entropy(self.net(spec), batch[self.hparams.label_key], label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=spec.shape[0])
        return loss

    def evaluation_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        logits = self.net(batch["spec"])
        labels = batch[self.hparams.label_key]
        acc = getattr(self, f"{stage}_acc")
        acc.update(logits, labels)
        n = labels.shape[0]
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels), on_epoch=True, batch_size=n, sync_dist=True)
        self.log(f"{stage}/acc", acc, on_epoch=True, prog_bar=True, batch_size=n)
