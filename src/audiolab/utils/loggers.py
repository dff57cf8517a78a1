"""Logger factories used by ``conf/logger``."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only


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


RUN_ID_FILE = "audiolab_run_id"


def wandb_run_id(save_dir: str | Path) -> str | None:
    """The W&B run id of the run writing into ``save_dir``: read from
    ``save_dir/wandb/audiolab_run_id``, or made and written there by rank zero. A resumed run
    (same folder) therefore continues the same W&B run; other ranks never log and get None."""
    path = Path(save_dir) / "wandb" / RUN_ID_FILE
    if path.is_file():
        run_id = path.read_text().strip()
        if run_id:
            return run_id
    if rank_zero_only.rank != 0:
        return None
    from wandb.sdk.lib.runid import generate_id

    run_id = generate_id()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def sweep_group(base: str | None) -> tuple[str | None, str | None]:
    """``(group, name)`` for a job of a Hydra multirun: every job of one sweep in one W&B
    group named after the sweep folder, each job named by its number and overrides.
    ``(None, None)`` outside a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:
        return None, None
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None, None
    sweep = Path(hydra_cfg.sweep.dir).name
    group = f"{base}-{sweep}" if base else sweep
    name = f"{hydra_cfg.job.num}: {hydra_cfg.job.override_dirname or 'defaults'}"
    return group, name[:128]


def wandb_logger(mode: str = "auto", group: str | None = None, name: str | None = None, **kwargs) -> WandbLogger:
    """A Lightning ``WandbLogger`` that never prompts.

    ``mode``: ``online``, ``offline``, ``disabled`` or ``auto`` (online when an account is
    configured, else offline; ``WANDB_MODE`` in the environment wins). Offline runs are
    written under ``save_dir/wandb`` and can be uploaded later with ``wandb sync``.

    The run id is kept in the run folder (:func:`wandb_run_id`), so ``resume=true``
    continues the same W&B run. In a Hydra multirun each job is its own W&B run and the
    jobs of one sweep share a group (``<group>-<sweep folder>``, see :func:`sweep_group`).
    """
    if mode not in {"auto", "online", "offline", "disabled"}:
        raise ValueError(f"logger.wandb.mode must be auto, online, offline or disabled, got {mode!r}")
    if mode == "auto":
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_credentials_present() else "offline")
    save_dir = Path(kwargs.get("save_dir", "."))
    save_dir.mkdir(parents=True, exist_ok=True)
    # Never ask questions on a terminal (the login prompt, "wandb: (1) Create account ...").
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["WANDB_MODE"] = mode
    swept_group, swept_name = sweep_group(group)
    if kwargs.get("id") is None:
        kwargs["id"] = wandb_run_id(save_dir)
    kwargs.setdefault("resume", "allow")
    return WandbLogger(
        offline=mode == "offline",
        mode=mode,
        group=swept_group or group,
        name=name or swept_name or save_dir.name,
        **kwargs,
    )
