"""The Optuna sweeper of ``hparams_search=...``: Hydra's own, except for failed trials.

A trial whose run gives no value for ``optimized_metric`` (the run ended before its first
validation, so the metric was never logged, or it is NaN) returns NaN. Hydra's sweeper
(hydra-optuna-sweeper 1.2) then stops the whole sweep with a ValueError; this one tells
Optuna that the trial failed, says why in one warning line, and goes on with the next."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from optuna.trial import TrialState

log = logging.getLogger("audiolab")


@contextmanager
def _nan_trials_fail(metric: str) -> Iterator[None]:
    """While active, studies made by ``optuna.create_study`` record a trial told with a NaN
    value as FAIL (Optuna itself refuses NaN with a ValueError)."""
    create_study = optuna.create_study

    def create(*args: Any, **kwargs: Any) -> optuna.Study:
        study = create_study(*args, **kwargs)
        tell = study.tell

        def tell_nan_as_failed(trial, state=None, values=None, **more):
            if state != TrialState.FAIL and values is not None and any(math.isnan(v) for v in values):
                number = getattr(trial, "number", trial)
                log.warning(
                    f"trial {number} failed: optimized_metric={metric!r} was never logged by its run "
                    "(it ended before its first validation) or is NaN; the sweep goes on"
                )
                return tell(trial, state=TrialState.FAIL)
            return tell(trial, state=state, values=values, **more)

        study.tell = tell_nan_as_failed
        return study

    optuna.create_study = create
    try:
        yield
    finally:
        optuna.create_study = create_study


class AudiolabOptunaSweeper(OptunaSweeper):
    """``hydra.sweeper._target_`` of the ``hparams_search`` configs; arguments as Hydra's."""

    def sweep(self, arguments: list[str]) -> None:
        metric = str(self.sweeper.config.get("optimized_metric")) if self.sweeper.config else "?"
        with _nan_trials_fail(metric):
            return super().sweep(arguments)
