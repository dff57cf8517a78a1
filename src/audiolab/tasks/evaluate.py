"""Evaluation task: rebuild model and data from the config stored in a checkpoint,
run the test loop, write ``metrics.json`` and ``report.md`` (tables and plots) and print
the headline table."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from audiolab.reports import write_report
from audiolab.utils.checkpoint import load_checkpoint, stored_config
from audiolab.utils.hydra import instantiate_callbacks, instantiate_loggers, task_wrapper
from audiolab.utils.targets import check_targets
from audiolab.utils.validate import check_task_match, validate_options

log = logging.getLogger("audiolab")


def _group_chosen(group: str) -> bool:
    """True when the user picked a config group option (``data=...``) on this command line."""
    try:
        return HydraConfig.get().runtime.choices.get(group) is not None
    except ValueError:  # no Hydra runtime (compose API)
        return False


def run_config(cfg: DictConfig, checkpoint: dict[str, Any]) -> DictConfig:
    """The training run's config with this command's ``data`` / ``model`` changes on top:
    a chosen ``data=<option>`` replaces the stored data config, dotted overrides
    (``data.root=...``, ``model.decoder=...``) are merged into it."""
    stored = OmegaConf.create(stored_config(checkpoint))
    for group in ("data", "model"):
        if group not in cfg or cfg[group] is None:
            continue
        if group == "data" and _group_chosen("data"):
            stored[group] = cfg[group]
        else:
            stored[group] = OmegaConf.merge(stored[group], cfg[group])
    return stored


def print_table(rows: list[tuple[str, float, float | str | None]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("reference", justify="right")
    for name, value, reference in rows:
        ref = "" if reference is None else (f"{reference:.4f}" if isinstance(reference, float) else str(reference))
        table.add_row(name, f"{value:.4f}", ref)
    Console().print(table)


@task_wrapper
def evaluate(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    checkpoint = load_checkpoint(cfg.ckpt)
    run = run_config(cfg, checkpoint)
    check_targets(run, str(cfg.ckpt))  # the stored config was checked; this command's changes too
    check_task_match(run, str(cfg.ckpt))
    validate_options(cfg)  # this command's trainer
    validate_options(run)  # the data and model it evaluates
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    datamodule: L.LightningDataModule = hydra.utils.instantiate(run.data)
    model: L.LightningModule = hydra.utils.instantiate(run.model)
    model.load_state_dict(checkpoint["state_dict"])
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=instantiate_callbacks(cfg.get("callbacks")),
        logger=instantiate_loggers(cfg.get("logger")) or False,
    )
    log.info(f"evaluating {cfg.ckpt}")
    trainer.test(model=model, datamodule=datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "ckpt": str(Path(cfg.ckpt).expanduser().resolve()),
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        "metrics": metrics,
    }
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    # exactly what was evaluated: the stored run config with this command's changes
    OmegaConf.save(run, out_dir / "run_config.yaml")
    if trainer.is_global_zero:
        headline = write_report(out_dir, model, datamodule, metrics, report, trainer).headline
        print_table(headline, title=f"test metrics ({Path(cfg.ckpt).name}); report: {out_dir / 'report.md'}")
    return metrics, {"cfg": cfg, "run": run, "datamodule": datamodule, "model": model, "trainer": trainer}
