"""Checks of a multirun's config before any of its jobs starts (a Hydra callback, in the
submitting process): the sweeper optimises ``optimized_metric`` the way checkpoints rank it,
and a SLURM launcher asks for the tasks Lightning will expect."""

from __future__ import annotations

from typing import Any

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from audiolab.utils.errors import AudiolabError

DIRECTIONS = {"max": "maximize", "min": "minimize"}


def check_sweep_direction(cfg: DictConfig) -> None:
    """``hydra.sweeper.direction`` must agree with ``optimized_mode`` (max = maximize), the
    mode taken from the model's ``monitor_mode`` where it is null."""
    direction = cfg.hydra.sweeper.get("direction")
    if direction is None:  # the basic sweeper (grids) has no direction
        return
    direction = getattr(direction, "name", str(direction))  # optuna's Direction enum or a string
    mode = cfg.get("optimized_mode")
    if mode is None:
        mode = getattr(hydra.utils.get_class(cfg.model._target_), "monitor_mode", "min")
    if DIRECTIONS.get(mode) != direction:
        raise AudiolabError(
            f"hydra.sweeper.direction={direction} but optimized_mode={mode} "
            f"(optimized_metric={cfg.get('optimized_metric')}): the sweeper would pick the trial the "
            "checkpoints rank worst. Set optimized_mode (the hparams_search configs derive the direction from it)"
        )


def check_slurm_launcher(cfg: DictConfig) -> None:
    """Lightning on SLURM wants one task per device: ``tasks_per_node == trainer.devices``
    and ``nodes == trainer.num_nodes`` (Lightning itself only finds out on the cluster)."""
    launcher = cfg.hydra.launcher
    if not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
        return
    tasks, nodes = launcher.tasks_per_node, launcher.nodes
    devices, num_nodes = cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1)
    if tasks != devices or nodes != num_nodes:
        raise AudiolabError(
            f"hydra.launcher asks SLURM for {nodes} node(s) x {tasks} task(s) but the trainer runs "
            f"{num_nodes} node(s) x {devices} device(s); Lightning needs one task per device: use "
            "cluster=slurm cluster.nodes=N cluster.gpus_per_node=G, which sets both"
        )


class CheckSweep(Callback):
    """Runs the checks above when a multirun starts; a failed check ends it with one line."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_sweep_direction(config)
            check_slurm_launcher(config)
        except AudiolabError as exc:
            raise SystemExit(f"error: {exc}") from None
