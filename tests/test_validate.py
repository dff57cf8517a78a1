"""Options set on the command line are checked before anything is built: one line naming
the key, the value and what it may be."""

from __future__ import annotations

import pytest
from helpers import compose_config, run_cli

from audiolab.utils.validate import ConfigValueError, validate_options

BAD = [
    ("train", "trainer.max_epochs=abc", "trainer.max_epochs='abc' is not valid: it must be an integer >= -1"),
    ("train", "trainer.max_epochs=2.5", "trainer.max_epochs=2.5 is not valid: it must be an integer >= -1"),
    ("train", "trainer.max_steps=-5", "trainer.max_steps=-5 is not valid: it must be an integer >= -1"),
    ("train", "trainer.limit_val_batches=1.5", "trainer.limit_val_batches=1.5 is not valid"),
    ("train", "trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0 is not valid: it must be an integer >= 1"),
    ("train", "trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1 is not valid: it must be a number >= 0"),
    ("train", "trainer.precision=17", "trainer.precision=17 is not valid: it must be one of"),
    ("train", "data.batch_size=-1", "data.batch_size=-1 is not valid: it must be an integer >= 1"),
    ("train", "data.batch_size=0", "data.batch_size=0 is not valid: it must be an integer >= 1"),
    ("train", "data.batch_size=true", "data.batch_size=True is not valid: it must be an integer >= 1"),
    ("train", "data.num_workers=-2", "data.num_workers=-2 is not valid: it must be an integer >= 0"),
    ("train", "model.optimizer.lr=0", "model.optimizer.lr=0 is not valid: it must be a number > 0"),
    ("train", "model.optimizer.lr=nan", "model.optimizer.lr=nan is not valid: it must be a number > 0"),
    ("train", "data=musdb_synth model=tfc_tdf data.chunk_seconds=0", "data.chunk_seconds=0 is not valid: it must be a number > 0"),
    ("train", "data=musdb_synth model=tfc_tdf data.sample_rate=-44100", "data.sample_rate=-44100 is not valid: it must be an integer >= 1"),
    ("train", "data=fsdd model=vae data.duration=-1", "data.duration=-1 is not valid: it must be a number > 0"),
]


@pytest.mark.parametrize(("config", "overrides", "message"), BAD, ids=[b[1] for b in BAD])
def test_bad_values_are_named(tmp_path, config, overrides, message):
    cfg = compose_config(config, overrides.split(), tmp_path)
    with pytest.raises(ConfigValueError) as info:
        validate_options(cfg)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["trainer.max_steps=40", "trainer.limit_train_batches=0.5", "trainer.limit_val_batches=3"],
        ["trainer.val_check_interval=0.25", "trainer.precision=bf16-mixed", "trainer.gradient_clip_val=1.0"],
        ["trainer.max_epochs=-1", "trainer.max_time=00:00:01:00", "seed=null"],
        ["data=musdb_synth", "model=tfc_tdf"],
        ["data=fsdd", "model=vae"],
    ],
)
def test_good_values_pass(tmp_path, overrides):
    validate_options(compose_config("train", overrides, tmp_path))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["debug=fdr", "trainer.max_epochs=abc"], "error: trainer.max_epochs='abc' is not valid"),
        (["data.batch_size=0"], "error: data.batch_size=0 is not valid: it must be an integer >= 1"),
    ],
)
def test_cli_says_one_line_before_building_anything(tmp_path, args, message):
    proc = run_cli("train", *args, f"paths.log_dir={tmp_path}", check=False)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and errors[0].startswith(message), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("*.ckpt"))
