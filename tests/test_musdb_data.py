"""The MUSDB18 DataModule: shapes, exact mixtures, determinism, augmentations, silence
skipping, fixed validation excerpts, whole tracks, the real stem preview, clear errors.

Everything but the real preview runs on a tiny MUSDB18-HQ-layout fixture written into
tmp_path (stereo 16-bit wav per source, a setup.yaml naming its own validation track)."""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from helpers import compose_config, require_shared
from hydra.utils import instantiate

from audiolab.data.musdb import (
    SOURCES,
    Augment,
    MusdbDataModule,
    MusdbError,
    MusdbNotFoundError,
    apply_gain,
    default_setup,
    excerpt_starts,
    fit_length,
    invert_polarity,
    pitch_shift,
    read_source,
    reverse_time,
    rms_db,
    speed_ratio,
    swap_channels,
)
from audiolab.data.sampling import EpochSampler

SR = 44100
NO_AUG = {"random_mix": 0.0, "gain": 0.0, "channel_swap": 0.0, "polarity": 0.0}


def write_track(folder, seconds, seed, rate=SR, channels=2, silent_vocals_half=False, mixture_scale=1.0):
    """One track folder: a tone plus noise per source (unique in every chunk), and
    mixture.wav = mixture_scale x the sum of the sources."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    t = np.arange(n) / rate
    folder.mkdir(parents=True)
    total = 0
    for k, name in enumerate(SOURCES):
        tone = 0.1 * np.sin(2 * np.pi * (110 * (k + 1) + 7 * seed) * t)[:, None]
        audio = tone + 0.03 * rng.standard_normal((n, channels))
        if name == "vocals" and silent_vocals_half:
            audio[: n // 2] = 0.0
        sf.write(folder / f"{name}.wav", audio, rate, subtype="PCM_16")
        total = total + audio
    sf.write(folder / "mixture.wav", mixture_scale * total, rate, subtype="PCM_16")


def make_musdb(root, n_train=3, n_valid=1, n_test=1, seconds=3.0, **track_kwargs):
    """A MUSDB18-HQ layout: train/ (training + validation tracks), test/, setup.yaml."""
    names = {"train": [f"Train {i}" for i in range(n_train)], "valid": [f"Valid {i}" for i in range(n_valid)]}
    seed = 0
    for name in names["train"] + names["valid"]:
        write_track(root / "train" / name, seconds, seed, **track_kwargs)
        seed += 1
    for i in range(n_test):
        write_track(root / "test" / f"Test {i}", seconds, seed, **track_kwargs)
        seed += 1
    setup = copy.deepcopy(default_setup())
    setup["validation_tracks"] = names["valid"]
    (root / "setup.yaml").write_text(yaml.safe_dump(setup))
    return root


@pytest.fixture(scope="module")
def musdb_root(tmp_path_factory):
    return make_musdb(tmp_path_factory.mktemp("musdb"))


def datamodule(root, **kwargs):
    options = dict(root=str(root), is_wav=True, chunk_seconds=1.0, samples_per_track=4, batch_size=4,
                   valid_excerpt_seconds=1.0, valid_excerpts_per_track=2, eval_batch_size=2)
    options.update(kwargs)
    return MusdbDataModule(**options)


def first_batches(dm, n=2, epoch=0):
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == n:
            break
    return batches


# -- training examples ------------------------------------------------------------
@pytest.mark.parametrize("targets", [["vocals", "accompaniment"], ["drums", "bass", "other", "vocals"]])
def test_training_batches_have_shapes_and_targets_sum_to_mixture(musdb_root, targets):
    dm = datamodule(musdb_root, targets=targets, augment={"pitch_shift": 0.5, "mixup": 0.5, "time_reverse": 0.5})
    dm.setup("fit")
    assert dm.targets == targets and dm.sample_rate == SR and dm.audio_channels == 2
    assert len(dm.train_dataset()) == 3 * 4  # 3 training tracks x samples_per_track
    batch = first_batches(dm, 1)[0]
    assert set(batch) == {"mixture", "targets"}
    assert batch["mixture"].shape == (4, 2, SR) and batch["mixture"].dtype == torch.float32
    assert batch["targets"].shape == (4, len(targets), 2, SR) and batch["targets"].dtype == torch.float32
    torch.testing.assert_close(batch["targets"].sum(1), batch["mixture"], atol=1e-5, rtol=0)
    assert batch["mixture"].abs().amax() > 0.05


def test_subset_of_targets_keeps_order(musdb_root):
    dm = datamodule(musdb_root, targets=["bass", "drums"], augment=NO_AUG, silence_threshold_db=None)
    ds = dm.train_dataset()
    item = ds[5]
    sources = ds.read(ds.draw(np.random.default_rng([0, 0, 5]), ds.anchor(5)))
    np.testing.assert_allclose(item["targets"][0].numpy(), sources["bass"])
    np.testing.assert_allclose(item["targets"][1].numpy(), sources["drums"])


def test_examples_depend_on_seed_epoch_and_index_only(musdb_root):
    common = dict(augment={"pitch_shift": 0.3, "mixup": 0.3, "time_reverse": 0.3})
    a = first_batches(datamodule(musdb_root, num_workers=0, **common))
    b = first_batches(datamodule(musdb_root, num_workers=2, **common))
    c = first_batches(datamodule(musdb_root, num_workers=0, **common))
    for x, y, z in zip(a, b, c, strict=True):
        assert torch.equal(x["mixture"], y["mixture"]) and torch.equal(x["targets"], y["targets"])
        assert torch.equal(x["mixture"], z["mixture"])
    later = first_batches(datamodule(musdb_root, **common), epoch=1)
    assert not torch.allclose(a[0]["mixture"], later[0]["mixture"])
    other_seed = first_batches(datamodule(musdb_root, seed=1, **common))
    assert not torch.allclose(a[0]["mixture"], other_seed[0]["mixture"])


def test_every_track_is_an_anchor_samples_per_track_times_per_epoch(musdb_root):
    ds = datamodule(musdb_root, samples_per_track=5).train_dataset()
    n = len(ds)
    for epoch in (0, 3):
        anchors = [ds.anchor(i) for i in range(epoch * n, (epoch + 1) * n)]
        assert np.bincount(anchors).tolist() == [5, 5, 5]
    assert [ds.anchor(i) for i in range(n)] != [ds.anchor(i) for i in range(3 * n, 4 * n)]


def test_distributed_ranks_get_disjoint_indices():
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    ranks = [DistributedSamplerWrapper(EpochSampler(12), num_replicas=2, rank=r, shuffle=False) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(2)
    shares = [list(s) for s in ranks]
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == list(range(24, 36))


def test_chunks_are_read_from_the_drawn_positions(musdb_root):
    """Without random mixing every source comes from the example's track at one position,
    bit-exact with a direct read of the files; with random_mix=1 they come from
    different tracks; mixup adds a second chunk of the same source."""
    dm = datamodule(musdb_root, augment=NO_AUG, silence_threshold_db=None)
    ds = dm.train_dataset()
    for index in range(6):
        plan = ds.draw(np.random.default_rng([0, 0, index]), ds.anchor(index))
        assert {(d.track, d.start) for d in plan.values()} == {(ds.anchor(index), plan["vocals"].start)}
        item = ds[index]
        ref = ds.tracks[plan["vocals"].track]
        start = plan["vocals"].start
        direct = sf.read(ref.files["vocals"], start=start, frames=SR, dtype="float32")[0].T
        np.testing.assert_array_equal(item["targets"][0].numpy(), direct)
        mix = sum(sf.read(ref.files[s], start=start, frames=SR, dtype="float32")[0].T for s in SOURCES)
        np.testing.assert_allclose(item["mixture"].numpy(), mix, atol=1e-6)

    mixed = datamodule(musdb_root, augment={**NO_AUG, "random_mix": 1.0}).train_dataset()
    tracks = [{d.track for d in mixed.draw(np.random.default_rng([0, 0, i]), 0).values()} for i in range(8)]
    assert max(len(t) for t in tracks) > 1

    mixup = datamodule(musdb_root, augment={**NO_AUG, "mixup": 1.0}, silence_threshold_db=None).train_dataset()
    plan = mixup.draw(np.random.default_rng([0, 0, 0]), mixup.anchor(0))
    assert all(d.mixup is not None for d in plan.values())
    d = plan["bass"]
    expected = read_source(mixup.tracks[d.track], "bass", d.start, SR, SR) + read_source(
        mixup.tracks[d.mixup[0]], "bass", d.mixup[1], SR, SR
    )
    np.testing.assert_allclose(mixup.read(plan)["bass"], expected)


def test_silent_target_chunks_are_redrawn(tmp_path):
    """Vocals are silent in the first half of every track: without skipping some chunks
    have silent vocals, with it none has."""
    root = make_musdb(tmp_path / "musdb", n_train=2, seconds=4.0, silent_vocals_half=True)
    common = dict(targets=["vocals", "accompaniment"], augment=NO_AUG, samples_per_track=12)
    plain = datamodule(root, silence_threshold_db=None, **common).train_dataset()
    skipping = datamodule(root, silence_threshold_db=-40.0, **common).train_dataset()
    plain_levels = [rms_db(plain[i]["targets"][0].numpy()) for i in range(len(plain))]
    skip_levels = [rms_db(skipping[i]["targets"][0].numpy()) for i in range(len(skipping))]
    assert sum(level < -40 for level in plain_levels) >= 2, plain_levels
    assert min(skip_levels) > -40, skip_levels


# -- augmentations ------------------------------------------------------------------
def test_augmentation_functions_do_what_they_say():
    x = np.array([[1.0, 2.0, 3.0], [-4.0, 5.0, 6.0]], dtype=np.float32)
    np.testing.assert_array_equal(invert_polarity(x), -x)
    np.testing.assert_array_equal(swap_channels(x), x[[1, 0]])
    np.testing.assert_array_equal(reverse_time(x), [[3.0, 2.0, 1.0], [6.0, 5.0, -4.0]])
    np.testing.assert_array_equal(apply_gain(x, 0.5), x / 2)
    assert apply_gain(x, 0.5).dtype == np.float32
    np.testing.assert_array_equal(fit_length(x, 2), x[:, :2])
    np.testing.assert_array_equal(fit_length(x, 5)[:, 3:], np.zeros((2, 2)))
    assert speed_ratio(12.0) == (200, 100) and speed_ratio(0.0) == (100, 100)
    assert abs(12 * np.log2(np.divide(*speed_ratio(1.0))) - 1.0) < 0.1


@pytest.mark.parametrize("semitones", [12.0, -12.0, 2.0])
def test_pitch_shift_moves_the_frequency(semitones):
    """A 441 Hz tone, read p/q times longer and resampled back, is at 441 x p/q Hz."""
    p, q = speed_ratio(semitones)
    n = SR // 2
    t = np.arange(n * p // q) / SR
    tone = np.stack([np.sin(2 * np.pi * 441 * t), np.cos(2 * np.pi * 441 * t)]).astype(np.float32)
    shifted = pitch_shift(tone, semitones)
    assert abs(shifted.shape[-1] - n) <= 1
    spectrum = np.abs(np.fft.rfft(shifted[0, :n] * np.hanning(n)))
    peak = np.argmax(spectrum) * SR / n
    assert abs(peak - 441 * 2 ** (semitones / 12)) < 441 * 0.01, peak


def test_augment_switches_and_ranges():
    x = np.stack([np.linspace(-1, 1, 64), np.linspace(1, 0, 64)]).astype(np.float32)
    off = Augment.from_config({"random_mix": 0, "gain": 0, "channel_swap": 0, "polarity": 0})
    np.testing.assert_array_equal(off.apply(x, np.random.default_rng(0)), x)
    always = {"gain": 0.0, "channel_swap": 0.0, "polarity": 0.0, "time_reverse": 0.0}
    np.testing.assert_array_equal(Augment.from_config({**always, "polarity": 1.0}).apply(x, np.random.default_rng(1)), -x)
    np.testing.assert_array_equal(Augment.from_config({**always, "channel_swap": 1.0}).apply(x, np.random.default_rng(1)), x[::-1])
    np.testing.assert_array_equal(Augment.from_config({**always, "time_reverse": 1.0}).apply(x, np.random.default_rng(1)), x[:, ::-1])
    gain_only = Augment.from_config({**always, "gain": 1.0})
    gains = np.array([gain_only.apply(x, np.random.default_rng(i))[0, 0] / x[0, 0] for i in range(400)])
    assert gains.min() >= 0.25 - 1e-6 and gains.max() <= 1.25 + 1e-6
    assert gains.min() < 0.35 and gains.max() > 1.15  # spread over the whole range
    half = Augment.from_config({**always, "polarity": 0.5})
    flips = sum(half.apply(x, np.random.default_rng(i))[0, 0] > 0 for i in range(400))
    assert 150 < flips < 250
    semis = [Augment(pitch_shift=1.0, pitch_semitones=2.0).draw_semitones(np.random.default_rng(i)) for i in range(200)]
    assert min(semis) >= -2 and max(semis) <= 2 and min(semis) < -1.5 and max(semis) > 1.5
    assert Augment().draw_semitones(np.random.default_rng(0)) == 0.0  # off by default
    with pytest.raises(MusdbError, match="unknown option"):
        Augment.from_config({"pitchshift": 0.5})
    with pytest.raises(MusdbError, match="probability"):
        Augment.from_config({"polarity": 1.5})


# -- evaluation ---------------------------------------------------------------------
def test_validation_excerpts_are_fixed_and_exact(musdb_root):
    dm = datamodule(musdb_root, targets=["vocals", "accompaniment"])
    dm.setup("validate")
    val = dm.val_dataset()
    assert len(val) == 2  # one validation track, two excerpts
    assert val.items == [(0, s) for s in excerpt_starts(3 * SR, SR, 2)]
    assert excerpt_starts(3 * SR, SR, 1) == [SR]  # centred
    again = datamodule(musdb_root, targets=["vocals", "accompaniment"], seed=5)
    batch, batch2 = next(iter(dm.val_dataloader())), next(iter(again.val_dataloader()))
    assert batch["mixture"].shape == (2, 2, SR) and batch["targets"].shape == (2, 2, 2, SR)
    assert torch.equal(batch["mixture"], batch2["mixture"])
    torch.testing.assert_close(batch["targets"].sum(1), batch["mixture"], atol=1e-6, rtol=0)
    ref, (_, start) = val.tracks[0], val.items[1]
    vocals = sf.read(ref.files["vocals"], start=start, frames=SR, dtype="float32")[0].T
    np.testing.assert_array_equal(batch["targets"][1, 0].numpy(), vocals)


def test_full_tracks_use_the_real_mixture(tmp_path):
    root = make_musdb(tmp_path / "musdb", n_train=1, n_valid=1, n_test=0, seconds=2.0)
    write_track(root / "test" / "Test 0", 2.5, 9, mixture_scale=0.5)
    dm = datamodule(root, targets=["vocals", "accompaniment"])
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["name"] == ["Test 0"]
    n = round(2.5 * SR)
    assert batch["mixture"].shape == (1, 2, n) and batch["targets"].shape == (1, 2, 2, n)
    folder = root / "test" / "Test 0"
    mixture = sf.read(folder / "mixture.wav", dtype="float32")[0].T
    np.testing.assert_array_equal(batch["mixture"][0].numpy(), mixture)
    # the real mixture (scaled by 0.5 in this fixture), not the sum of the targets
    torch.testing.assert_close(batch["targets"][0].sum(0) * 0.5, batch["mixture"][0], atol=1e-3, rtol=0)
    accompaniment = sum(sf.read(folder / f"{s}.wav", dtype="float32")[0].T for s in ("drums", "bass", "other"))
    np.testing.assert_allclose(batch["targets"][0, 1].numpy(), accompaniment, atol=1e-6)
    valid = dm.full_tracks("valid")
    assert len(valid) == 1 and valid[0]["name"] == "Valid 0" and valid[0]["mixture"].shape == (2, 2 * SR)


def test_resampling_on_request(tmp_path):
    root = make_musdb(tmp_path / "musdb", n_train=2, n_valid=1, n_test=0, seconds=2.0)
    dm = datamodule(root, sample_rate=22050, targets=["vocals"])
    batch = first_batches(dm, 1)[0]
    assert batch["mixture"].shape == (4, 2, 22050) and batch["targets"].shape == (4, 1, 2, 22050)
    full = dm.full_tracks("valid")[0]
    assert full["mixture"].shape == (2, 2 * 22050)


# -- real data ---------------------------------------------------------------------
def test_real_stem_preview_loads_through_the_datamodule():
    root = require_shared("musdb18-sample")
    splits = {"valid": {"split": None}, "test": {"subsets": "train"}}
    dm = MusdbDataModule(root=str(root), is_wav=False, splits=splits, chunk_seconds=2.0, samples_per_track=2,
                         batch_size=2, valid_excerpt_seconds=2.0, augment={"random_mix": 0.0})
    dm.setup("fit")
    assert [r.name for r in dm.tracks("train")] == ["Music Delta - 80s Rock"]
    batch = first_batches(dm, 1)[0]
    assert batch["mixture"].shape == (2, 2, 2 * SR) and batch["targets"].shape == (2, 2, 2, 2 * SR)
    torch.testing.assert_close(batch["targets"].sum(1), batch["mixture"], atol=1e-5, rtol=0)
    assert batch["mixture"].abs().amax() > 0.05
    val = next(iter(dm.val_dataloader()))
    assert val["mixture"].shape == (1, 2, 2 * SR)
    full = next(iter(dm.test_dataloader()))
    assert full["name"] == ["Music Delta - 80s Rock"]
    assert full["mixture"].shape[:2] == (1, 2) and abs(full["mixture"].shape[-1] - 6.8 * SR) < 0.05 * SR
    # the AAC-coded real mixture is close to, not equal to, vocals + accompaniment
    residual = full["mixture"] - full["targets"].sum(1)
    snr = 10 * torch.log10(full["mixture"].pow(2).sum() / residual.pow(2).sum())
    assert snr > 15, snr

    official = MusdbDataModule(root=str(root))
    with pytest.raises(MusdbError, match=r"validation_tracks.*data\.splits\.valid\.split=null"):
        official.setup("validate")
    with pytest.raises(MusdbError, match=r"test does not exist.*data\.splits\.test\.subsets=train"):
        official.setup("test")


# -- errors -------------------------------------------------------------------------
def test_missing_root_is_one_clear_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(MusdbNotFoundError) as info:
        MusdbDataModule(root=str(missing)).setup("fit")
    text = str(info.value)
    for needle in (str(missing), "does not exist", "data.root=", "MUSDB_PATH", "musdbconvert", "data=musdb_synth"):
        assert needle in text, (needle, text)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(MusdbNotFoundError, match="holds no MUSDB tracks"):
        MusdbDataModule(root=str(tmp_path / "empty")).setup("fit")


def test_wrong_format_flag_is_named(musdb_root):
    with pytest.raises(MusdbNotFoundError, match="data.is_wav=true"):
        MusdbDataModule(root=str(musdb_root), is_wav=False).setup("fit")


def test_bad_targets_and_options_are_refused(musdb_root):
    with pytest.raises(MusdbError, match=r"unknown MUSDB target 'voice'.*accompaniment"):
        datamodule(musdb_root, targets=["vocals", "voice"])
    with pytest.raises(MusdbError, match="twice"):
        datamodule(musdb_root, targets=["vocals", "vocals"])
    with pytest.raises(MusdbError, match="non-empty"):
        datamodule(musdb_root, targets=[])
    with pytest.raises(MusdbError, match="subsets=train or split=null"):
        datamodule(musdb_root, splits={"test": {"subsets": "test", "split": "valid"}})


def test_chunk_longer_than_every_track(musdb_root):
    with pytest.raises(MusdbError, match=r"chunk_seconds=10.0 is longer than every training track.*3\.00 s"):
        datamodule(musdb_root, chunk_seconds=10.0).setup("fit")


def test_sample_rate_and_channel_mismatches_are_named(tmp_path):
    root = make_musdb(tmp_path / "a", n_train=1, n_valid=1, n_test=0, seconds=1.0)
    write_track(root / "train" / "Slow", 2.0, 7, rate=22050)
    with pytest.raises(MusdbError, match=r"Slow.*22050 Hz.*data.sample_rate"):
        datamodule(root, chunk_seconds=0.5).setup("fit")
    resampled = datamodule(root, chunk_seconds=0.5, sample_rate=16000)
    resampled.setup("fit")  # resampling requested: every rate is accepted
    assert {r.rate for r in resampled.tracks("train")} == {SR, 22050}

    mono = make_musdb(tmp_path / "b", n_train=1, n_valid=1, n_test=0, seconds=1.0, channels=1)
    with pytest.raises(MusdbError, match=r"1 channel\(s\) but data.audio_channels=2"):
        datamodule(mono, chunk_seconds=0.5).setup("fit")

    incomplete = make_musdb(tmp_path / "c", n_train=1, n_valid=1, n_test=0, seconds=1.0)
    (incomplete / "train" / "Train 0" / "bass.wav").unlink()
    with pytest.raises(MusdbError, match=r"Train 0.*lacks bass.wav"):
        datamodule(incomplete, chunk_seconds=0.5).setup("fit")


# -- configs ----------------------------------------------------------------------
def test_musdb_config_instantiates(musdb_root, tmp_path):
    cfg = compose_config("train", ["data=musdb", f"data.root={musdb_root}", "data.is_wav=true", "data.chunk_seconds=1.0",
                                   "data.samples_per_track=2", "data.valid_excerpt_seconds=1.0"], tmp_path)
    dm = instantiate(cfg.data)
    assert isinstance(dm, MusdbDataModule) and dm.targets == ["vocals", "accompaniment"]
    assert isinstance(dm.hparams.augment, dict) and dm.augment.random_mix == 0.5
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["targets"].shape == (6, 2, 2, SR)  # 3 tracks x 2 chunks < batch_size 8


@pytest.mark.skipif(importlib.util.find_spec("audiolab.data.synth_musdb") is None, reason="synth_musdb not written yet")
def test_musdb_synth_config_generates_and_trains(tmp_path):
    overrides = ["data=musdb_synth", f"paths.data_dir={tmp_path / 'data'}", "data.synthetic.n_train=2",
                 "data.synthetic.n_valid=1", "data.synthetic.n_test=1", "data.synthetic.duration=4.0",
                 "data.chunk_seconds=1.0", "data.samples_per_track=2", "data.batch_size=2",
                 "data.valid_excerpt_seconds=2.0"]
    cfg = compose_config("train", overrides, tmp_path / "out")
    dm = instantiate(cfg.data)
    assert dm.hparams.is_wav and dm.root == tmp_path / "data" / "musdb_synth"
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.tracks("train")) == 2 and len(dm.tracks("valid")) == 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["mixture"].shape == (2, 2, SR) and batch["targets"].shape == (2, 2, 2, SR)
    torch.testing.assert_close(batch["targets"].sum(1), batch["mixture"], atol=1e-5, rtol=0)
    val = next(iter(dm.val_dataloader()))
    assert val["mixture"].shape == (1, 2, 2 * SR)
    full = next(iter(dm.test_dataloader()))
    assert full["mixture"].shape == (1, 2, 4 * SR) and full["targets"].shape == (1, 2, 2, 4 * SR)

