"""Every option of every config group composes; every data/model pair meant to work
instantiates and runs a forward pass."""

from __future__ import annotations

import hydra
import pytest
import torch
from helpers import CONFIG_DIR, compose_config, require_shared
from omegaconf import OmegaConf

GROUPS = ["data", "model", "trainer", "logger", "callbacks", "paths", "extras", "debug", "experiment", "hparams_search"]

# (data, model) pairs that are meant to train together. Every data and model option must
# appear in at least one pair (checked below), so a new config cannot skip this test.
PAIRS = [("synth_pitch", "crepe")]
# DataModules written ahead of the model that will use them (shared by later tasks):
# each must still instantiate from its config and give a batch.
STANDALONE_DATA = {"fsdd": ("fsdd",)}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_train_config_composes(group, option, tmp_path):
    cfg = compose_config("train", [f"{group}={option}"], tmp_path)
    assert cfg.model._target_ and cfg.data._target_ and cfg.trainer._target_
    # every interpolation resolves (no missing keys, no typos)
    OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("data", options("data"))
def test_eval_config_composes(data, tmp_path):
    cfg = compose_config("eval", ["ckpt=some.ckpt", f"data={data}"], tmp_path)
    assert cfg.ckpt == "some.ckpt"
    assert cfg.data._target_
    OmegaConf.to_container(cfg, resolve=True)


def test_every_option_is_in_a_pair():
    assert {d for d, _ in PAIRS} | set(STANDALONE_DATA) == set(options("data"))
    assert {m for _, m in PAIRS} == set(options("model"))


@pytest.mark.parametrize("data,model", PAIRS)
def test_pair_instantiates_and_runs(data, model, tmp_path):
    cfg = compose_config("train", [f"data={data}", f"model={model}"], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = hydra.utils.instantiate(cfg.model)
    datamodule.setup("fit")
    batch = next(iter(datamodule.val_dataloader()))
    module.eval()
    with torch.no_grad():
        out = module(batch["frames"][:1, :4])
    assert out.shape[:2] == (1, 4)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("data", sorted(STANDALONE_DATA))
def test_standalone_data_instantiates(data, tmp_path):
    root = require_shared(*STANDALONE_DATA[data])
    cfg = compose_config("train", [f"data={data}", f"data.root={root}", f"paths.data_dir={tmp_path}"], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.val_dataloader()))
    assert all(torch.isfinite(v.float()).all() for v in batch.values())
