"""Bad input gives a clear error that names the problem and the fix."""

from __future__ import annotations

import hydra
import pytest
import torch
from helpers import compose_config, run_cli

from audiolab.utils.checkpoint import load_checkpoint
from audiolab.utils.errors import CheckpointError


def test_unknown_model_name(tmp_path):
    proc = run_cli("train", "model=crepo", f"paths.log_dir={tmp_path}", check=False)
    assert proc.returncode != 0
    assert "Could not find 'model/crepo'" in proc.stderr
    assert "Available options in 'model'" in proc.stderr and "crepe" in proc.stderr


def test_missing_checkpoint(tmp_path):
    proc = run_cli("eval", f"ckpt={tmp_path}/nope.ckpt", f"paths.log_dir={tmp_path}", check=False)
    assert proc.returncode == 1
    assert f"error: checkpoint not found: {tmp_path}/nope.ckpt" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "notes.ckpt"
    bogus.write_text("this is not a checkpoint\n")
    proc = run_cli("eval", f"ckpt={bogus}", f"paths.log_dir={tmp_path}", check=False)
    assert proc.returncode == 1
    assert f"error: {bogus} cannot be loaded as a checkpoint (the file is damaged or is not a PyTorch checkpoint)" in proc.stderr
    assert "weights_only" not in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") <= 2


def test_torch_file_from_elsewhere_is_refused(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="is not an audiolab checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_impossible_f0_range_from_config(tmp_path):
    cfg = compose_config("train", ["data.fmin=2500", "data.fmax=400"], tmp_path)
    with pytest.raises(Exception, match=r"impossible f0 range fmin=2500 Hz, fmax=400 Hz.*Fix data.fmin"):
        hydra.utils.instantiate(cfg.data)


def test_data_at_the_wrong_rate_is_refused(tmp_path):
    from audiolab.tasks.train import train

    cfg = compose_config("train", ["debug=fdr", "data.sample_rate=8000", "data.fmax=1000"], tmp_path)
    with pytest.raises(ValueError, match="expects 16000 Hz audio but the data is at 8000 Hz"):
        train(cfg)


def test_console_scripts_compose_the_same_configs():
    import subprocess
    import sys
    from pathlib import Path

    bindir = Path(sys.executable).parent
    for name in ("audiolab-train", "audiolab-eval"):
        if not (bindir / name).exists():
            pytest.skip(f"{name} is not installed beside {sys.executable} (pip install -e . installs it)")
    out = subprocess.run(
        [str(bindir / "audiolab-train"), "--cfg", "job", "model.net.capacity=small"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "audiolab.models.pitch.PitchModule" in out.stdout and "capacity: small" in out.stdout
    out = subprocess.run(
        [str(bindir / "audiolab-eval"), "ckpt=/nonexistent/x.ckpt"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1 and "error: checkpoint not found: /nonexistent/x.ckpt" in out.stderr


def test_eval_names_both_tasks_when_data_and_model_disagree(tmp_path):
    """A separation checkpoint with pitch data: refused before anything is built, naming both."""
    from omegaconf import OmegaConf

    from audiolab.utils.checkpoint import CONFIG_KEY

    stored = compose_config("train", ["data=musdb_synth", "model=tfc_tdf"], tmp_path / "run")
    ckpt = tmp_path / "separation.ckpt"
    torch.save({"state_dict": {}, CONFIG_KEY: {"format": 1, "config": OmegaConf.to_container(stored, resolve=True)}}, ckpt)
    proc = run_cli("eval", f"ckpt={ckpt}", "data=synth_pitch", f"paths.log_dir={tmp_path}", check=False)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert "holds a separation model (SeparationModule) but the data is for pitch (SynthPitchDataModule)" in errors[0]
    assert "sample_rate" not in errors[0]


def test_train_names_both_tasks_when_data_and_model_disagree(tmp_path):
    """data=musdb_render alone keeps the default pitch model: one line saying so, before
    any data is written."""
    proc = run_cli("train", "data=musdb_synth", f"paths.log_dir={tmp_path}", f"paths.data_dir={tmp_path}/data", check=False)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "the model is a pitch model (PitchModule) but the data is for separation (MusdbDataModule)" in errors[0]
    assert not (tmp_path / "data").exists()


def test_a_data_config_error_raised_while_building_is_one_line(tmp_path):
    """A DataModule refusing its options inside Hydra's instantiate: the audiolab message,
    not Hydra's wrapper and traceback."""
    proc = run_cli(
        "train", "experiment=separation_render", "data.synthetic.soundfont=/nonexistent.sf2",
        f"paths.log_dir={tmp_path}", f"paths.data_dir={tmp_path}/data", check=False,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Error in call to target" not in proc.stderr, proc.stderr[-2000:]
    assert "data=musdb_render cannot render" in errors[0]
