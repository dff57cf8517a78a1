"""Checkpoints and configs never run code they should not: every ``_target_`` of a stored
config is checked against an explicit allowlist before anything is instantiated, at every
entry point that loads checkpoints. Each crafted checkpoint tries to damage a sentinel
file; the sentinel must stay intact and the entry point must refuse with one line."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from helpers import CONFIG_DIR, compose_config, run_cli
from omegaconf import OmegaConf

from audiolab.utils.checkpoint import CONFIG_KEY, load_checkpoint, load_module
from audiolab.utils.errors import CheckpointError
from audiolab.utils.targets import ALLOWED_TARGETS, check_targets, iter_targets

SENTINEL_TEXT = "precious results\n"


def payloads(sentinel: Path) -> dict[str, tuple[str, object]]:
    """``name -> (where in the config, node)``: each node, if instantiated, damages ``sentinel``."""
    s = str(sentinel)
    return {
        "builtins.open": ("model.loss", {"_target_": "builtins.open", "_args_": [s, "w"]}),
        "os.system": ("model.net", {"_target_": "os.system", "_args_": [f"rm -f {s}"]}),
        "subprocess.run": ("data", {"_target_": "subprocess.run", "_args_": [["rm", "-f", s]]}),
        "builtins.eval": ("model.scheduler", {"_target_": "builtins.eval", "_args_": [f"open({s!r}, 'w')"]}),
        # nested inside a list of an otherwise allowed class
        "nested_list": (
            "model.net.extra",
            [{"ok": 1}, {"inner": [{"_target_": "pathlib.Path.unlink", "_args_": [s]}]}],
        ),
        # a partial, called later (e.g. in configure_optimizers)
        "partial": ("model.optimizer", {"_target_": "os.remove", "_partial_": True, "path": s}),
        # an audiolab function that writes files is no safer than builtins.open
        "audiolab_writer": (
            "model.loss",
            {"_target_": "audiolab.utils.atomic.atomic_write", "_args_": [s]},
        ),
    }


def _set(config: dict, where: str, node: object) -> None:
    keys = where.split(".")
    for key in keys[:-1]:
        config = config[key]
    config[keys[-1]] = node


@pytest.fixture(scope="module")
def pitch_config(tmp_path_factory) -> dict:
    """A real stored config (the default pitch job), as train.py would store it."""
    out = tmp_path_factory.mktemp("stored")
    cfg = compose_config("train", ["extras.print_config=false"], out)
    return OmegaConf.to_container(cfg, resolve=True)


def crafted(tmp_path: Path, base: dict, payload: str) -> tuple[Path, Path]:
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text(SENTINEL_TEXT)
    config = copy.deepcopy(base)
    where, node = payloads(sentinel)[payload]
    _set(config, where, node)
    ckpt = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": {}, CONFIG_KEY: {"format": 1, "config": config}, "epoch": 0}, ckpt)
    return ckpt, sentinel


PAYLOADS = list(payloads(Path("x")))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_python_api_refuses_crafted_checkpoints(tmp_path, pitch_config, payload):
    from audiolab.pitch.inference import load_model

    ckpt, sentinel = crafted(tmp_path, pitch_config, payload)
    for load in (load_checkpoint, load_module, load_model):
        with pytest.raises(CheckpointError, match=r"not a class audiolab builds from a stored config"):
            load(ckpt)
    assert sentinel.read_text() == SENTINEL_TEXT


@pytest.mark.parametrize("payload", PAYLOADS)
def test_task_functions_refuse_crafted_checkpoints(tmp_path, pitch_config, payload):
    """eval, predict, separate, generate and resume, in-process, every payload."""
    from audiolab.tasks.evaluate import evaluate
    from audiolab.tasks.generate import generate
    from audiolab.tasks.predict import predict_files
    from audiolab.tasks.separate import separate_files
    from audiolab.tasks.train import train

    ckpt, sentinel = crafted(tmp_path, pitch_config, payload)
    wav = tmp_path / "in" / "tone.wav"
    wav.parent.mkdir()
    sf.write(wav, np.zeros(16000, dtype=np.float32), 16000)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt, run_dir / "checkpoints" / "last.ckpt")
    calls = {
        "eval": (evaluate, "eval", [f"ckpt={ckpt}"]),
        "predict": (predict_files, "predict", [f"ckpt={ckpt}", f"input={wav}", f"output={tmp_path / 'p'}"]),
        "separate": (separate_files, "separate", [f"ckpt={ckpt}", f"input={wav}", f"output={tmp_path / 's'}"]),
        "generate": (generate, "generate", [f"ckpt={ckpt}"]),
    }
    for name, (task, config_name, overrides) in calls.items():
        cfg = compose_config(config_name, overrides, tmp_path / f"out_{name}")
        with pytest.raises(CheckpointError, match=r"not a class audiolab builds"):
            task(cfg)
    cfg = compose_config("train", [f"resume={run_dir}"], run_dir)  # the resumed run's own folder
    with pytest.raises(CheckpointError, match=r"not a class audiolab builds"):
        train(cfg)
    assert sentinel.read_text() == SENTINEL_TEXT


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["eval", "predict", "separate", "generate", "resume"])
def test_clis_refuse_crafted_checkpoints_with_one_line(tmp_path, pitch_config, entry):
    ckpt, sentinel = crafted(tmp_path, pitch_config, "builtins.open")
    wav = tmp_path / "tone.wav"
    sf.write(wav, np.zeros(16000, dtype=np.float32), 16000)
    out = tmp_path / "out"
    args = {
        "eval": ("eval", f"ckpt={ckpt}"),
        "predict": ("predict", f"ckpt={ckpt}", f"input={wav}", f"output={out}"),
        "separate": ("separate", f"ckpt={ckpt}", f"input={wav}", f"output={out}"),
        "generate": ("generate", f"ckpt={ckpt}"),
    }
    if entry == "resume":
        run_dir = tmp_path / "run"
        (run_dir / "checkpoints").mkdir(parents=True)
        shutil.copy(ckpt, run_dir / "checkpoints" / "last.ckpt")
        script, *rest = ("train", f"resume={run_dir}")
        ckpt = run_dir / "checkpoints" / "last.ckpt"
    else:
        script, *rest = args[entry]
    proc = run_cli(script, *rest, f"paths.log_dir={tmp_path / 'logs'}", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(errors) == 1 and "model.loss._target_ = 'builtins.open'" in errors[0], proc.stderr[-2000:]
    assert str(ckpt) in errors[0]
    assert "Traceback" not in proc.stderr
    assert sentinel.read_text() == SENTINEL_TEXT


def test_allowed_configs_pass_and_unknown_targets_are_named():
    check_targets({"model": {"_target_": "audiolab.models.pitch.PitchModule", "net": [{"_target_": "torch.optim.Adam"}]}}, "x")
    with pytest.raises(CheckpointError, match=r"x: .* model\.net\[1\]\._target_ = 'os\.system'"):
        check_targets({"model": {"net": [{}, {"_target_": "os.system"}]}}, "x")
    with pytest.raises(CheckpointError, match="None"):
        check_targets({"_target_": None}, "x")  # not a string: refused, not skipped


def _config_targets(node):
    """``_target_`` values of a config file outside its ``hydra:`` node (Hydra's own
    sweepers and callbacks are never stored in a checkpoint)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "hydra":
                continue
            if key == "_target_":
                yield value
            else:
                yield from _config_targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _config_targets(value)


