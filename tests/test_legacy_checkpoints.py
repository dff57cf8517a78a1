"""Checkpoints written before classes moved still load (tests/data/legacy/README.md says
how they were made): their stored ``_target_`` paths resolve, their stored arguments are
accepted, and the rebuilt module runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from audiolab.utils.checkpoint import load_module

LEGACY = Path(__file__).parent / "data" / "legacy"


@pytest.mark.parametrize("task", ["pitch", "vae", "separation"])
def test_legacy_checkpoint_loads_and_runs(task):
    module, run = load_module(LEGACY / f"{task}.ckpt")
    assert run.model._target_.startswith("audiolab.models.")
    stored = torch.load(LEGACY / f"{task}.ckpt", weights_only=True)["state_dict"]
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
