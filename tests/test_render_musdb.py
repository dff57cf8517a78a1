"""The rendered MUSDB set (data=musdb_render): it renders, the MUSDB DataModule reads it,
mixtures are exact sums, it is deterministic, its stems sound where their parts play and
differ as drums, bass, other and vocals should, and it fails early and safely.

Needs the fluidsynth program and the FluidR3 SoundFont (`make install` as root installs
them); everything is skipped, with the reason, where they are absent."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiolab.data import render_musdb, synth_musdb
from audiolab.data.musdb import MusdbDataModule
from audiolab.data.render_musdb import DEFAULT_SOUNDFONT, RenderMusdbError
from audiolab.data.synth_musdb import MARKER, SOURCES, is_complete, write_synthetic_musdb

SR = 44100
TINY = {"generator": "render", "n_train": 2, "n_valid": 1, "n_test": 1, "duration": 4.0, "seed": 0}

pytestmark = [
    pytest.mark.skipif(
        shutil.which("fluidsynth") is None or not Path(DEFAULT_SOUNDFONT).is_file(),
        reason=f"needs fluidsynth and {DEFAULT_SOUNDFONT} (Debian packages fluidsynth, fluid-soundfont-gm; "
        "`make install` as root installs them)",
    ),
    pytest.mark.usefixtures("one_thread"),  # small renders: threads only add overhead
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A tiny rendered set shared by the read-only tests."""
    return write_synthetic_musdb(tmp_path_factory.mktemp("render") / "musdb", progress=False, **TINY)


def render_params(**changes) -> dict:
    """The tiny set's full generation parameters, with ``changes``."""
    params = {k: v for k, v in {**TINY, **changes}.items() if k != "generator"}
    return synth_musdb._params(render_musdb.RENDER, **params)


