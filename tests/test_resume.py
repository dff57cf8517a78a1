"""Resuming in place (``resume=true``), atomic checkpoints, random states in checkpoints,
and the W&B run that a resumed run continues."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO_ROOT, compose_config, output_dir_of, run_cli
from omegaconf import OmegaConf

from audiolab.utils.checkpoint import (
    CONFIG_KEY,
    AtomicCheckpointIO,
    _rng_tensors,
    _set_rng_tensors,
)
from audiolab.utils.errors import ResumeError
from audiolab.utils.resume import find_run_dir, resumed_config, run_dir_resolver

# CREPE on synthetic tones, dropout on, a few dozen batches per epoch: long enough to kill
# the process in the middle of an epoch.
RUN = [
    "data.batch_size=8",
    "data.train_batches_per_epoch=40",
    "data.val_clips=4",
    "data.test_clips=4",
    "data.eval_batch_size=4",
    "data.num_workers=0",
    "trainer.max_epochs=3",
    "trainer.deterministic=true",
    "test=false",
    "logger=wandb",
    "callbacks.rich_progress_bar=null",
    "extras.print_config=false",
]


def _offline_wandb(monkeypatch, tmp_path):
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))


def _state(path: Path) -> tuple[dict[str, torch.Tensor], int, int]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["state_dict"], ckpt["global_step"], ckpt["epoch"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_with_the_uninterrupted_weights(tmp_path, monkeypatch):
    _offline_wandb(monkeypatch, tmp_path)
    # the reference: three epochs in one go
    reference = output_dir_of(run_cli("train", *RUN, f"paths.log_dir={tmp_path / 'a'}"))
    ref_weights, ref_step, ref_epoch = _state(reference / "checkpoints" / "last.ckpt")
    # last.ckpt follows every epoch (Lightning alone rewrites it only when the metric improved)
    assert (ref_step, ref_epoch) == (120, 2)

    # the same run, killed (SIGKILL: no handler, no cleanup) once the first epoch's
    # checkpoint is on disk, i.e. during the second epoch
    log_dir = tmp_path / "b"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "src" / "train.py"), *RUN, f"paths.log_dir={log_dir}"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    last = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(log_dir.glob("train/*/checkpoints/last.ckpt"))
        if found:
            last = found[0]
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last is not None, "the run never wrote last.ckpt"
    assert proc.returncode == -signal.SIGKILL
    run_dir = last.parents[1]
    _, step, epoch = _state(last)  # loads: the kill left no truncated file
    assert epoch == 0 and 0 < step < ref_step, (epoch, step)  # killed before the second epoch ended
    assert not list(run_dir.glob("checkpoints/.*.tmp"))

    # resume=true alone: the newest run of the task, its stored config, its folder
    proc = run_cli("train", "resume=true", f"paths.log_dir={log_dir}")
    assert output_dir_of(proc) == run_dir
    assert [p.name for p in (log_dir / "train").iterdir()] == [run_dir.name]  # no second run dir
    weights, step, epoch = _state(run_dir / "checkpoints" / "last.ckpt")
    assert (step, epoch) == (ref_step, 2)
    assert weights.keys() == ref_weights.keys()
    for key, value in ref_weights.items():
        assert torch.equal(weights[key], value), key  # bit-equal to the uninterrupted run

    # the original .hydra files stay; the resumed job's overrides are kept beside them
    assert "trainer.max_epochs=3" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    resumed = list((run_dir / ".hydra").glob("resume_*/overrides.yaml"))
    assert len(resumed) == 1 and "resume=true" in resumed[0].read_text()
    # both processes logged to the same W&B run (offline: two files of one run id)
    run_id = (run_dir / "wandb" / "audiolab_run_id").read_text().strip()
    offline = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(f"-{run_id}") for name in offline), offline


def test_atomic_checkpoint_io_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    assert torch.load(target, weights_only=True)["step"] == 1

    real_save = torch.save

    def dies_halfway(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, target)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(target, weights_only=True)["step"] == 1  # the previous checkpoint, whole
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # no temporary left
    io.save_checkpoint({"step": 3}, target)
    assert torch.load(target, weights_only=True)["step"] == 3


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's state
    torch.save({"rng": _rng_tensors()}, tmp_path / "rng.pt")
    expected = (torch.rand(4), np.random.standard_normal(3), random.random(), random.gauss(0, 1))
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    _set_rng_tensors(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (torch.rand(4), np.random.standard_normal(3), random.random(), random.gauss(0, 1))
    assert torch.equal(expected[0], again[0])
    np.testing.assert_array_equal(expected[1], again[1])
    assert expected[2:] == again[2:]


def _fake_run(tmp_path: Path, name: str = "2026-01-02_03-04-05-000001") -> Path:
    run = tmp_path / "train" / name
    cfg = compose_config("train", ["extras.print_config=false"], run)
    (run / "checkpoints").mkdir(parents=True)
    stored = OmegaConf.to_container(cfg, resolve=True)
    torch.save({"state_dict": {}, CONFIG_KEY: {"format": 1, "config": stored}}, run / "checkpoints" / "last.ckpt")
    return run


def test_resume_finds_the_newest_run_with_a_last_checkpoint(tmp_path):
    older = _fake_run(tmp_path, "2026-01-02_03-04-05-000001")
    newer = _fake_run(tmp_path, "2026-01-03_03-04-05-000001")
    (tmp_path / "train" / "2026-01-04_03-04-05-000001").mkdir()  # crashed before its first checkpoint
    assert find_run_dir(True, tmp_path / "train") == newer
    assert find_run_dir(str(older), tmp_path / "train") == older
    assert run_dir_resolver(str(tmp_path / "train"), "STAMP", None, "last") == str(newer)
    assert run_dir_resolver(str(tmp_path / "train"), "STAMP", None, None) == f"{tmp_path / 'train'}/STAMP"
    with pytest.raises(ResumeError, match="no run under .* has a checkpoints/last.ckpt"):
        find_run_dir(True, tmp_path / "elsewhere")
    with pytest.raises(ResumeError, match="does not exist"):
        find_run_dir(str(tmp_path / "train" / "2026-01-04_03-04-05-000001"), tmp_path / "train")


def test_resumed_config_is_the_stored_one_with_dotted_overrides_on_top(tmp_path):
    run = _fake_run(tmp_path)
    cfg = compose_config("train", [f"resume={run}", "trainer.max_epochs=9", "data.batch_size=3"], run)
    resumed = resumed_config(cfg)
    assert resumed.trainer.max_epochs == 9 and resumed.data.batch_size == 3
    assert resumed.ckpt_path == str(run / "checkpoints" / "last.ckpt")
    assert resumed.paths.output_dir == str(run)
    assert resumed.model._target_ == "audiolab.models.pitch.PitchModule"  # from the checkpoint
    with pytest.raises(ResumeError, match="`model=vae` picks another config group option"):
        resumed_config(compose_config("train", [f"resume={run}", "model=vae", "data=fsdd"], run))
    with pytest.raises(ResumeError, match="last.ckpt does not exist"):
        resumed_config(compose_config("train", ["resume=true"], tmp_path / "fresh"))


@pytest.mark.slow
def test_resume_without_any_run_is_a_one_line_error(tmp_path):
    proc = run_cli("train", "resume=true", f"paths.log_dir={tmp_path}", check=False)
    assert proc.returncode == 1
    assert "no run under" in proc.stderr and "has a checkpoints/last.ckpt" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("*.ckpt"))
