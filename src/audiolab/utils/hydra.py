"""Hydra and Lightning glue: instantiation helpers, the task wrapper, config printing."""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from audiolab.utils.errors import AudiolabError

log = logging.getLogger("audiolab")


def instantiate_group(cfg: DictConfig | None, kind: str) -> list[Any]:
    """Instantiate every entry of a config group that is a dict of ``_target_`` nodes
    (callbacks, loggers). ``null`` entries are skipped, so ``callbacks.x=null`` disables one."""
    objects: list[Any] = []
    if not cfg:
        return objects
    if not isinstance(cfg, Mapping):
        raise TypeError(f"{kind} config must be a mapping of name -> {{_target_: ...}}, got {type(cfg).__name__}")
    for name, node in cfg.items():
        if node is None:
            continue
        if not (isinstance(node, Mapping) and "_target_" in node):
            raise TypeError(f"{kind}.{name} has no _target_; every {kind} entry must name its class")
        objects.append(hydra.utils.instantiate(node))
    return objects


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    return instantiate_group(cfg, "callbacks")


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    return instantiate_group(cfg, "logger")


def single_console_log() -> None:
    """Importing ``lightning`` attaches its own console handler to the ``lightning`` logger,
    which still propagates to the root logger that Hydra configured: every Lightning
    message would be printed twice. Keep Hydra's (it also writes the run's log file)."""
    import lightning  # noqa: F401 - the import adds the handler

    if not logging.getLogger().handlers:
        return
    logger = logging.getLogger("lightning")
    for handler in list(logger.handlers):
        if type(handler) is logging.StreamHandler:
            logger.removeHandler(handler)


def close_loggers() -> None:
    """Finish the W&B run, if one was started, so that the next multirun job starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        log.info("closing the W&B run")
        wandb.finish()


def task_wrapper(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Run a task so that, whatever happens, the run dir is printed and W&B is closed."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig):
        failed = True
        try:
            result = task(cfg)
            failed = False
            return result
        except AudiolabError as exc:
            # the user's input: the message says what to fix, a traceback would bury it
            log.error(f"the task failed: {exc}")
            raise
        except Exception:
            log.exception("the task failed")
            raise
        finally:
            output_dir = cfg.get("paths", {}).get("output_dir")
            if output_dir and rank_zero_only.rank == 0:
                print(f"Output dir: {output_dir}", flush=True)
            close_loggers()
            # DDP processes this job started (HydraDDPStrategy): wait for them (end them
            # if the job failed) and close the process group, so the next job of a
            # multirun starts afresh, with DDP or without
            distributed = sys.modules.get("audiolab.utils.distributed")
            if distributed is not None:
                distributed.release_processes(kill=failed)

    return wrapped


def apply_extras(cfg: DictConfig) -> None:
    """Optional conveniences from ``cfg.extras``: silence Python warnings, print the
    config tree (and save it beside the run)."""
    single_console_log()
    extras = cfg.get("extras")
    if not extras:
        return
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config"):
        print_config_tree(cfg, save_to=cfg.get("paths", {}).get("output_dir"))


@rank_zero_only
def print_config_tree(cfg: DictConfig, save_to: str | None = None) -> None:
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    order = ["data", "model", "callbacks", "logger", "trainer", "paths", "extras"]
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=True) if isinstance(node, DictConfig) else str(node)
        tree.add(key, style="dim", guide_style="dim").add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
    if save_to:
        Path(save_to).mkdir(parents=True, exist_ok=True)
        with open(Path(save_to) / "config_tree.log", "w") as handle:
            rich.print(tree, file=handle)


@rank_zero_only
def log_hyperparameters(config: dict[str, Any], model, trainer) -> None:
    """Send the whole resolved config plus parameter counts to every logger, once."""
    if not trainer.loggers:
        return
    params = dict(config)
    params["model/params/total"] = sum(p.numel() for p in model.parameters())
    params["model/params/trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    for logger in trainer.loggers:
        logger.log_hyperparams(params)


def metric_value(metrics: Mapping[str, Any], name: str | None) -> float | None:
    """The value of ``name`` in ``metrics`` as a float (for sweepers), or None with one
    warning line when the run never logged it (it ended before its first validation)."""
    if not name:
        return None
    if name not in metrics:
        log.warning(
            f"optimized_metric={name!r} was never logged: the run ended before its first validation "
            "(trainer.max_steps, max_time or limit_val_batches stopped it); it returns no value"
        )
        return None
    return float(metrics[name])


def in_multirun() -> bool:
    """True inside a job of a multirun (``-m``, sweeps)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
