"""Training task: everything ``python src/train.py`` does, as a function of the config."""

from __future__ import annotations

import logging
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import WeightAveraging
from omegaconf import DictConfig, OmegaConf, open_dict

from audiolab.utils.checkpoint import (
    AtomicCheckpointIO,
    RNGStateInCheckpoint,
    StoreConfigInCheckpoint,
)
from audiolab.utils.hydra import (
    instantiate_callbacks,
    instantiate_loggers,
    log_hyperparameters,
    task_wrapper,
)
from audiolab.utils.resume import resumed_config, wants_resume
from audiolab.utils.validate import check_task_match, validate_options

log = logging.getLogger("audiolab")


def fill_task_defaults(cfg: DictConfig) -> None:
    """``optimized_metric: null`` means the task's headline validation metric, declared by
    its LightningModule (``monitor`` / ``monitor_mode``), e.g. ``val/rpa`` (max) for pitch.

    The pair is the one source of what is monitored and in which direction: the checkpoint
    callback interpolates ``${optimized_metric}`` / ``${optimized_mode}``, and a task module
    gets them as ``model.monitor`` / ``model.monitor_mode`` for its LR scheduler (a
    ``ReduceLROnPlateau`` watches that metric in that mode); the stored config records them."""
    from audiolab.models.base import TaskModule

    module_cls = hydra.utils.get_class(cfg.model._target_)
    with open_dict(cfg):
        if cfg.get("optimized_metric") is None:
            cfg.optimized_metric = getattr(module_cls, "monitor", None)
        if cfg.get("optimized_mode") is None:
            cfg.optimized_mode = getattr(module_cls, "monitor_mode", "min")
        if isinstance(module_cls, type) and issubclass(module_cls, TaskModule):
            cfg.model.monitor = cfg.optimized_metric
            cfg.model.monitor_mode = cfg.optimized_mode


def trainer_plugins(trainer_cfg: DictConfig) -> list[Any]:
    """The trainer's configured ``plugins`` plus :class:`AtomicCheckpointIO` (checkpoints
    renamed into place, never truncated), unless a checkpoint IO plugin is configured."""
    from lightning.fabric.plugins import CheckpointIO

    configured = trainer_cfg.get("plugins") or []
    plugins = [hydra.utils.instantiate(p) if isinstance(p, DictConfig) else p for p in configured]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


@task_wrapper
def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit, then test with the best checkpoint. Returns ``(metrics, objects)``.

    ``resume=...`` / ``ckpt_path=last``: continue the run in its own folder from its
    ``last.ckpt``, with the config stored there (plus this command's dotted overrides)."""
    if wants_resume(cfg.get("resume"), cfg.get("ckpt_path")):
        cfg = resumed_config(cfg)
        log.info(f"resuming {cfg.paths.output_dir} from {cfg.ckpt_path}")
    validate_options(cfg)
    check_task_match(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    fill_task_defaults(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)

    log.info(f"data: {cfg.data._target_}")
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    log.info(f"model: {cfg.model._target_}")
    model: L.LightningModule = hydra.utils.instantiate(cfg.model)
    callbacks = instantiate_callbacks(cfg.get("callbacks")) + [
        StoreConfigInCheckpoint(resolved),
        RNGStateInCheckpoint(),
    ]
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=trainer_plugins(cfg.trainer)
    )
    objects = {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer}
    log_hyperparameters(resolved, model, trainer)

    if cfg.get("train", True):
        log.info("training")
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    if cfg.get("test", False):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not best:
            log.warning(
                "no best checkpoint was written (fast_dev_run or no checkpoint callback): testing the current weights"
            )
        log.info(f"testing with {best or 'the current weights'}")
        # A checkpoint's state_dict holds the averaged weights when weight averaging (EMA)
        # is on, and those are what validation scored and what eval.py loads; the
        # callback itself would restore the raw weights of a checkpoint loaded after fit.
        trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, WeightAveraging)]
        trainer.test(model=model, datamodule=datamodule, ckpt_path=best or None)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        if best:
            metrics["best_ckpt"] = best
    return metrics, objects
