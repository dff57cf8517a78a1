"""Logger factories used by ``conf/logger``."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger


def wandb_credentials_present() -> bool:
    """True when the user has configured a W&B account (API key in the environment, in
    ``~/.netrc`` or in the settings written by ``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc_path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc_path.is_file():
        try:
            hosts = netrc.netrc(netrc_path).hosts
        except (netrc.NetrcParseError, OSError):
            hosts = {}
        if any("wandb" in host for host in hosts):
            return True
    return False


def wandb_logger(mode: str = "auto", **kwargs) -> WandbLogger:
    """A Lightning ``WandbLogger`` that never prompts.

    ``mode``: ``online``, ``offline``, ``disabled`` or ``auto`` (online when an account is
    configured, else offline; ``WANDB_MODE`` in the environment wins). Offline runs are
    written under ``save_dir/wandb`` and can be uploaded later with ``wandb sync``.
    """
    if mode not in {"auto", "online", "offline", "disabled"}:
        raise ValueError(f"logger.wandb.mode must be auto, online, offline or disabled, got {mode!r}")
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_credentials_present() else "offline")
    Path(kwargs.get("save_dir", ".")).mkdir(parents=True, exist_ok=True)
    # Never ask questions on a terminal (the login prompt, "wandb: (1) Create account ...").
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["WANDB_MODE"] = mode
    return WandbLogger(offline=mode == "offline", mode=mode, **kwargs)
