"""FSDD DataModule on the real recordings in ../shared/data/fsdd: split, labels,
features (against librosa's baseline pipeline), cache keys, bad files, download."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import REPO_ROOT, require_shared

from audiolab.audio.features import LogSpectrogram, pad_or_trim
from audiolab.data.fsdd import FsddDataModule, FsddError, download_fsdd


@pytest.fixture(scope="module")
def recordings():
    return require_shared("fsdd", "recordings")


@pytest.fixture(scope="module")
def full(recordings, tmp_path_factory):
    dm = FsddDataModule(root=str(recordings.parent), cache_dir=str(tmp_path_factory.mktemp("cache")))
    dm.prepare_data()
    dm.setup()
    return dm


def small_copy(recordings, dest, names):
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(recordings / name, dest / name)
    return dest


SOME = [f"{d}_{s}_{i}.wav" for d in (0, 7) for s in ("george", "theo") for i in (0, 3, 5, 9, 10, 30)]


def test_official_split_and_labels(full):
    sizes = {name: len(rows) for name, rows in full.split_rows.items()}
    assert sizes == {"train": 2400, "val": 300, "test": 300}
    take, digit, speaker = (full.arrays[k] for k in ("take", "digit", "speaker"))
    assert (take[full.split_rows["test"]] <= 4).all()
    assert set(take[full.split_rows["val"]]) == {5, 6, 7, 8, 9}
    assert (take[full.split_rows["train"]] >= 10).all()
    assert full.speaker_names == ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
    row = full.file_names.index("7_theo_23.wav")
    assert (digit[row], full.speaker_names[speaker[row]], take[row]) == (7, "theo", 23)
    # every digit and speaker is in every split
    for rows in full.split_rows.values():
        assert set(digit[rows]) == set(range(10)) and set(speaker[rows]) == set(range(6))


def test_log_spectrogram_matches_the_baseline_recipe(full, recordings):
    """256 x 64, equal to librosa's load(sr=22050, duration=0.74) + pad + stft[:-1] +
    amplitude_to_db, then min-max normalised with the clip's min and max kept."""
    librosa = pytest.importorskip("librosa")
    name = "3_jackson_12.wav"
    audio, _ = librosa.load(recordings / name, sr=22050, duration=0.74)
    audio = np.pad(audio, (0, 16317 - len(audio)))
    want = librosa.amplitude_to_db(np.abs(librosa.stft(audio, n_fft=512, hop_length=256)[:-1]))
    row = full.file_names.index(name)
    spec, lo, hi = (np.asarray(full.arrays[k][row]) for k in ("spec", "min", "max"))
    assert spec.shape == (1, 256, 64) and spec.min() == 0.0 and spec.max() == 1.0
    assert lo == pytest.approx(want.min(), abs=0.05) and hi == pytest.approx(want.max(), abs=0.05)
    got_db = spec[0] * (hi - lo) + lo
    # resamplers differ (soxr vs torchaudio's sinc): compare where there is energy
    loud = want > want.max() - 40
    assert np.median(np.abs(got_db - want)[loud]) < 0.5, np.median(np.abs(got_db - want)[loud])


def test_batched_features_equal_one_by_one():
    torch.manual_seed(0)
    audio = torch.randn(5, 16317)
    spec = LogSpectrogram()
    batched = spec(audio)
    single = torch.stack([spec(a) for a in audio])
    assert torch.allclose(batched, single, atol=1e-4)
    assert pad_or_trim(audio[:, :100], 120).shape == (5, 120)


def test_loaders_give_batches(full):
    batch = next(iter(full.train_dataloader()))
    assert batch["spec"].shape == (64, 1, 256, 64) and batch["digit"].shape == (64,)
    assert batch["spec"].dtype == torch.float32 and torch.isfinite(batch["spec"]).all()


def test_cache_is_keyed_by_config_and_files(recordings, tmp_path, caplog):
    root = small_copy(recordings, tmp_path / "fsdd", SOME)
    cache = tmp_path / "cache"
    a = FsddDataModule(root=str(root), cache_dir=str(cache))
    a.prepare_data()
    first = a.cache_path()
    stamp = (first / "spec.npy").stat().st_mtime_ns
    FsddDataModule(root=str(root), cache_dir=str(cache)).prepare_data()
    assert (first / "spec.npy").stat().st_mtime_ns == stamp  # reused, not recomputed
    b = FsddDataModule(root=str(root), cache_dir=str(cache), n_fft=1024)
    assert b.cache_path() != first  # another config, another cache
    b.setup()
    assert b.arrays["spec"].shape[-2:] == (512, 64)
    shutil.copy(recordings / "1_lucas_40.wav", root / "1_lucas_40.wav")
    c = FsddDataModule(root=str(root), cache_dir=str(cache))
    assert c.cache_path() != first  # another file list, another cache
    c.setup()
    assert "1_lucas_40.wav" in c.file_names


