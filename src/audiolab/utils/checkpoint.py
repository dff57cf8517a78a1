"""Self-describing checkpoints: the resolved run config travels inside every checkpoint,
so ``eval.py ckpt=...`` (and inference code) can rebuild model and data from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from audiolab.utils.errors import CheckpointError

CONFIG_KEY = "audiolab"
FORMAT_VERSION = 1


class StoreConfigInCheckpoint(Callback):
    """Adds ``checkpoint["audiolab"] = {"format": 1, "config": <resolved config>}``."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = {"format": FORMAT_VERSION, "config": self.config}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load an audiolab checkpoint safely (``weights_only=True``) or raise a
    :class:`CheckpointError` that says what is wrong with ``path``."""
    path = Path(path).expanduser()
    hint = "pass ckpt=<path to a .ckpt written by audiolab-train, e.g. outputs/train/<run>/checkpoints/last.ckpt>"
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path} ({hint})")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, not a file: {path} ({hint})")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a usable checkpoint"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a PyTorch checkpoint that can be loaded safely ({reason}); {hint}") from None
    if not isinstance(checkpoint, dict) or CONFIG_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not an audiolab checkpoint (it carries no stored run config); {hint}")
    return checkpoint


def stored_config(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return checkpoint[CONFIG_KEY]["config"]


def load_module(path: str | Path, device: str | torch.device = "cpu"):
    """The LightningModule of an audiolab checkpoint, rebuilt from its stored config, with
    its weights, in eval mode. Returns ``(module, run_config)``."""
    import hydra
    from omegaconf import OmegaConf

    checkpoint = load_checkpoint(path)
    run = OmegaConf.create(stored_config(checkpoint))
    module = hydra.utils.instantiate(run.model)
    module.load_state_dict(checkpoint["state_dict"])
    return module.to(device).eval(), run
