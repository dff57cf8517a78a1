"""Every option of every config group composes; every data/model pair meant to work
instantiates and runs a forward pass."""

from __future__ import annotations

import pytest
import torch
from helpers import CONFIG_DIR, compose_config, require_shared
from omegaconf import OmegaConf

GROUPS = [
    "data",
    "model",
    "trainer",
    "logger",
    "callbacks",
    "paths",
    "extras",
    "debug",
    "experiment",
    "hparams_search",
    "cluster",
]

# (data, model) pairs that are meant to train together. Every data and model option must
# appear in at least one pair (checked below), so a new config cannot skip this test.
PAIRS = [
    ("synth_pitch", "crepe"),
    ("pitch_fsdd", "crepe"),
    ("pitch_mix", "crepe"),
    ("synth_pitch", "harmonic_pitch"),
    ("pitch_speech", "harmonic_pitch"),
    ("fsdd", "vae_baseline"),
    ("fsdd", "vae"),
    ("fsdd", "digit_classifier"),
    ("musdb_synth", "tfc_tdf"),
    ("musdb_synth", "tfc_tdf_ismir2020"),
    ("musdb_synth", "tfc_tdf_keras"),
    ("musdb_synth", "spleeter"),
    ("musdb_synth", "spleeter_4stems"),
    ("musdb", "tfc_tdf"),
    ("musdb_render", "tfc_tdf"),
    ("slakh", "tfc_tdf"),
]
# Model options no dataset here can train (tested for a forward pass instead): the data
# config they compose with, and why they cannot train on it.
UNPAIRED_MODELS = {"spleeter_5stems": ("musdb_synth", "MUSDB18 has no piano stem")}
# Data options that only evaluate (eval.py data=...; tested in test_pitch_eval.py), and why.
EVAL_ONLY_DATA = {"mdb_stem_synth": "real-f0 evaluation set, no training split"}
# Overrides that make one fast_dev_run step of each data option cheap; a tuple names a
# folder of ../shared/data that becomes data.root, a dict {key: tuple} one that becomes key.
SMALL_DATA = {
    "synth_pitch": [
        "data.batch_size=8",
        "data.val_clips=2",
        "data.test_clips=2",
        "data.eval_batch_size=2",
    ],
    "fsdd": ["data.batch_size=4", "data.eval_batch_size=4", ("fsdd",)],
    # 2 s chunks, one per track, 2 s validation excerpts, a small synthetic set
    "musdb_synth": [
        "data.chunk_seconds=2",
        "data.samples_per_track=1",
        "data.batch_size=2",
        "data.valid_excerpt_seconds=2",
        "data.synthetic.n_train=2",
        "data.synthetic.n_valid=1",
        "data.synthetic.n_test=1",
        "data.synthetic.duration=4",
    ],
    # the real 7-s preview track (stems through ffmpeg), which is in train/ only
    "musdb": [
        "data.chunk_seconds=2",
        "data.samples_per_track=1",
        "data.batch_size=1",
        "data.valid_excerpt_seconds=2",
        "data.splits.valid.split=null",
        "data.splits.test.subsets=train",
        ("musdb18-sample",),
    ],
    # the real 2-s BabySlakh sample track (16 kHz mono), one track in every split
    "slakh": [
        "data.chunk_seconds=2",
        "data.samples_per_track=1",
        "data.batch_size=1",
        "data.valid_excerpt_seconds=2",
        "data.pool_split=null",
        ("slakh-sample", "babyslakh_16k"),
    ],
}
# like musdb_synth: a tiny rendered set (fluidsynth; a few seconds to render)
SMALL_DATA["musdb_render"] = SMALL_DATA["musdb_synth"]
# pitch from real audio: 50 FSDD files (one speaker, one digit) labelled by CREPE tiny, and
# the vocals of a small synthetic MUSDB (the one musdb_synth above writes)
PITCH_FSDD = [
    "data.teacher.model=tiny",
    "data.sources.fsdd.data.speakers=[theo]",
    "data.sources.fsdd.data.digits=[0]",
    "data.batch_size=8",
    "data.eval_batch_size=2",
    "data.progress=false",
    {"data.sources.fsdd.data.root": ("fsdd",)},
]
SMALL_DATA["pitch_fsdd"] = PITCH_FSDD
SMALL_DATA["pitch_mix"] = [
    *PITCH_FSDD,
    "data.sources.synth.data.val_clips=2",
    "data.sources.synth.data.test_clips=2",
    "data.sources.musdb_vocals.data.root=${paths.data_dir}/musdb_synth",
    "data.sources.musdb_vocals.data.is_wav=true",
    "data.sources.musdb_vocals.data.synthetic={n_train: 2, n_valid: 1, n_test: 1, duration: 4}",
]