def test_every_target_in_conf_is_allowed():
    found = {}
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        if path.relative_to(CONFIG_DIR).parts[0] == "hydra":  # Hydra's own config group
            continue
        for target in _config_targets(yaml.safe_load(path.read_text()) or {}):
            found.setdefault(target, path.relative_to(CONFIG_DIR))
    assert found, "no _target_ found in conf/"
    missing = {t: str(p) for t, p in found.items() if t not in ALLOWED_TARGETS}
    assert not missing, f"add these to audiolab.utils.targets.ALLOWED_TARGETS: {missing}"


def test_every_allowed_target_exists():
    import hydra

    for target in sorted(ALLOWED_TARGETS):
        assert callable(hydra.utils.get_object(target)), target


def test_iter_targets_walks_lists_and_mappings():
    node = {"a": [{"_target_": "x"}, {"b": {"_target_": "y"}}], "_target_": "z"}
    assert sorted(iter_targets(node)) == [("_target_", "z"), ("a[0]._target_", "x"), ("a[1].b._target_", "y")]


def test_unloadable_files_never_suggest_an_unsafe_load(tmp_path):
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "hook": print}, pickled)
    for path, reason in ((noise, "damaged or is not a PyTorch checkpoint"), (pickled, r"Python object \(print\)")):
        with pytest.raises(CheckpointError, match=reason) as info:
            load_checkpoint(path)
        assert "weights_only" not in str(info.value)
