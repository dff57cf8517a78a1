"""Checkpoints written before classes moved still load (tests/data/legacy/README.md says
how they were made): their stored ``_target_`` paths resolve, their stored arguments are
accepted, their stored weight names and shapes fit, and the rebuilt module runs.

Each checkpoint is written here from its stored config and the names, shapes and dtypes of
its weights (``tests/data/legacy/<task>.yaml``), with seeded values."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from audiolab.utils.checkpoint import CONFIG_KEY, load_module

LEGACY = Path(__file__).parent / "data" / "legacy"


def write_legacy_checkpoint(task: str, folder: Path) -> Path:
    doc = yaml.safe_load((LEGACY / f"{task}.yaml").read_text())
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, spec in doc["state_dict"].items():
        dtype = getattr(torch, spec["dtype"])
        values = torch.rand(spec["shape"], generator=generator) * 0.1 + 0.05  # positive: running variances
        state[name] = values.to(dtype) if dtype.is_floating_point else torch.ones(spec["shape"], dtype=dtype)
    path = folder / f"{task}.ckpt"
    torch.save({"state_dict": state, CONFIG_KEY: {"format": 1, "config": doc["config"]}, "epoch": 0}, path)
    return path


@pytest.mark.parametrize("task", ["pitch", "vae", "separation"])
def test_legacy_checkpoint_loads_and_runs(task, tmp_path):
    ckpt = write_legacy_checkpoint(task, tmp_path)
    module, run = load_module(ckpt)
    assert run.model._target_.startswith("audiolab.models.")
    stored = torch.load(ckpt, weights_only=True)["state_dict"]
    for name, value in module.state_dict().items():  # the weights are the stored ones
        if name in stored:
            assert torch.equal(value, stored[name]), name
    with torch.no_grad():
        if task == "pitch":
            out = module.net(torch.randn(3, 1024))
            assert out.shape == (3, 360) and torch.isfinite(out).all()
        elif task == "vae":
            shape = tuple(run.model.net.input_shape)
            x = torch.rand(2, *shape)
            recon = module.net(x, torch.tensor([1, 2]))[0]
            assert recon.shape == x.shape and torch.isfinite(recon).all()
        else:
            mixture = torch.randn(1, 2, 44100)
            out = module.separate(mixture)
            assert out.shape[-1] == mixture.shape[-1] and torch.isfinite(out).all()