# the speech-first data of the shipped fast model: a few tiny glottal utterances and the
# same 50 FSDD files resynthesised once
SMALL_DATA["pitch_speech"] = [
    "data.teacher.model=tiny",
    "data.sources.resynth.data.speakers=[theo]",
    "data.sources.resynth.data.digits=[0]",
    "data.sources.resynth.variants=1",
    "data.sources.glottal.clips={train: 3, val: 1, test: 1}",
    "data.sources.glottal.seconds=0.5",
    "data.sources.synth.data.val_clips=2",
    "data.sources.synth.data.test_clips=2",
    "data.batch_size=8",
    "data.eval_batch_size=2",
    "data.progress=false",
    {"data.sources.resynth.data.root": ("fsdd",)},
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_train_config_composes(group, option, tmp_path):
    # a model reads its data's targets/rate: compose it with the data it is paired with
    unpaired = [UNPAIRED_MODELS[option][0]] if option in UNPAIRED_MODELS else []
    paired = [f"data={d}" for d, m in PAIRS if m == option][:1] + [f"data={d}" for d in unpaired]
    paired = paired[:1] if group == "model" else []
    cfg = compose_config("train", [*paired, f"{group}={option}"], tmp_path)
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
    assert {d for d, _ in PAIRS} | set(EVAL_ONLY_DATA) == set(options("data"))
    assert {m for _, m in PAIRS} | set(UNPAIRED_MODELS) == set(options("model"))


@pytest.mark.parametrize("model", sorted(UNPAIRED_MODELS))
def test_unpaired_model_runs_forward(model, tmp_path):
    import hydra

    cfg = compose_config("train", [f"data={UNPAIRED_MODELS[model][0]}", f"model={model}"], tmp_path)
    module = hydra.utils.instantiate(cfg.model).eval()
    mixture = torch.randn(1, cfg.data.audio_channels, cfg.data.sample_rate)
    with torch.no_grad():
        out = module(mixture)
    assert out.shape == (1, len(cfg.data.targets), cfg.data.audio_channels, cfg.data.sample_rate)


def data_overrides(data: str, cache_dir) -> list[str]:
    out = [f"paths.data_dir={cache_dir}"]
    for item in SMALL_DATA[data]:
        if isinstance(item, dict):
            out += [f"{key}={require_shared(*parts)}" for key, parts in item.items()]
        else:
            out.append(f"data.root={require_shared(*item)}" if isinstance(item, tuple) else item)
    return out


@pytest.mark.parametrize("data,model", PAIRS)
def test_pair_trains_one_step(data, model, tmp_path, shared_cache):
    """Instantiate the pair from the real configs and run a fast_dev_run (one train,
    validation and test batch) through train()."""
    from audiolab.tasks.train import train

    overrides = [f"data={data}", f"model={model}", "debug=fdr", "extras.print_config=false"]
    cfg = compose_config("train", overrides + data_overrides(data, shared_cache), tmp_path)
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 1
    monitor = type(objects["model"]).monitor
    assert monitor.replace("val/", "test/") in metrics, sorted(metrics)
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k != "best_ckpt")
