"""Self-describing checkpoints: the resolved run config travels inside every checkpoint,
so ``eval.py ckpt=...`` (and inference code) can rebuild model and data from it."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from audiolab.utils.atomic import atomic_write
from audiolab.utils.errors import CheckpointError
from audiolab.utils.targets import check_targets

log = logging.getLogger("audiolab")

CONFIG_KEY = "audiolab"
FORMAT_VERSION = 1


class StoreConfigInCheckpoint(Callback):
    """Adds ``checkpoint["audiolab"] = {"format": 1, "config": <resolved config>}``."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = {"format": FORMAT_VERSION, "config": self.config}


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Load an audiolab checkpoint safely (``weights_only=True``) or raise a
    :class:`CheckpointError` that says what is wrong with ``path``. ``mmap``: tensors are
    mapped, not read (for a caller that only wants the stored config)."""
    path = Path(path).expanduser()
    hint = "pass ckpt=<path to a .ckpt written by audiolab-train, e.g. outputs/train/<run>/checkpoints/last.ckpt>"
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path} ({hint})")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path} ({hint})")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a usable checkpoint"
        raise CheckpointError(f"{path} cannot be loaded as a checkpoint ({_load_failure(exc)}); {hint}") from None
    if not isinstance(checkpoint, dict) or CONFIG_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not an audiolab checkpoint (it carries no stored run config); {hint}")
    check_targets(stored_config(checkpoint), str(path))  # before anything is built from it
    return checkpoint


def _load_failure(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in a few words. torch's own message
    suggests ``weights_only=False``, which would run whatever the file holds: never quoted."""
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if refused:
        return (
            f"it holds a Python object ({refused.group(1)}) that a safe load refuses; audiolab "
            "checkpoints hold only tensors and plain values"
        )
    return "the file is damaged or is not a PyTorch checkpoint"


def stored_config(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return checkpoint[CONFIG_KEY]["config"]


def load_module(path: str | Path, device: str | torch.device = "cpu"):
    """The LightningModule of an audiolab checkpoint, rebuilt from its stored config, with
    its weights, in eval mode. Returns ``(module, run_config)``. Every ``_target_`` of the
    stored config is checked against :data:`audiolab.utils.targets.ALLOWED_TARGETS` first
    (in :func:`load_checkpoint`)."""
    import hydra
    from omegaconf import OmegaConf

    checkpoint = load_checkpoint(path)
    run = OmegaConf.create(stored_config(checkpoint))
    module = hydra.utils.instantiate(run.model)
    module.load_state_dict(checkpoint["state_dict"])
    return module.to(device).eval(), run


class AtomicCheckpointIO(TorchCheckpointIO):
    """Reads checkpoints with ``weights_only=True``. Writes every checkpoint to a temporary
    file beside its target, flushes it to disk and renames it over the target: a run killed at any moment (SIGKILL, OOM, a preempted
    node) leaves the previous ``last.ckpt`` whole, never a truncated one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_write(path) as (tmp,):
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's reads (``ckpt_path=...``, resume, testing the best checkpoint) are
        safe loads too: tensors and plain values, never pickled objects."""
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


RNG_KEY = "audiolab_rng"


def _rng_tensors() -> dict[str, torch.Tensor]:
    """This process's torch, CUDA, numpy and Python random states as tensors (so that a
    checkpoint holding them still loads with ``weights_only=True``)."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_meta": torch.tensor([pos, has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor([gauss], dtype=torch.float64),
        "python": torch.tensor([version, *py_state], dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if py_gauss is None else py_gauss], dtype=torch.float64),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return states


def _set_rng_tensors(states: dict[str, torch.Tensor]) -> None:
    import math
    import random

    import numpy as np

    torch.set_rng_state(states["torch"].cpu().to(torch.uint8))
    pos, has_gauss = (int(v) for v in states["numpy_meta"])
    np.random.set_state(
        ("MT19937", states["numpy"].cpu().numpy().astype(np.uint32), pos, has_gauss, float(states["numpy_gauss"][0]))
    )
    python = [int(v) for v in states["python"]]
    py_gauss = float(states["python_gauss"][0])
    random.setstate((python[0], tuple(python[1:]), None if math.isnan(py_gauss) else py_gauss))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in states["cuda"]])


class RNGStateInCheckpoint(Callback):
    """Saves the random states of every DDP rank in each checkpoint and restores them on
    resume, so a run continued from ``last.ckpt`` draws the same dropout masks, shuffles and
    augmentations as one that was never interrupted (bit-equal with ``deterministic``).

    The states are set when the checkpoint is loaded and again after the sanity check
    (whose data loaders draw from the global generator), i.e. just before the training data
    loader of the resumed epoch is created, as in the uninterrupted run."""

    def __init__(self) -> None:
        self._pending: dict[str, torch.Tensor] | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        states = _rng_tensors()
        if trainer.world_size > 1:  # every rank dumps the checkpoint; rank zero writes it
            states = {k: trainer.strategy.all_gather(v.to(pl_module.device)).cpu() for k, v in states.items()}
        else:
            states = {k: v.unsqueeze(0) for k, v in states.items()}
        checkpoint[RNG_KEY] = {"world_size": trainer.world_size, "states": states}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(RNG_KEY)
        if not saved or trainer.state.fn != "fit":  # test/validate with a checkpoint: keep the streams
            return
        if saved["world_size"] != trainer.world_size:
            log.warning(
                f"the checkpoint's random states come from {saved['world_size']} processes, this run has "
                f"{trainer.world_size}: random streams start afresh (the run is not bit-reproducible)"
            )
            return
        self._pending = {k: v[trainer.global_rank] for k, v in saved["states"].items()}
        _set_rng_tensors(self._pending)

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        if self._pending is not None:
            _set_rng_tensors(self._pending)

    def on_train_start(self, trainer, pl_module) -> None:
        self._pending = None