def test_filters_and_mel_and_waveform(recordings, tmp_path):
    root = small_copy(recordings, tmp_path / "fsdd", SOME)
    dm = FsddDataModule(root=str(root), cache_dir=str(tmp_path / "c"), speakers=["theo"], digits=[7])
    dm.setup()
    for rows in dm.split_rows.values():
        assert set(dm.arrays["digit"][rows]) == {7}
        assert {dm.speaker_names[s] for s in dm.arrays["speaker"][rows]} == {"theo"}
    mel = FsddDataModule(root=str(root), cache_dir=str(tmp_path / "c"), feature="log_mel", n_mels=80)
    mel.setup()
    assert mel.arrays["spec"].shape[1:] == (1, 80, 64)
    wave = FsddDataModule(root=str(root), cache_dir=str(tmp_path / "c"), feature="waveform", sample_rate=16000)
    wave.setup()
    assert wave.arrays["audio"].shape[1:] == (round(0.74 * 16000),)
    with pytest.raises(FsddError, match=r"unknown speakers \['zed'\]"):
        FsddDataModule(root=str(root), cache_dir=str(tmp_path / "c"), speakers=["zed"]).setup()


def test_missing_root_says_how_to_get_the_data(tmp_path):
    with pytest.raises(FsddError, match=r"FSDD recordings not found in .*download_fsdd.py --dest .*FSDD_ROOT"):
        FsddDataModule(root=str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "c")).prepare_data()


@pytest.mark.parametrize(
    "name,content,problem",
    [
        ("3_theo_1.wav", b"", "unreadable audio"),
        ("3_theo_2.wav", b"RIFF\x00\x00junk not a wave file at all", "unreadable audio"),
        ("three_theo_3.wav", None, "its name is not"),
        ("3_theo_4.wav", "empty", "it holds no samples"),
    ],
)
def test_bad_files_name_the_file(recordings, tmp_path, caplog, name, content, problem):
    root = small_copy(recordings, tmp_path / "fsdd", SOME)
    bad = root / name
    if content is None:
        shutil.copy(recordings / "3_theo_10.wav", bad)
    elif content == "empty":
        sf.write(bad, np.zeros(0, dtype=np.float32), 8000)
    else:
        bad.write_bytes(content)
    with pytest.raises(FsddError, match=rf"bad FSDD file {bad}: {problem}.*data.on_bad_file=skip"):
        FsddDataModule(root=str(root), cache_dir=str(tmp_path / "c")).prepare_data()
    with caplog.at_level(logging.WARNING, logger="audiolab"):
        dm = FsddDataModule(root=str(root), cache_dir=str(tmp_path / "c"), on_bad_file="skip")
        dm.setup()
    assert f"bad FSDD file {bad}" in caplog.text and "skipped" in caplog.text
    assert name not in dm.file_names and len(dm.file_names) == len(SOME)


def test_download_from_a_local_release_archive(recordings, tmp_path):
    archive = tmp_path / "v1.0.10.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("free-spoken-digit-dataset-1.0.10/README.md", "FSDD")
        for name in SOME[:5]:
            zf.write(recordings / name, f"free-spoken-digit-dataset-1.0.10/recordings/{name}")
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "download_fsdd.py"), "--dest", str(tmp_path / "fsdd"),
         "--url", archive.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    got = sorted(p.name for p in (tmp_path / "fsdd" / "recordings").glob("*.wav"))
    assert got == sorted(SOME[:5]) and "5 recordings in" in proc.stdout
    assert (tmp_path / "fsdd" / "recordings" / SOME[0]).read_bytes() == (recordings / SOME[0]).read_bytes()
    not_zip = tmp_path / "x.zip"
    not_zip.write_text("nope")
    with pytest.raises(FsddError, match="is not a zip archive"):
        download_fsdd(tmp_path / "other", not_zip.as_uri())
    with pytest.raises(FsddError, match="could not download FSDD"):
        download_fsdd(tmp_path / "other", (tmp_path / "missing.zip").as_uri())
