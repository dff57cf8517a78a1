"""Lightning's DDP for Hydra jobs: the processes of ranks > 0 run the same job in the same
run dir, in single runs and in multiruns (``-m``) alike.

Lightning starts the processes of ranks > 0 by running the script again with its command
line plus ``hydra.run.dir=<the run dir pattern>``. In a multirun that is wrong twice over:
the command line still carries ``-m`` and the whole sweep, so every rank > 0 starts a sweep
of its own, and the run-dir pattern is not the job's folder (which is
``<sweep dir>/<job number>``). :class:`HydraDDPStrategy` is Lightning's
:class:`~lightning.pytorch.strategies.DDPStrategy` with one change: ranks > 0 are started
with the *job's* overrides (``HydraConfig.get().overrides.task``), in run mode, in the job's
own folder (``hydra.runtime.output_dir``), writing no ``.hydra/`` of their own and logging
into ``<task_name>.rank<r>.log`` beside the job's log. Between the jobs of a multirun it
waits for the previous job's processes, closes its process group and clears the
environment Lightning set for it, so that the next job starts its own ranks
(called at the end of a job, :func:`release_processes` does the same at once, so that a
sweep may also mix DDP and single-process jobs).

Use it from a trainer config::

    strategy:
      _target_: audiolab.utils.distributed.HydraDDPStrategy
    accelerator: gpu
    devices: 4
    sync_batchnorm: true
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.strategies.launchers.subprocess_script import _basic_subprocess_cmd
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from omegaconf import OmegaConf

log = logging.getLogger("audiolab")

# what Lightning's launcher sets in the launching process's environment
LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Hydra overrides a rank > 0 must not inherit: the job's folder, mode, sweeper and
# launcher are set for it (the rest, e.g. hydra.job.chdir or hydra.verbose, is kept)
_DROPPED_HYDRA_KEYS = ("hydra.run.dir", "hydra.output_subdir", "hydra.mode", "hydra.job.name")
_DROPPED_HYDRA_PREFIXES = ("hydra.sweep", "hydra.sweeper", "hydra.launcher", "hydra/sweeper", "hydra/launcher")


class _Launch:
    """What a launch in this process left behind: the job it was for, the environment
    before it and the processes it started."""

    def __init__(self, job: str | None, env: dict[str, str | None], procs: list[subprocess.Popen]) -> None:
        self.job = job
        self.env = env
        self.procs = procs


_last_launch: _Launch | None = None


def _current_job() -> str | None:
    """The folder of the running Hydra job, or None outside one."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    # None, not an error, where the config was composed without a run (compose API)
    return OmegaConf.select(HydraConfig.get(), "runtime.output_dir", default=None)


def finish_previous_job(timeout: float = 600.0) -> None:
    """Before a job of a multirun starts its own DDP processes: :func:`release_processes`
    of the previous job launched from this process. Nothing happens within the same job (a
    second trainer of one job reuses its processes, as Lightning does) or where this
    process launched nothing."""
    if _last_launch is not None and _last_launch.job != _current_job():
        release_processes(timeout)


def release_processes(timeout: float = 600.0, kill: bool = False) -> None:
    """Wait for the processes of ranks > 0 that this process launched (``kill``: end them
    first, e.g. after the job failed and they may wait for rank zero forever), close the
    process group and restore the environment as it was before the launch, so that the
    next job of a multirun, DDP or not, starts afresh. Raises if one of them failed or
    outlives ``timeout`` seconds. A no-op where this process launched nothing."""
    global _last_launch
    launch, _last_launch = _last_launch, None
    if launch is None:
        return
    failure = None
    for proc in launch.procs:
        if kill:
            proc.kill()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            failure = failure or (
                f"a DDP process of the job {launch.job} (pid {proc.pid}) was still running "
                f"{timeout:.0f} s after that job ended; it was killed"
            )
            continue
        if code != 0 and not kill:
            failure = failure or (
                f"a DDP process of the job {launch.job} (pid {proc.pid}) exited with code {code}; "
                "see its <task_name>.rank<r>.log in that job's folder"
            )
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for key, value in launch.env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if failure:
        raise RuntimeError(failure)
    log.debug(f"DDP: the processes of {launch.job} exited")


def quote_override_value(value: str) -> str:
    """``value`` as a quoted Hydra override value that reads back unchanged (quotes
    escaped; ``${`` escaped so that OmegaConf does not take it for an interpolation)."""
    # Hydra reads a backslash literally except in a run of them before a quote or at the end
    escaped = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
    escaped = escaped.replace("${", "\\${")
    return f"'{escaped}'"


def _override_key(override: str) -> str:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(override).key_or_group