def track_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*/*") if p.is_dir())


def read(folder: Path, name: str) -> np.ndarray:
    audio, rate = sf.read(folder / f"{name}.wav", dtype="float32", always_2d=True)
    assert rate == SR and audio.shape[1] == 2
    return audio.T


def test_layout_float_wav_and_exact_mixtures(dataset):
    marker = json.loads((dataset / MARKER).read_text())
    assert marker["generator"] == "audiolab.data.render_musdb"
    assert [len(marker["tracks"][s]) for s in ("train", "valid", "test")] == [2, 1, 1]
    folders = track_folders(dataset)
    assert len(folders) == 4 and all("bpm" in f.name for f in folders)
    for folder in folders:
        assert sf.info(folder / "mixture.wav").subtype == "FLOAT"
        stems = [read(folder, name) for name in SOURCES]
        mixture = read(folder, "mixture")
        assert mixture.shape == (2, 4 * SR)
        expected = stems[0].copy()
        for stem in stems[1:]:
            expected += stem
        np.testing.assert_array_equal(mixture, expected)  # the float32 sum, bit for bit
        assert 0.3 < np.abs(mixture).max() <= 0.95  # limited, with headroom
        assert max(np.abs(s).max() for s in stems) <= 0.95


def test_the_musdb_datamodule_reads_it_unchanged(dataset):
    dm = MusdbDataModule(
        root=str(dataset), is_wav=True, targets=list(SOURCES), chunk_seconds=2.0, samples_per_track=2,
        batch_size=2, valid_excerpt_seconds=2.0, synthetic=TINY,
    )
    dm.prepare_data()  # complete: nothing is rendered again
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    mixture, targets = (batch["mixture"], batch["targets"]) if isinstance(batch, dict) else batch[:2]
    assert mixture.shape == (2, 2, 2 * SR) and targets.shape == (2, 4, 2, 2 * SR)
    torch.testing.assert_close(targets.sum(1), mixture)
    assert len(dm.tracks("train")) == 2 and len(dm.tracks("valid")) == 1 and len(dm.tracks("test")) == 1
    valid = {ref.name for ref in dm.tracks("valid")}
    assert valid.isdisjoint(ref.name for ref in dm.tracks("train")) and all(n.startswith("valid_") for n in valid)
    whole = dm.full_tracks("test")[0]
    assert whole["mixture"].shape == (2, 4 * SR) and whole["targets"].shape == (4, 2, 4 * SR)


def test_deterministic_for_a_seed(dataset, tmp_path):
    again = write_synthetic_musdb(tmp_path / "again", progress=False, **TINY)
    for a, b in zip(track_folders(dataset), track_folders(again), strict=True):
        assert a.name == b.name
        for name in ("mixture", *SOURCES):
            assert filecmp.cmp(a / f"{name}.wav", b / f"{name}.wav", shallow=False), (a.name, name)
    params = render_params(duration=2.0)
    seeds = [synth_musdb.track_seed(s, "train", 0) for s in (0, 1)]
    one, other = (render_musdb.render_track(seed, params) for seed in seeds)
    assert not any(np.allclose(one[name], other[name]) for name in SOURCES)


def _played_frames(seed: int, duration: float, frame: int) -> dict[str, set[int]]:
    """Frames (of ``frame`` samples) in which each stem's parts start a note."""
    song, parts, melody, sung = render_musdb.compose_track(seed, duration)
    n_ticks = song.ticks(duration)
    frames = {name: set() for name in SOURCES}
    for part, _ in parts:
        for tick, *_ in render_musdb.window_part(part, song, n_ticks).notes:
            frames[part.stem].add(int(song.seconds(tick) * SR) // frame)
    start = song.window_bar * song.bar_ticks
    for tick, _, _, _, phrase in melody:
        if phrase in sung and start <= tick < start + n_ticks:
            frames["vocals"].add(int(song.seconds(tick - start) * SR) // frame)
    return frames


def test_every_stem_sounds_where_its_part_plays(dataset):
    frame = SR // 4
    marker = json.loads((dataset / MARKER).read_text())
    checked = 0
    for split, names in marker["tracks"].items():
        for index, name in enumerate(names):
            seed = synth_musdb.track_seed(TINY["seed"], split, index)
            folder = dataset / synth_musdb.SPLIT_FOLDERS[split] / name
            for stem, frames in _played_frames(seed, TINY["duration"], frame).items():
                audio = read(folder, stem)
                for f in frames:
                    # the note's attack may fall just after the frame where its event is
                    chunk = audio[:, f * frame : (f + 2) * frame]
                    rms = float(np.sqrt(np.mean(np.square(chunk))))
                    assert rms > 1e-3, (name, stem, f, rms)
                    checked += 1
    assert checked > 50


def _spectrum(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    power = np.abs(np.fft.rfft(audio.mean(0))) ** 2
    return np.fft.rfftfreq(audio.shape[1], 1 / SR), power


def _centroid(audio: np.ndarray) -> float:
    freqs, power = _spectrum(audio)
    return float((freqs * power).sum() / power.sum())


def _fraction(audio: np.ndarray, low: float, high: float) -> float:
    freqs, power = _spectrum(audio)
    return float(power[(freqs >= low) & (freqs < high)].sum() / power.sum())


def test_stems_differ_as_drums_bass_other_and_vocals_do():
    """Four rendered tracks (2 s of seeds the tiny set does not use): the bass sits far
    below the other instruments, the drums have the most energy above 5 kHz (cymbals), and
    the vocals have most of theirs in the voice's range."""
    params = render_params(duration=3.0)
    tracks = [render_musdb.render_track(synth_musdb.track_seed(7, "train", i), params) for i in range(4)]
    below = [_centroid(t["bass"]) < _centroid(t["other"]) for t in tracks]
    assert sum(below) >= 3, below  # a bright slap bass under a dark organ may be the exception
    joined = {name: np.concatenate([t[name] for t in tracks], axis=1) for name in SOURCES}
    assert _centroid(joined["bass"]) < 0.5 * _centroid(joined["other"])
    assert _fraction(joined["bass"], 0, 400) > 0.8
    highs = {name: _fraction(joined[name], 5000, SR / 2) for name in SOURCES}
    assert highs["drums"] == max(highs.values()) and highs["drums"] > 3 * highs["bass"]
    assert _fraction(joined["vocals"], 150, 4000) > 0.7


def test_missing_soundfont_or_fluidsynth_is_one_line_before_any_work(tmp_path, monkeypatch):
    params = {**TINY, "soundfont": str(tmp_path / "none.sf2")}
    with pytest.raises(RenderMusdbError) as error:
        MusdbDataModule(root=str(tmp_path / "musdb"), is_wav=True, synthetic=params)
    message = str(error.value)
    assert "\n" not in message and "fluid-soundfont-gm" in message and "make install" in message
    assert "data=musdb_synth" in message and "none.sf2" in message
    with pytest.raises(RenderMusdbError):
        write_synthetic_musdb(tmp_path / "musdb", progress=False, **params)
    assert list(tmp_path.iterdir()) == []  # nothing written
    monkeypatch.setattr(render_musdb.shutil, "which", lambda name: None)
    with pytest.raises(RenderMusdbError, match="Debian package fluidsynth"):
        write_synthetic_musdb(tmp_path / "musdb", progress=False, **TINY)


def test_a_complete_set_needs_no_fluidsynth(dataset, monkeypatch):
    monkeypatch.setattr(render_musdb.shutil, "which", lambda name: None)
    assert is_complete(dataset, **TINY)
    MusdbDataModule(root=str(dataset), is_wav=True, synthetic=TINY).prepare_data()


def test_an_interrupted_generation_leaves_no_folder(tmp_path, monkeypatch):
    written = []
    original = synth_musdb._write_track

    def write_then_stop(*args, **kwargs):
        if written:
            raise KeyboardInterrupt
        written.append(args[0])
        original(*args, **kwargs)

    monkeypatch.setattr(synth_musdb, "_write_track", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_musdb(tmp_path / "musdb", progress=False, **{**TINY, "duration": 1.0})
    assert written and list(tmp_path.iterdir()) == []
    assert not is_complete(tmp_path / "musdb", **{**TINY, "duration": 1.0})


def test_synth_and_render_sets_are_not_confused(dataset):
    assert not is_complete(dataset, **{k: v for k, v in TINY.items() if k != "generator"})
    with pytest.raises(synth_musdb.SynthMusdbError, match="render_musdb"):
        write_synthetic_musdb(dataset, progress=False, **{k: v for k, v in TINY.items() if k != "generator"})
