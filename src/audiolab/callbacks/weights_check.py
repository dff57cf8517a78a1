"""Checks that every DDP rank holds the same weights."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger("audiolab")

# checksum modulus (a prime below 2**31): every product of a 32-bit word and a position
# weight below it fits in an int64
_PRIME = 2**31 - 1
_CHUNK = 1 << 22
_WORDS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int32}


class WeightsMismatchError(RuntimeError):
    """The ranks of a distributed run hold different weights."""


def tensor_checksum(tensor: torch.Tensor) -> torch.Tensor:
    """A position-sensitive checksum of a tensor's bits (int64 scalar on its device): equal
    tensors give equal checksums, and a change of any bit of any element changes it except
    with a chance of about 1 in 2**31. Any dtype."""
    flat = tensor.detach().contiguous().reshape(-1)
    words = flat.view(_WORDS[flat.element_size()]).long()
    total = torch.zeros((), dtype=torch.long, device=flat.device)
    for start in range(0, words.numel(), _CHUNK):
        part = words[start : start + _CHUNK]
        weights = (torch.arange(start, start + part.numel(), device=part.device) % (_PRIME - 1)) + 1
        total = (total + torch.remainder(part * weights, _PRIME).sum()) % _PRIME
    return total


def checksums(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, int]:
    """``{name: checksum}`` of named tensors (``module.named_parameters()``, a ``state_dict``'s
    items)."""
    return {name: int(tensor_checksum(t)) for name, t in named_tensors}


class WeightsCheck(Callback):
    """Asserts that every DDP rank holds the same weights: a checksum of every parameter
    (:func:`tensor_checksum`) is gathered from all ranks at the end of fit, and after every
    ``every_n_epochs``-th training epoch if that is > 0. Ranks that differ stop the run
    with a :class:`WeightsMismatchError` naming the tensors (raised on every rank, so no
    rank is left waiting); agreement is logged by rank zero. In a single process there is
    nothing to compare.

    Args:
        every_n_epochs: also check after every n-th training epoch (0: at the end of fit only).
        include_buffers: compare the buffers too. Off by default: DDP broadcasts rank zero's
            buffers at the start of each forward pass, so rank-local updates (BatchNorm
            running statistics without ``sync_batchnorm``) differ in between by design.
        record_dir: if set, every rank also writes its checksums to
            ``record_dir/weights_rank<r>.json`` (for audits and tests).
    """

    def __init__(self, every_n_epochs: int = 0, include_buffers: bool = False, record_dir: str | None = None) -> None:
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.include_buffers = include_buffers
        self.record_dir = record_dir

    def named_tensors(self, pl_module) -> list[tuple[str, torch.Tensor]]:
        tensors = list(pl_module.named_parameters())
        if self.include_buffers:
            tensors += list(pl_module.named_buffers())
        return tensors

    def check(self, trainer, pl_module, when: str) -> None:
        named = self.named_tensors(pl_module)
        names = [name for name, _ in named]
        local = torch.stack([tensor_checksum(t).to(pl_module.device) for _, t in named])
        world = trainer.world_size
        if self.record_dir:
            record = {
                "rank": trainer.global_rank,
                "pid": os.getpid(),
                "world_size": world,
                "when": when,
                "epoch": trainer.current_epoch,
                "global_step": trainer.global_step,
                "checksums": dict(zip(names, local.tolist(), strict=True)),
            }
            path = Path(self.record_dir) / f"weights_rank{trainer.global_rank}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record, indent=1))
        if world == 1:
            return
        gathered = trainer.strategy.all_gather(local)  # (world, tensors)
        differ = (gathered != gathered[0]).any(dim=0)
        if differ.any():
            bad = [name for name, d in zip(names, differ.tolist(), strict=True) if d]
            ranks = [r for r in range(world) if (gathered[r] != gathered[0]).any()]
            shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
            raise WeightsMismatchError(
                f"weights check ({when}, epoch {trainer.current_epoch}, step {trainer.global_step}): "
                f"ranks {ranks} hold other weights than rank 0 in {len(bad)} of {len(names)} tensors: {shown}"
            )
        if trainer.is_global_zero:
            log.info(
                f"weights check ({when}, epoch {trainer.current_epoch}, step {trainer.global_step}): "
                f"{len(names)} tensors identical on all {world} ranks"
            )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.check(trainer, pl_module, "epoch end")

    def on_train_end(self, trainer, pl_module) -> None:
        self.check(trainer, pl_module, "fit end")