def _kept_hydra_override(override: str) -> bool:
    key = _override_key(override)
    if key in _DROPPED_HYDRA_KEYS:
        return False
    return not any(key == p or key.startswith(p + ".") or key.startswith(p + "/") for p in _DROPPED_HYDRA_PREFIXES)


def _config_flags(argv: list[str]) -> list[str]:
    """The config-location flags of a Hydra command line (``--config-path``,
    ``--config-name``, ``--config-dir``); its overrides and ``-m`` are left out."""
    from hydra._internal.utils import get_args_parser  # the parser hydra.main itself uses

    args, _ = get_args_parser().parse_known_args(argv)
    flags = []
    for flag, value in (
        ("--config-path", args.config_path),
        ("--config-name", args.config_name),
        ("--config-dir", args.config_dir),
    ):
        if value is not None:
            flags.append(f"{flag}={value}")
    return flags


def _script_command() -> list[str]:
    """How this process was started: ``python <script>`` or ``python -m <module>`` (the
    script's path taken from where the command was run, whatever ``hydra.job.chdir``)."""
    from hydra.utils import to_absolute_path

    import __main__

    if getattr(__main__, "__spec__", None) is None:
        return [sys.executable, to_absolute_path(sys.argv[0])]
    return [sys.executable, "-m", __main__.__spec__.name]


def rank_command(local_rank: int) -> tuple[list[str], str | None]:
    """The command line and working directory of the process of ``local_rank`` (> 0): the
    running Hydra job again, in run mode, in the same folder. Outside a Hydra job it is
    Lightning's own (the script and its arguments again)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return list(_basic_subprocess_cmd()), None
    hydra_cfg = HydraConfig.get()
    output_dir = _current_job()
    if not output_dir:
        raise RuntimeError(
            "HydraDDPStrategy starts the other ranks as the running Hydra job, and this config was "
            "composed without a run (no hydra.runtime.output_dir): start DDP through the command "
            "line (python src/train.py trainer=ddp ...)"
        )
    command = _script_command() + _config_flags(sys.argv[1:])
    command += list(hydra_cfg.overrides.task)
    command += [o for o in hydra_cfg.overrides.hydra if _kept_hydra_override(o)]
    command += [
        "hydra.mode=RUN",
        f"hydra.run.dir={quote_override_value(output_dir)}",
        "hydra.output_subdir=null",
    ]
    log_file = OmegaConf.select(hydra_cfg, "job_logging.handlers.file.filename", default=None)
    if log_file:
        path = Path(log_file)
        rank_log = path.with_name(f"{path.stem}.rank{local_rank}{path.suffix}")
        command.append(f"hydra.job_logging.handlers.file.filename={quote_override_value(str(rank_log))}")
    return command, hydra_cfg.runtime.cwd


class HydraJobLauncher(_SubprocessScriptLauncher):
    """Lightning's subprocess launcher, starting ranks > 0 with :func:`rank_command`."""

    def launch(self, function, *args: Any, trainer=None, **kwargs: Any) -> Any:
        if not self.cluster_environment.creates_processes_externally:
            # record the environment before Lightning's launch changes it
            self._env_before = {key: os.environ.get(key) for key in LAUNCH_ENV}
        return super().launch(function, *args, trainer=trainer, **kwargs)

    def _call_children_scripts(self) -> None:
        global _last_launch
        self._check_can_spawn_children()
        self.procs = []
        env = self.cluster_environment
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        os.environ["NODE_RANK"] = str(env.node_rank())
        os.environ["LOCAL_RANK"] = str(env.local_rank())
        os.environ["WORLD_SIZE"] = str(self.num_processes * self.num_nodes)
        for local_rank in range(1, self.num_processes):
            child_env = os.environ.copy()
            child_env["LOCAL_RANK"] = str(local_rank)
            command, cwd = rank_command(local_rank)
            log.debug(f"DDP: starting local rank {local_rank}: {command}")
            self.procs.append(subprocess.Popen(command, env=child_env, cwd=cwd))
        _last_launch = _Launch(_current_job(), getattr(self, "_env_before", {}), self.procs)


class HydraDDPStrategy(DDPStrategy):
    """Lightning's ``DDPStrategy`` (all its arguments: ``process_group_backend``,
    ``find_unused_parameters``, ``timeout``, ...) whose processes for ranks > 0 run the
    current Hydra job in its own folder, also inside a multirun. ``accelerator``,
    ``devices``, ``num_nodes`` and ``sync_batchnorm`` stay Trainer arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        finish_previous_job()
        super().__init__(*args, **kwargs)

    def _configure_launcher(self) -> None:
        if self._start_method != "popen":
            super()._configure_launcher()
            return
        assert self.cluster_environment is not None
        self._launcher = HydraJobLauncher(self.cluster_environment, self.num_processes, self.num_nodes)
