"""Checks of the options users set on the command line, before anything is built: a wrong
value is one line naming the key, the value and what it may be, not a library traceback an
hour into the run (``trainer.max_epochs=abc``, ``data.batch_size=0``, ``model.optimizer.lr=-1``).

Each rule names a key of the composed config; a key the config does not have is skipped
(``data.chunk_seconds`` exists only for separation data), ``null`` passes where the rule
says so."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from audiolab.utils.errors import AudiolabError


class ConfigValueError(AudiolabError):
    """An option's value is of the wrong type or out of range."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


@dataclass(frozen=True)
class Rule:
    valid: Callable[[Any], bool]
    says: str  # what the value may be, for the message
    nullable: bool = False


def integer(low: int, note: str = "", nullable: bool = False) -> Rule:
    return Rule(lambda v: _is_int(v) and v >= low, f"an integer >= {low}{note}", nullable)


def positive(note: str = "", nullable: bool = False) -> Rule:
    return Rule(lambda v: _is_number(v) and v > 0, f"a number > 0{note}", nullable)


def non_negative(note: str = "", nullable: bool = False) -> Rule:
    return Rule(lambda v: _is_number(v) and v >= 0, f"a number >= 0{note}", nullable)


# ``limit_*_batches``: an int (batches) or a fraction in [0, 1]
_BATCHES = Rule(
    lambda v: (_is_int(v) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0),
    "null (all), an integer >= 0 (batches) or a fraction in [0.0, 1.0]",
    nullable=True,
)
_PRECISIONS = ("64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "transformer-engine")

RULES: dict[str, Rule] = {
    "seed": integer(0, nullable=True),
    "trainer.max_epochs": integer(-1, " (-1: no limit)", nullable=True),
    "trainer.min_epochs": integer(0, nullable=True),
    "trainer.max_steps": integer(-1, " (-1: no limit)"),
    "trainer.limit_train_batches": _BATCHES,
    "trainer.limit_val_batches": _BATCHES,
    "trainer.limit_test_batches": _BATCHES,
    "trainer.val_check_interval": Rule(
        lambda v: (_is_int(v) and v >= 1) or (isinstance(v, float) and 0.0 < v <= 1.0),
        "null, an integer >= 1 (batches) or a fraction in (0.0, 1.0]",
        nullable=True,
    ),
    "trainer.check_val_every_n_epoch": integer(1, nullable=True),
    "trainer.num_sanity_val_steps": integer(-1, " (-1: the whole validation set)"),
    "trainer.log_every_n_steps": integer(1),
    "trainer.accumulate_grad_batches": integer(1),
    "trainer.gradient_clip_val": non_negative(nullable=True),
    "trainer.num_nodes": integer(1),
    "trainer.precision": Rule(lambda v: str(v) in _PRECISIONS + ("32", "64", "16", "bf16"), f"one of {', '.join(_PRECISIONS)}"),
    "data.batch_size": integer(1),
    "data.eval_batch_size": integer(1),
    "data.num_workers": integer(0),
    "data.sample_rate": integer(1, " (Hz)"),
    "data.audio_channels": integer(1),
    "data.chunk_seconds": positive(" (seconds)"),
    "data.duration": positive(" (seconds)"),
    "data.valid_excerpt_seconds": positive(" (seconds)", nullable=True),
    "data.samples_per_track": integer(1),
    "model.optimizer.lr": positive(),
    "model.chunk_seconds": positive(" (seconds)", nullable=True),
    "model.sample_rate": integer(1, " (Hz)"),
}


_ABSENT = object()


def validate_options(cfg: DictConfig, rules: dict[str, Rule] = RULES) -> None:
    """Raise a :class:`ConfigValueError` for the first option of ``cfg`` that breaks its rule."""
    for key, rule in rules.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT or OmegaConf.is_config(value) or (value is None and rule.nullable):
            continue
        if not rule.valid(value):
            raise ConfigValueError(f"{key}={value!r} is not valid: it must be {rule.says}")


def check_task_match(cfg: DictConfig, ckpt: str | None = None) -> None:
    """Refuse a model and data of different tasks (``data=musdb_render`` with the default
    pitch model; ``data=synth_pitch`` for a separation checkpoint), naming both, before
    anything is built. ``ckpt``: the checkpoint the model comes from (eval.py)."""
    import hydra

    module_cls = hydra.utils.get_class(cfg.model._target_)
    data_cls = hydra.utils.get_class(cfg.data._target_)
    task, served = getattr(module_cls, "task", ""), getattr(data_cls, "tasks", ())
    if not task or not served or task in served:
        return
    data = f"the data is for {' / '.join(served)} ({data_cls.__name__})"
    if ckpt is not None:
        raise AudiolabError(
            f"{ckpt} holds a {task} model ({module_cls.__name__}) but {data}: choose a {task} data "
            "config, or leave data= out to evaluate on the checkpoint's own data"
        )
    raise AudiolabError(
        f"the model is a {task} model ({module_cls.__name__}) but {data}: choose a {served[0]} model "
        f"(model=...), or an experiment= that sets both"
    )
