"""Command-line entry points (``src/train.py``, ``src/eval.py``, ``src/generate.py``,
``src/separate.py``, ``src/predict.py`` and the console scripts ``audiolab-train``,
``audiolab-eval``, ``audiolab-generate``, ``audiolab-separate``, ``audiolab-predict``).

Hydra composes ``conf/`` at the repository root in a clone (an editable install), else the
copy of it that ships inside the wheel (``audiolab/conf``); ``AUDIOLAB_CONFIG_DIR`` names
another folder. ``data/`` and ``outputs/`` are under the repository root in a clone, else
under the current directory (``AUDIOLAB_ROOT`` names another)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from audiolab.utils.errors import AudiolabError

REPO_ROOT = Path(__file__).resolve().parents[2]
IN_CLONE = (REPO_ROOT / "conf" / "train.yaml").is_file() and (REPO_ROOT / "src" / "audiolab").is_dir()
PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent / "conf"
CONFIG_DIR = Path(
    os.environ.get("AUDIOLAB_CONFIG_DIR") or (REPO_ROOT / "conf" if IN_CLONE else PACKAGED_CONFIG_DIR)
)


def _prepare() -> None:
    if not (CONFIG_DIR / "train.yaml").is_file():
        sys.exit(
            f"error: audiolab's configs were not found in {CONFIG_DIR}; reinstall audiolab, or set "
            "AUDIOLAB_CONFIG_DIR to a folder holding its conf/ files"
        )
    # conf/paths/default.yaml roots every path here (data/, outputs/).
    os.environ.setdefault("AUDIOLAB_ROOT", str(REPO_ROOT if IN_CLONE else Path.cwd()))
    from audiolab.utils.resume import register_resolvers

    register_resolvers()  # the run dir of resume=... (conf/hydra/default.yaml)


def compose_run(config_name: str, overrides: list[str], output_dir: str | Path) -> DictConfig:
    """Compose a config the way the entry points do, without starting a Hydra run: for
    scripts and tests that call ``train(cfg)`` and friends directly. The Hydra runtime is
    set (``${now:}``, choices) and the run writes into ``output_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    _prepare()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.work_dir = os.environ["AUDIOLAB_ROOT"]
        del cfg["hydra"]
    return cfg


def _run(config_name: str, task: str) -> None:
    """Run ``task`` (``"module:function"`` of audiolab, imported when the job starts) as the
    Hydra app of ``conf/<config_name>.yaml``, after the config extras (warnings, config
    tree). A user error (:class:`AudiolabError`) ends it with one ``error:`` line."""
    _prepare()
    module, function = task.split(":")

    def entry(cfg: DictConfig):
        import importlib

        from audiolab.utils.hydra import apply_extras

        apply_extras(cfg)
        from hydra.errors import InstantiationException

        try:
            return getattr(importlib.import_module(f"audiolab.{module}"), function)(cfg)
        except AudiolabError as exc:
            # A SystemExit passes through Hydra's error reporting: one line, no traceback.
            raise SystemExit(f"error: {exc}") from None
        except InstantiationException as exc:
            # a user error raised while a config entry is built (a DataModule checking its
            # options): the same one line, without Hydra's wrapper
            if isinstance(exc.__cause__, AudiolabError):
                raise SystemExit(f"error: {exc.__cause__}") from None
            raise

    hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(entry)()


def train_objective(cfg: DictConfig) -> float | None:
    """Train, and return ``optimized_metric`` to a sweeper (None when it was never logged)."""
    from audiolab.tasks.train import train
    from audiolab.utils.hydra import in_multirun, metric_value

    metrics, _ = train(cfg)
    value = metric_value(metrics, cfg.get("optimized_metric"))
    if value is None and in_multirun():
        # a sweeper needs a number: NaN, which audiolab's Optuna sweeper records as a failed
        # trial before it goes on (hydra_plugins/audiolab_sweepers)
        return float("nan")
    return value


def train_main() -> None:
    _run("train", "cli:train_objective")


# Dotted overrides of the stored run config (data.root=..., model.decoder=...) are not keys
# of eval.yaml: turn them into Hydra's add-or-override form.
_STORED_OVERRIDE = re.compile(r"^(data|model)\.[\w.\-]+=")


def eval_main() -> None:
    sys.argv = [sys.argv[0]] + [
        ("++" + a if _STORED_OVERRIDE.match(a) else a) for a in sys.argv[1:]
    ]
    _run("eval", "tasks.evaluate:evaluate")


def generate_main() -> None:
    _run("generate", "tasks.generate:generate")


def separate_main() -> None:
    _run("separate", "tasks.separate:separate_files")


def predict_main() -> None:
    _run("predict", "tasks.predict:predict_files")
