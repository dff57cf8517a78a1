"""The synthetic MUSDB dataset: layout musdb can read, exact mixtures, determinism,
distinguishable stems, and safe (atomic, never destructive) generation."""

from __future__ import annotations

import filecmp
import json
import runpy
import shutil
import sys
from pathlib import Path

import musdb
import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from audiolab.data import synth_musdb
from audiolab.data.synth_musdb import (
    MARKER,
    SOURCES,
    SynthMusdbError,
    is_complete,
    render_track,
    track_seed,
    write_synthetic_musdb,
)
from audiolab.utils.errors import AudiolabError

SR = 44100
TINY = {"n_train": 2, "n_valid": 1, "n_test": 1, "duration": 3.0, "seed": 0}
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_synthetic_musdb.py"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A tiny dataset shared by the read-only tests (tests that change it copy it first)."""
    return write_synthetic_musdb(tmp_path_factory.mktemp("synth") / "musdb", progress=False, **TINY)


def track_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*/*") if p.is_dir())


def read(folder: Path, name: str) -> np.ndarray:
    audio, rate = sf.read(folder / f"{name}.wav", dtype="int16")
    assert rate == SR
    return audio


def files_of(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_render_track_is_deterministic_stereo_float32_and_headroomed():
    a = render_track(7, 2.0)
    b = render_track(7, 2.0)
    c = render_track(8, 2.0)
    assert list(a) == list(SOURCES)
    for name in SOURCES:
        assert a[name].dtype == np.float32 and a[name].shape == (2, 2 * SR)
        np.testing.assert_array_equal(a[name], b[name])
        assert not np.allclose(a[name], c[name])
        assert np.abs(a[name]).max() <= 0.9 + 1e-6
    peak = np.abs(sum(a.values())).max()
    assert 0.85 < peak <= 0.9 + 1e-6  # the mixture is what is normalised
    assert render_track(7, 1.0, sample_rate=22050)["vocals"].shape == (2, 22050)


def test_layout_formats_and_musdb_splits(dataset):
    marker = json.loads((dataset / MARKER).read_text())
    names = marker["tracks"]
    assert [len(names[s]) for s in ("train", "valid", "test")] == [2, 1, 1]
    assert sorted(p.name for p in (dataset / "train").iterdir()) == sorted(
        names["train"] + names["valid"]
    )
    assert [p.name for p in (dataset / "test").iterdir()] == names["test"]
    for folder in track_folders(dataset):
        assert "/" not in folder.name and ":" not in folder.name and "bpm" in folder.name
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            f"{s}.wav" for s in ("mixture", *SOURCES)
        )
        for path in folder.iterdir():
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.frames, info.subtype) == (
                SR,
                2,
                3 * SR,
                "PCM_16",
            )

    def db(subsets, split=None):
        tracks = musdb.DB(
            root=str(dataset), is_wav=True, subsets=subsets, split=split, setup_file="setup.yaml"
        )
        return [t.name for t in tracks]

    assert db("train", "train") == names["train"]
    assert db("train", "valid") == names["valid"]
    assert db("test") == names["test"]
    track = musdb.DB(root=str(dataset), is_wav=True, subsets="test", setup_file="setup.yaml")[0]
    assert set(track.sources) == set(SOURCES)


def test_mixture_is_the_exact_sum_of_the_stored_stems(dataset):
    for folder in track_folders(dataset):
        stems = [read(folder, name).astype(np.int32) for name in SOURCES]
        mixture = read(folder, "mixture").astype(np.int32)
        np.testing.assert_array_equal(mixture, sum(stems))
        # Loud but not clipped: the float mixture peaks at 0.9 before quantising.
        assert 0.85 * 32767 < np.abs(mixture).max() < 0.91 * 32767
        assert all(np.abs(stem).max() > 0 for stem in stems)


def test_generation_is_deterministic_and_tracks_do_not_depend_on_split_sizes(dataset, tmp_path):
    again = write_synthetic_musdb(tmp_path / "again", progress=False, **TINY)
    assert files_of(again) == files_of(dataset)
    for path in files_of(dataset):
        assert filecmp.cmp(dataset / path, again / path, shallow=False), path

    other = write_synthetic_musdb(tmp_path / "other", progress=False, **{**TINY, "seed": 1})
    mixtures = [read(f, "mixture") for f in track_folders(dataset) + track_folders(other)]
    assert not any(np.array_equal(mixtures[i], mixtures[i + 4]) for i in range(4))

    # Fewer train and valid tracks: the remaining train and test tracks are unchanged.
    smaller = write_synthetic_musdb(
        tmp_path / "smaller", progress=False, **{**TINY, "n_train": 1, "n_valid": 0}
    )
    for path in files_of(smaller):
        if path.suffix == ".wav":
            assert filecmp.cmp(dataset / path, smaller / path, shallow=False), path
    assert len(track_folders(smaller)) == 2


def centroid(x: np.ndarray) -> float:
    power = np.abs(np.fft.rfft(x.mean(1))) ** 2
    return float((power * np.fft.rfftfreq(len(x), 1 / SR)).sum() / power.sum())


def flatness(x: np.ndarray) -> float:
    """Median spectral flatness over 1-16 kHz of the loud frames: ~0.2-0.5 for noise-like
    drums, orders of magnitude lower for harmonic sounds."""
    freqs, _, z = signal.stft(x.mean(1), SR, nperseg=2048)
    power = np.abs(z[(freqs >= 1000) & (freqs < 16000)]) ** 2 + 1e-14
    energy = power.sum(0)
    loud = energy > 1e-2 * energy.max()
    per_frame = np.exp(np.log(power).mean(0)) / power.mean(0)
    return float(np.median(per_frame[loud]))


def silent_fraction(x: np.ndarray, frame: int = 1024) -> float:
    frames = x[: len(x) // frame * frame].reshape(-1, frame, x.shape[1])
    return float((np.abs(frames).max(axis=(1, 2)) == 0).mean())


def test_stems_are_distinguishable(dataset):
    for folder in track_folders(dataset):
        stems = {name: read(folder, name).astype(np.float64) / 32767 for name in SOURCES}
        c = {name: centroid(x) for name, x in stems.items()}
        assert c["bass"] < 0.5 * min(c["other"], c["vocals"]), (folder.name, c)
        f = {name: flatness(stems[name]) for name in ("drums", "other", "vocals")}
        assert f["drums"] > 0.1 and f["drums"] > 20 * max(f["other"], f["vocals"]), (folder.name, f)
        assert silent_fraction(stems["vocals"]) > 0.1, folder.name
        for name in ("drums", "bass", "other"):
            assert silent_fraction(stems[name]) < 0.5, (folder.name, name)


def test_vocals_rest_at_least_a_fifth_of_a_full_length_track():
    for index in range(2):
        vocals = render_track(track_seed(0, "test", index), 12.0)["vocals"].T
        assert silent_fraction(vocals) >= 0.2
        assert silent_fraction(vocals) < 0.8


def test_rerun_with_the_same_parameters_is_a_no_op(dataset):
    before = {p: (dataset / p).stat().st_mtime_ns for p in files_of(dataset)}
    assert is_complete(dataset, **TINY)
    assert is_complete(dataset, progress=False, **TINY)  # one dict may configure both functions
    assert write_synthetic_musdb(dataset, progress=False, **TINY) == dataset
    assert {p: (dataset / p).stat().st_mtime_ns for p in files_of(dataset)} == before


def test_other_parameters_raise_a_clear_error_and_touch_nothing(dataset):
    before = files_of(dataset)
    assert not is_complete(dataset, **{**TINY, "seed": 1})
    assert not is_complete(dataset)  # the defaults are a different dataset
    with pytest.raises(
        SynthMusdbError, match=r"seed=0 \(asked for 1\).*Delete .* or choose another root"
    ):
        write_synthetic_musdb(dataset, progress=False, **{**TINY, "seed": 1})
    assert issubclass(SynthMusdbError, AudiolabError)
    assert files_of(dataset) == before and is_complete(dataset, **TINY)


def test_folder_without_marker_is_reported_not_overwritten(dataset, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(dataset, partial)
    (partial / MARKER).unlink()
    before = files_of(partial)
    assert not is_complete(partial, **TINY)
    with pytest.raises(SynthMusdbError, match=f"no {MARKER}.*Delete .* or choose another root"):
        write_synthetic_musdb(partial, progress=False, **TINY)
    assert files_of(partial) == before


def test_an_interrupted_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return render_track(*args, **kwargs)

    monkeypatch.setattr(synth_musdb, "render_track", failing)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_musdb(tmp_path / "musdb", progress=False, **{**TINY, "duration": 1.0})
    assert list(tmp_path.iterdir()) == []


def test_an_empty_root_folder_is_filled(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    params = {"n_train": 1, "n_valid": 0, "n_test": 0, "duration": 0.5}
    assert write_synthetic_musdb(root, progress=False, **params) == root
    assert is_complete(root, **params) and sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    db = musdb.DB(
        root=str(root), is_wav=True, subsets="train", split="valid", setup_file="setup.yaml"
    )
    assert len(db) == 0


def test_losing_a_race_to_an_identical_dataset_is_fine(dataset):
    # Two processes generating the same dataset: the second finds the first's result in
    # place, keeps it, and checks that it is the dataset it was asked for.
    before = sorted(p.relative_to(dataset) for p in dataset.rglob("*"))
    synth_musdb._check_in_place(dataset, synth_musdb._params(**TINY))
    with pytest.raises(SynthMusdbError, match="could not put the generated dataset"):
        synth_musdb._check_in_place(dataset, synth_musdb._params(**{**TINY, "seed": 3}))
    assert sorted(p.relative_to(dataset) for p in dataset.rglob("*")) == before


def test_bad_parameters_are_rejected(tmp_path):
    with pytest.raises(SynthMusdbError, match="n_train"):
        write_synthetic_musdb(tmp_path / "x", n_train=0)
    with pytest.raises(TypeError, match="n_tracks"):
        is_complete(tmp_path / "x", n_tracks=3)
    assert not (tmp_path / "x").exists()


def test_command_line(tmp_path, monkeypatch, capsys):
    root = tmp_path / "cli"
    args = [
        "--root",
        str(root),
        "--n-train",
        "1",
        "--n-valid",
        "0",
        "--n-test",
        "1",
        "--duration",
        "0.5",
    ]

    def run(*extra: str) -> None:
        monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args, *extra])
        runpy.run_path(str(SCRIPT), run_name="__main__")

    run("--no-progress")
    assert "2 tracks (1 train, 0 valid, 1 test)" in capsys.readouterr().out
    assert is_complete(root, n_train=1, n_valid=0, n_test=1, duration=0.5)
    run()
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="error: .*seed=0 \\(asked for 5\\)"):
        run("--seed", "5")
