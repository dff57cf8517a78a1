"""data=slakh: metadata, grouping, skipped stems, splits and batches on the real BabySlakh
sample track (../shared/data/slakh-sample), copied to tmp_path wherever files change."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from helpers import require_shared, run_cli

from audiolab.data.musdb import resample
from audiolab.data.slakh import (
    SlakhDataModule,
    SlakhError,
    SlakhNotFoundError,
    pool_split,
    read_metadata,
    usable_stems,
)

torch.set_num_threads(1)
TRACK = "Track00001"
DRUMS, BASS = ["S01"], ["S03"]
OTHER = ["S00", "S02", "S04", "S05", "S07", "S08", "S09", "S10"]  # S06 (Sound Effects) has no file


@pytest.fixture(scope="module")
def baby_root():
    return require_shared("slakh-sample", "babyslakh_16k")


def copy_track(src_root, dest, name=TRACK):
    """A writable copy of the sample track at ``dest/name``."""
    shutil.copytree(src_root / TRACK, dest / name, ignore=shutil.ignore_patterns("MIDI", "*.mid"))
    return dest / name


def edit_metadata(track_dir, **rendered):
    """Set ``audio_rendered`` of the named stems (``S00=True``) in a copied track."""
    path = track_dir / "metadata.yaml"
    meta = yaml.safe_load(path.read_text())
    for stem, value in rendered.items():
        meta["stems"][stem]["audio_rendered"] = value
    path.write_text(yaml.safe_dump(meta))


def datamodule(root, **kwargs):
    options = dict(
        root=str(root),
        pool_split=None,
        chunk_seconds=1.0,
        samples_per_track=2,
        batch_size=2,
        valid_excerpt_seconds=1.0,
        eval_batch_size=1,
        silence_retries=1,
    )
    options.update(kwargs)
    return SlakhDataModule(**options)


def stem_names(groups):
    return {target: [s.name for s in stems] for target, stems in groups.items()}


# -- metadata and grouping -------------------------------------------------------------
def test_metadata_is_parsed_with_audio_files(baby_root):
    stems = {s.name: s for s in read_metadata(baby_root / TRACK)}
    assert sorted(stems) == [f"S{i:02d}" for i in range(11)]
    assert (
        stems["S01"].inst_class == "Drums"
        and stems["S01"].is_drum
        and stems["S01"].program_num == 128
    )
    assert (
        stems["S03"].inst_class == "Bass"
        and stems["S03"].midi_program_name == "Electric Bass (finger)"
    )
    assert stems["S04"].inst_class == "Strings (continued)"
    assert stems["S06"].path is None  # rendered by no plugin: no file
    assert stems["S00"].path == baby_root / TRACK / "stems" / "S00.wav"
    # BabySlakh's metadata marks no stem rendered; auto then lets the files decide
    assert not any(s.audio_rendered for s in stems.values())
    assert [s.name for s in usable_stems(stems.values())] == sorted(DRUMS + BASS + OTHER)


def test_default_groups_are_drums_bass_and_the_rest(baby_root):
    dm = datamodule(baby_root)
    assert (
        dm.targets == ["drums", "bass", "other"]
        and dm.sample_rate == 44100
        and dm.audio_channels == 2
    )
    assert stem_names(dm.track_groups(baby_root / TRACK)) == {
        "drums": DRUMS,
        "bass": BASS,
        "other": OTHER,
    }


def test_finer_groups_without_catch_all_drop_the_rest_from_the_mixture(baby_root):
    groups = {"guitar": ["guitar"], "organ": ["Organ"], "drums": ["Drums"]}
    dm = datamodule(
        baby_root,
        targets=["guitar", "organ", "drums"],
        groups=groups,
        catch_all=None,
        sample_rate=16000,
        audio_channels=1,
    )
    assert stem_names(dm.track_groups(baby_root / TRACK)) == {
        "guitar": ["S00", "S07", "S08"],
        "drums": DRUMS,
        "organ": ["S05", "S09", "S10"],
    }
    item = dm.full_tracks("test")[0]
    kept = sum(
        sf.read(baby_root / TRACK / "stems" / f"{s}.wav", dtype="float32")[0]
        for s in ["S00", "S07", "S08", "S05", "S09", "S10", "S01"]
    )
    np.testing.assert_allclose(item["mixture"][0].numpy(), kept, atol=1e-6)
    torch.testing.assert_close(item["targets"].sum(0), item["mixture"])


@pytest.mark.parametrize(
    "options,message",
    [
        (
            {"targets": ["drums", "piano"], "catch_all": None, "groups": {"drums": ["Drums"]}},
            "data.groups has no piano entry",
        ),
        ({"targets": ["drums", "bass"]}, "data.catch_all='other' is not in data.targets"),
        (
            {"groups": {"drums": ["Drums"], "bass": ["Drums"]}},
            "is in data.groups.drums and data.groups.bass",
        ),
        ({"use_rendered_flag": "maybe"}, "data.use_rendered_flag must be auto, true or false"),
        ({"layout": "flat"}, "data.layout must be one of"),
    ],
)
def test_bad_options_name_the_value_and_the_fix(baby_root, options, message):
    with pytest.raises(SlakhError, match=message.replace("(", r"\(").replace(".", r"\.")):
        datamodule(baby_root, **options)


# -- skipped stems -------------------------------------------------------------------
def test_unrendered_and_missing_stems_are_skipped(baby_root, tmp_path):
    track = copy_track(baby_root, tmp_path)
    (track / "stems" / "S02.wav").unlink()  # a missing file is always skipped
    assert "S02" not in stem_names(datamodule(tmp_path).track_groups(track))["other"]
    # once a track marks some stems rendered, the others count as not rendered
    edit_metadata(track, S00=True, S01=True, S03=True, S02=True)
    assert stem_names(datamodule(tmp_path).track_groups(track)) == {
        "other": ["S00"],
        "drums": DRUMS,
        "bass": BASS,
    }
    # use_rendered_flag=false: the files alone decide
    ignore = stem_names(datamodule(tmp_path, use_rendered_flag=False).track_groups(track))
    assert ignore["other"] == [s for s in OTHER if s != "S02"]


def test_a_track_with_no_usable_stem_is_an_error_naming_the_groups(baby_root):
    dm = datamodule(baby_root, use_rendered_flag=True)  # the sample marks no stem rendered
    with pytest.raises(SlakhError, match="has a rendered stem in data.targets"):
        dm.tracks("train")


# -- batches -------------------------------------------------------------------------
def first_batch(dm, epoch=0):
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return next(iter(loader))


def test_train_batches_have_shapes_and_depend_on_seed_epoch_and_index_only(baby_root, tmp_path):
    for i in range(3):
        copy_track(baby_root, tmp_path, f"Track0000{i + 1}")
    aug = {"random_mix": 1.0, "pitch_shift": 0.5}
    a = first_batch(datamodule(tmp_path, augment=aug))
    assert a["mixture"].shape == (2, 2, 44100) and a["targets"].shape == (2, 3, 2, 44100)
    assert a["mixture"].dtype == torch.float32 and a["mixture"].abs().amax() > 0.01
    torch.testing.assert_close(a["targets"].sum(1), a["mixture"], atol=1e-5, rtol=0)
    b = first_batch(datamodule(tmp_path, augment=aug, num_workers=1))
    assert torch.equal(a["mixture"], b["mixture"]) and torch.equal(a["targets"], b["targets"])
    assert not torch.equal(
        a["mixture"], first_batch(datamodule(tmp_path, augment=aug), epoch=1)["mixture"]
    )
    assert not torch.equal(
        a["mixture"], first_batch(datamodule(tmp_path, augment=aug, seed=1))["mixture"]
    )
    assert len(datamodule(tmp_path).train_dataset()) == 3 * 2


def test_full_track_targets_sum_to_the_mix_of_rendered_stems(baby_root):
    dm = datamodule(baby_root)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["name"] == [TRACK]
    mixture, targets = batch["mixture"][0], batch["targets"][0]
    assert mixture.shape == (2, 2 * 44100) and targets.shape == (3, 2, 2 * 44100)
    torch.testing.assert_close(targets.sum(0), mixture, atol=1e-6, rtol=0)
    # every class is grouped, so the mixture is the track's own mix (mono 16 kHz, resampled, duplicated)
    mix, rate = sf.read(baby_root / TRACK / "mix.wav", dtype="float32", always_2d=True)
    expected = resample(mix.T, rate, 44100)
    np.testing.assert_allclose(mixture.numpy(), np.repeat(expected, 2, axis=0), atol=1e-5)
    valid = next(iter(dm.val_dataloader()))
    assert valid["mixture"].shape == (1, 2, 44100) and valid["targets"].shape == (1, 3, 2, 44100)


# -- splits --------------------------------------------------------------------------
def test_official_split_folders(baby_root, tmp_path):
    layout = {"train": 3, "validation": 1, "test": 2, "omitted": 1}
    number = 0
    for folder, count in layout.items():
        for _ in range(count):
            number += 1
            copy_track(baby_root, tmp_path / folder, f"Track{number:05d}")
    dm = datamodule(tmp_path, pool_split={"valid": 0.5, "test": 0.5})  # unused by folders
    assert dm.resolved_layout() == "folders"
    names = {split: [r.name for r in dm.tracks(split)] for split in ("train", "valid", "test")}
    assert names == {
        "train": ["Track00001", "Track00002", "Track00003"],
        "valid": ["Track00004"],
        "test": ["Track00005", "Track00006"],
    }
    assert {r.subset for r in dm.tracks("valid")} == {"valid"}
    with pytest.raises(SlakhError, match="no test tracks: .*nope does not exist"):
        datamodule(tmp_path, folders={"test": "nope"}).tracks("test")


def test_a_folder_of_tracks_is_one_pool_cut_by_name(baby_root, tmp_path):
    for i in range(10):
        copy_track(baby_root, tmp_path, f"Track{10 - i:05d}")
    dm = datamodule(tmp_path, pool_split={"valid": 0.1, "test": 0.2})
    assert dm.resolved_layout() == "pool"
    names = {split: [r.name for r in dm.tracks(split)] for split in ("train", "valid", "test")}
    assert names == {
        "train": [f"Track{i:05d}" for i in range(1, 8)],
        "valid": ["Track00008"],
        "test": ["Track00009", "Track00010"],
    }
    every = datamodule(tmp_path, pool_split=None)
    assert len(every.tracks("train")) == len(every.tracks("test")) == 10
    assert pool_split(["b", "a", "c"], 0.01, 0.0) == {
        "train": ["a", "b"],
        "valid": ["c"],
        "test": [],
    }
    with pytest.raises(SlakhError, match="leaves no training track of 1"):
        datamodule(baby_root, pool_split={"valid": 0.1, "test": 0.1}).tracks("train")


# -- a missing or wrong root ---------------------------------------------------------------
def test_missing_or_wrong_root_says_what_and_where_in_one_line(baby_root, tmp_path):
    with pytest.raises(SlakhNotFoundError) as missing:
        datamodule(tmp_path / "nowhere").setup("fit")
    text = str(missing.value)
    assert "\n" not in text and str(tmp_path / "nowhere") in text and "does not exist" in text
    assert "https://zenodo.org/record/4599666" in text and "BabySlakh" in text
    with pytest.raises(SlakhNotFoundError, match="babyslakh_16k does: point data.root there"):
        datamodule(baby_root.parent).tracks("train")


def test_bad_root_exits_1_with_one_error_line(tmp_path):
    proc = run_cli(
        "train",
        "data=slakh",
        "model=tfc_tdf",
        f"data.root={tmp_path / 'nowhere'}",
        f"paths.log_dir={tmp_path}",
        "extras.print_config=false",
        "logger=[]",
        check=False,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert (
        len(lines) == 1
        and "Slakh2100 not found" in lines[0]
        and "zenodo.org/record/4599666" in lines[0]
    )
