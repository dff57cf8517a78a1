"""Continuing an interrupted run in place: ``resume=true`` (the newest run of the task that
has a ``last.ckpt``), ``resume=<run dir>`` or ``ckpt_path=last``.

Hydra's run dir is chosen by the ``audiolab_run_dir`` resolver (``conf/hydra/default.yaml``),
so the resumed job writes into the old folder; its own ``.hydra/`` files go to
``.hydra/resume_<time>/`` and the original ones stay. :func:`resumed_config` rebuilds the
run config from the one stored in ``last.ckpt`` with the command line's dotted overrides on
top (``trainer.max_epochs=50``), so ``python src/train.py resume=true`` alone is enough."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from audiolab.utils.errors import ResumeError

RUN_DIR_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}(-\d{6})?$")
LAST = Path("checkpoints") / "last.ckpt"
# overrides that steer resuming itself, or that only name where things go
_IGNORED = {"resume", "ckpt_path"}


_YES = {"true", "yes", "1", "last"}
_NO = {"false", "no", "0", ""}


def _switch(value: Any) -> bool | None:
    """``resume`` as a switch: True or False, or None when it names a run dir."""
    if isinstance(value, str):
        word = value.lower()
        return True if word in _YES else False if word in _NO else None
    return bool(value)


def wants_resume(resume: Any, ckpt_path: Any) -> bool:
    return _switch(resume) is not False or ckpt_path == "last"


def find_run_dir(resume: Any, task_root: str | Path) -> Path:
    """The run dir ``resume`` names: a folder, or (``true``) the newest run under
    ``task_root`` (``outputs/<task_name>``) with a ``checkpoints/last.ckpt``."""
    if _switch(resume) is None:
        run = Path(resume).expanduser().resolve()
        if not run.is_dir():
            raise ResumeError(f"resume={resume}: no such run dir; pass resume=true or the folder of a run")
        if not (run / LAST).is_file():
            raise ResumeError(
                f"resume={resume}: {run / LAST} does not exist (the run wrote no checkpoint yet); "
                "start it again without resume"
            )
        return run
    root = Path(task_root)
    runs = sorted(p for p in root.glob("*") if RUN_DIR_NAME.match(p.name) and (p / LAST).is_file()) if root.is_dir() else []
    if not runs:
        raise ResumeError(
            f"resume=true: no run under {root} has a {LAST} to continue; start a new run "
            "(without resume) or pass resume=<run dir>"
        )
    return runs[-1]


def run_dir_resolver(task_root: str, stamp: str, resume: Any = None, ckpt_path: Any = None) -> str:
    """``hydra.run.dir``: the resumed run's folder, else ``<task_root>/<stamp>``."""
    if wants_resume(resume, ckpt_path):
        try:
            return str(find_run_dir(resume if resume not in (None, False) else True, task_root))
        except ResumeError as exc:
            # Raised while Hydra resolves its run dir, before any task code: a SystemExit
            # passes OmegaConf's and Hydra's error wrapping and ends with this one line.
            raise SystemExit(f"error: {exc}") from None
    return f"{task_root}/{stamp}"


def hydra_subdir_resolver(stamp: str, resume: Any = None, ckpt_path: Any = None) -> str:
    """``hydra.output_subdir``: a resumed job keeps the run's original ``.hydra`` files."""
    return f".hydra/resume_{stamp}" if wants_resume(resume, ckpt_path) else ".hydra"


def register_resolvers() -> None:
    for name, fn in (("audiolab_run_dir", run_dir_resolver), ("audiolab_hydra_subdir", hydra_subdir_resolver)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def _command_line_overrides() -> tuple[list[str], set[str]]:
    """This job's own overrides and the names of the config groups, from Hydra's runtime."""
    from hydra.core.hydra_config import HydraConfig

    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:  # no Hydra runtime: nothing was overridden
        return [], set()
    return list(hydra_cfg.overrides.task), set(hydra_cfg.runtime.choices.keys())


def resumed_config(cfg: DictConfig) -> DictConfig:
    """The config a resumed run continues with: the stored config of its ``last.ckpt``,
    this command's dotted overrides on top, ``ckpt_path`` set to that ``last.ckpt``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from audiolab.utils.checkpoint import load_checkpoint, stored_config

    run_dir = Path(cfg.paths.output_dir)
    last = run_dir / LAST
    if not last.is_file():
        raise ResumeError(
            f"resume: {last} does not exist. Resuming continues a single run in its own folder "
            "(a sweep job cannot be resumed this way: rerun it with ckpt_path=<its last.ckpt>)"
        )
    stored = OmegaConf.create(stored_config(load_checkpoint(last, mmap=True)))  # config only: tensors stay on disk
    overrides, groups = _command_line_overrides()
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key in _IGNORED:
            continue
        if key in groups or "/" in key:
            raise ResumeError(
                f"resume: `{override.input_line}` picks another config group option, which a resumed run "
                f"cannot take (it continues {last}); change single values (e.g. trainer.max_epochs=50), "
                f"or start a new run from the checkpoint with ckpt_path={last}"
            )
        if override.is_delete():
            raise ResumeError(f"resume: `{override.input_line}` deletes a key, which a resumed run cannot do")
        if override.is_sweep_override():
            raise ResumeError(f"resume: `{override.input_line}` is a sweep; a resumed run is a single job")
        OmegaConf.update(stored, key, override.value(), merge=True, force_add=True)
    with open_dict(stored):
        stored.paths.output_dir = str(run_dir)
        stored.ckpt_path = str(last)
        stored.resume = str(run_dir)
    return stored
