"""End-to-end: training, evaluation from a checkpoint, resume, debug presets, multirun,
offline W&B. These run the real configs and the real entry points."""

from __future__ import annotations

import json
import time

import pytest
import torch
from helpers import RUN_DIR_NAME, SMALL, compose_config, output_dir_of, read_wandb_records, run_cli
from omegaconf import OmegaConf

from audiolab.tasks.train import train


def test_fast_dev_run(tmp_path):
    cfg = compose_config("train", ["debug=fdr", *SMALL], tmp_path)
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 1
    assert 0.0 <= metrics["test/rpa"] <= 1.0 and "test/rca" in metrics
    assert not list(tmp_path.rglob("epoch_*.ckpt"))  # no best checkpoint: tested the current weights


@pytest.mark.parametrize("metric,mode", [(None, None), ("val/loss", "min")])
def test_one_metric_and_mode_drive_checkpoints_and_the_plateau_scheduler(metric, mode, tmp_path):
    """optimized_metric / optimized_mode (null: the task's own, val/rpa in max mode) decide
    both what the best checkpoint is and what a ReduceLROnPlateau watches, in which mode."""
    overrides = ["experiment=pitch_crepe_synth", "model.net.capacity=tiny", "debug=fdr", *SMALL]
    if metric is not None:
        overrides += [f"optimized_metric={metric}", f"optimized_mode={mode}"]
    cfg = compose_config("train", overrides, tmp_path)
    _, objects = train(cfg)
    expected = (metric or "val/rpa", mode or "max")
    trainer = objects["trainer"]
    (scheduler,) = trainer.lr_scheduler_configs
    assert isinstance(scheduler.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert (scheduler.monitor, scheduler.scheduler.mode) == expected
    best = next(c for c in trainer.checkpoint_callbacks if c.monitor is not None)
    assert (best.monitor, best.mode) == expected
    model = objects["model"]
    assert (model.monitor, model.monitor_mode) == expected
    # the stored run config records them for the model
    assert (cfg.model.monitor, cfg.model.monitor_mode) == expected


def test_a_plateau_mode_against_the_optimized_mode_is_refused(tmp_path):
    import hydra

    from audiolab.tasks.train import fill_task_defaults

    cfg = compose_config(
        "train",
        ["experiment=pitch_crepe_synth", "optimized_metric=val/loss", "optimized_mode=min",
         "+model.scheduler.mode=max", *SMALL],
        tmp_path,
    )
    fill_task_defaults(cfg)
    with pytest.raises(Exception, match="model.scheduler.mode=max but val/loss is monitored in min mode"):
        hydra.utils.instantiate(cfg.model)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["limit", "overfit", "profiler"])
def test_debug_presets_run(preset, tmp_path):
    cfg = compose_config("train", [f"debug={preset}", *SMALL], tmp_path)
    metrics, objects = train(cfg)
    assert "test/rpa" in metrics and objects["trainer"].global_step > 0
    if preset == "profiler":
        assert list(tmp_path.glob("*profile*.txt")), list(tmp_path.iterdir())


@pytest.mark.slow
def test_overfit_one_batch_lowers_the_loss(tmp_path):
    cfg = compose_config("train", ["debug=overfit", "trainer.max_epochs=15", "logger=csv", *SMALL], tmp_path)
    train(cfg)
    import csv

    rows = list(csv.DictReader(open(next(tmp_path.glob("csv/version_*/metrics.csv")))))
    losses = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    assert len(losses) >= 10 and losses[-1] < 0.7 * losses[0], losses


@pytest.mark.slow
def test_train_then_eval_reproduces_test_metrics(tmp_path):
    proc = run_cli("train", "debug=limit", *SMALL, f"paths.log_dir={tmp_path}")
    run_dir = output_dir_of(proc)
    assert run_dir.parent == tmp_path / "debug" and RUN_DIR_NAME.match(run_dir.name), run_dir
    best = [p for p in (run_dir / "checkpoints").glob("epoch_*.ckpt")]
    assert len(best) == 1 and (run_dir / "checkpoints" / "last.ckpt").is_file()
    logged = _csv_test_metrics(run_dir)

    # model and data come from the checkpoint: no model=/data= on this command line
    proc = run_cli("eval", f"ckpt={best[0]}", f"paths.log_dir={tmp_path}", "trainer=cpu")
    eval_dir = output_dir_of(proc)
    assert eval_dir.parent == tmp_path / "eval"
    report = json.loads((eval_dir / "metrics.json").read_text())
    for key in ("test/rpa", "test/rca", "test/loss"):
        assert report["metrics"][key] == pytest.approx(logged[key], abs=1e-6), key
    assert "test/rpa" in proc.stdout  # the printed table
    text = (eval_dir / "report.md").read_text()
    assert f"| test/rpa | {report['metrics']['test/rpa']:.3f} |" in text
    assert "![contours](report/contours.png)" in text and (eval_dir / "report" / "contours.png").stat().st_size > 0


@pytest.mark.slow
def test_eval_accepts_overrides_of_the_stored_config(tmp_path):
    cfg = compose_config("train", ["debug=limit", "trainer.max_epochs=1", *SMALL], tmp_path / "train")
    train(cfg)
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    proc = run_cli(
        "eval", f"ckpt={ckpt}", f"paths.log_dir={tmp_path}", "data.test_clips=2", "model.decoder=argmax",
        "extras.print_config=false",
    )
    out = output_dir_of(proc)
    report = json.loads((out / "metrics.json").read_text())
    assert "test/rpa" in report["metrics"]
    evaluated = OmegaConf.load(out / "run_config.yaml")
    assert evaluated.data.test_clips == 2 and evaluated.model.decoder == "argmax"
    assert evaluated.data.val_clips == 4  # the rest comes from the checkpoint


@pytest.mark.slow
def test_resume_from_last_checkpoint_continues(tmp_path):
    first = compose_config("train", ["debug=limit", "trainer.max_epochs=1", "test=false", *SMALL], tmp_path / "a")
    _, objects = train(first)
    assert objects["trainer"].global_step == 3
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["epoch"] == 0

    second = compose_config(
        "train", ["debug=limit", "trainer.max_epochs=2", "test=false", f"ckpt_path={last}", *SMALL], tmp_path / "b"
    )
    _, objects = train(second)
    trainer = objects["trainer"]
    assert trainer.global_step == 6 and trainer.current_epoch == 2  # continued, not restarted
    resumed = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 6 and resumed["epoch"] == 1


@pytest.mark.slow
def test_multirun_writes_one_dir_per_job(tmp_path):
    proc = run_cli("train", "-m", "debug=fdr", "model.optimizer.lr=1e-3,3e-4", *SMALL, f"paths.log_dir={tmp_path}")
    sweeps = list((tmp_path / "debug" / "multirun").iterdir())
    assert len(sweeps) == 1 and RUN_DIR_NAME.match(sweeps[0].name)
    jobs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir())
    assert jobs == ["0", "1"], jobs
    for job, lr in (("0", "0.001"), ("1", "0.0003")):
        overrides = (sweeps[0] / job / ".hydra" / "overrides.yaml").read_text()
        assert f"model.optimizer.lr={lr}" in overrides
    assert proc.stdout.count("Output dir:") == 2


@pytest.mark.slow
def test_offline_wandb_run_writes_files(tmp_path, monkeypatch):
    # no account anywhere: the logger must pick offline mode by itself, with no prompt
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    cfg = compose_config("train", ["debug=limit", "trainer.max_epochs=1", "logger=wandb", *SMALL], tmp_path)
    train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(tmp_path.rglob("*"))[:20]
    assert list(runs[0].glob("run-*.wandb")), list(runs[0].iterdir())
    # wandb's service process may still be flushing the file when finish() returns (seen
    # once on a loaded 2-core machine: a zero-filled file): read until the exit record lands
    run_file = next(runs[0].glob("run-*.wandb"))
    deadline = time.monotonic() + 60
    while True:
        records = read_wandb_records(run_file)
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    # the run was finished, not left open
    assert "exit" in kinds, f"{run_file} ({run_file.stat().st_size} bytes): records {kinds}"
    config = {u.key: u.value_json for r in records if r.HasField("config") for u in r.config.update}
    assert "audiolab.models.pitch.PitchModule" in config["model"]  # the resolved run config
    logged = {i.key or "/".join(i.nested_key) for r in records if r.HasField("history") for i in r.history.item}
    assert {"val/rpa", "val/rca", "val/loss", "trainer/global_step"} <= logged, logged


def _csv_test_metrics(run_dir):
    import csv

    rows = list(csv.DictReader(open(next(run_dir.glob("csv/version_*/metrics.csv")))))
    test_rows = [r for r in rows if r.get("test/rpa")]
    assert len(test_rows) == 1
    return {k: float(v) for k, v in test_rows[0].items() if k.startswith("test/") and v}
