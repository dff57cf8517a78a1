"""predict.py: CSV + PNG per file on real audio (MDB-stem-synth excerpt, FSDD speech),
folders with a progress bar, outputs kept unless overwrite=true, and bad input - silence,
DC, clipping, NaN samples, stereo, 8 kHz, clips shorter than a frame, corrupt and
unsupported files - each with a documented result or an error naming the file."""

from __future__ import annotations

import shutil
import warnings

import mir_eval
import numpy as np
import pytest
import soundfile as sf
from helpers import compose_config, require_shared, run_cli
from test_pitch_metrics import MDB, MDB_NAME

from audiolab.data.pitch_eval import read_f0_csv
from audiolab.tasks.predict import predict_files
from audiolab.utils.errors import AudiolabError

FSDD_FILES = ("0_george_0.wav", "3_jackson_1.wav", "7_theo_2.wav")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_csv(path):
    lines = path.read_text().splitlines()
    assert lines[0] == "time,f0,periodicity"
    return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)


def frames_of(path) -> int:
    """CREPE frames of a file: 1 + (its length at 16 kHz) // 160."""
    info = sf.info(str(path))
    return 1 + round(info.frames * 16000 / info.samplerate) // 160


@pytest.fixture
def real_folder(tmp_path):
    mdb = require_shared(*MDB)
    fsdd = require_shared("fsdd", "recordings")
    folder = tmp_path / "in"
    (folder / "speech").mkdir(parents=True)
    shutil.copy(mdb / f"{MDB_NAME}.wav", folder)
    for name in FSDD_FILES:
        shutil.copy(fsdd / name, folder / "speech")
    return folder


@pytest.mark.slow
def test_predict_cli_on_real_audio(real_folder, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("predict", "ckpt=tiny", f"input={real_folder}", f"output={out}", "device=cpu", f"paths.log_dir={tmp_path}")
    assert "tracked pitch in 4 of 4 files" in proc.stdout
    assert "4/4" in proc.stderr  # the progress bar over files
    wavs = [real_folder / f"{MDB_NAME}.wav", *(real_folder / "speech" / n for n in FSDD_FILES)]
    for wav in wavs:
        csv = out / wav.relative_to(real_folder).with_suffix(".csv")
        table = read_csv(csv)
        assert table.shape == (frames_of(wav), 3)
        assert np.allclose(table[:, 0], np.arange(len(table)) * 0.01, atol=1e-4)
        assert ((table[:, 2] >= 0) & (table[:, 2] <= 1)).all()
        png = csv.with_suffix(".png")
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    assert not list(out.rglob("*.partial"))

    # the resynthesised voice: the CSV scores like a pitch tracker against its exact f0
    ref_t, ref_f0 = read_f0_csv(require_shared(*MDB) / f"{MDB_NAME}.csv")
    table = read_csv(out / f"{MDB_NAME}.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = mir_eval.melody.evaluate(
            ref_t.numpy(), ref_f0.numpy(), table[:, 0], table[:, 1], est_voicing=(table[:, 2] >= 0.5).astype(float)
        )
    assert scores["Raw Pitch Accuracy"] > 0.9 and scores["Voicing Recall"] > 0.8
    # spoken digits: confident frames lie in the range of speaking voices
    for name in FSDD_FILES:
        table = read_csv(out / "speech" / name.replace(".wav", ".csv"))
        confident = table[table[:, 2] >= 0.5, 1]
        assert len(confident) >= 5, name
        assert 60 < np.median(confident) < 300, (name, np.median(confident))


def test_existing_outputs_are_kept_unless_overwrite(real_folder, tmp_path):
    out = tmp_path / "out"
    (real_folder / "speech").rename(tmp_path / "unused")  # just the MDB clip
    overrides = [f"input={real_folder}", f"output={out}", "device=cpu", "decoder=weighted_argmax"]
    predict_files(compose_config("predict", overrides, tmp_path / "run1"))
    csv = out / f"{MDB_NAME}.csv"
    first = csv.stat().st_mtime_ns
    csv.write_text("time,f0,periodicity\n")  # a stand-in the next run must not touch
    result, _ = predict_files(compose_config("predict", overrides, tmp_path / "run2"))
    assert result["written"] == [] and csv.read_text() == "time,f0,periodicity\n"
    result, _ = predict_files(compose_config("predict", [*overrides, "overwrite=true", "plot=false"], tmp_path / "run3"))
    assert result["written"] == [str(csv)] and csv.stat().st_mtime_ns >= first
    assert len(read_csv(csv)) == frames_of(real_folder / f"{MDB_NAME}.wav")


def tone(f0: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return amplitude * sum(np.sin(2 * np.pi * k * f0 * t) / k for k in (1, 2, 3))


def cents_off(table, true_hz: float) -> np.ndarray:
    inner = table[5:-5]
    return np.abs(1200 * np.log2(inner[:, 1] / true_hz))


def test_predict_cli_on_bad_input(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "silence.wav", np.zeros(8000), 16000)
    sf.write(folder / "dc.wav", np.full(8000, 0.3), 16000, subtype="FLOAT")
    sf.write(folder / "clipped.wav", np.clip(4 * tone(220.0, 0.5, 16000), -1, 1), 16000)
    nan = tone(220.0, 0.5, 16000).astype(np.float32)
    nan[4000] = np.nan
    sf.write(folder / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(folder / "stereo.wav", np.stack([tone(330.0, 0.5, 44100), tone(330.0, 0.5, 44100)], axis=1), 44100)
    sf.write(folder / "phone.wav", tone(150.0, 0.5, 8000), 8000)
    sf.write(folder / "short.wav", tone(220.0, 0.005, 16000), 16000)  # 80 samples: less than a frame
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    (folder / "notes.txt").write_text("not audio: ignored in a folder")
    out = tmp_path / "out"

    proc = run_cli("predict", f"input={folder}", f"output={out}", "device=cpu", "plot=false", f"paths.log_dir={tmp_path}", check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log
    # the failures are named, with what is wrong; the others were written
    assert "2 of 8 files could not be read (the others were written)" in proc.stderr
    assert "nan.wav contains NaN or infinite samples (the first at 0.250 s)" in log and "nan_to_num" in log
    assert "cannot read" in log and "corrupt.wav" in log
    written = ("clipped", "dc", "phone", "short", "silence", "stereo")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{n}.csv" for n in written] + [f"{n}.settings.json" for n in written]  # the settings records
    )
    # documented results
    silence = read_csv(out / "silence.csv")
    assert (silence[:, 2] == 0).all()  # periodicity 0 on digital silence
    dc = read_csv(out / "dc.csv")
    assert (dc[4:-4, 2] == 0).all()  # constant frames; the edges reach into the zero padding
    assert "clipped input" in log  # a warning, and the pitch is still right
    assert cents_off(read_csv(out / "clipped.csv"), 220.0).max() < 25
    assert cents_off(read_csv(out / "stereo.csv"), 330.0).max() < 25  # channels averaged
    assert cents_off(read_csv(out / "phone.csv"), 150.0).max() < 25  # resampled to 16 kHz
    assert read_csv(out / "short.csv").shape == (1, 3)  # zero-padded to one frame


def test_single_bad_inputs_stop_with_the_file_named(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not audio")
    with pytest.raises(AudiolabError, match="cannot read .*notes.txt"):
        predict_files(compose_config("predict", [f"input={bad}", f"output={tmp_path}", "device=cpu"], tmp_path / "a"))
    with pytest.raises(AudiolabError, match="input not found: .*missing.wav"):
        predict_files(compose_config("predict", [f"input={tmp_path / 'missing.wav'}", "device=cpu"], tmp_path / "b"))
    with pytest.raises(AudiolabError, match="unknown pitch model 'huge'"):
        predict_files(compose_config("predict", ["ckpt=huge", f"input={bad}", "device=cpu"], tmp_path / "c"))
    folder = tmp_path / "twins"
    folder.mkdir()
    sf.write(folder / "a.wav", np.zeros(800), 16000)
    sf.write(folder / "a.flac", np.zeros(800), 16000)
    with pytest.raises(AudiolabError, match="would both write .*a.csv: rename one"):
        predict_files(compose_config("predict", [f"input={folder}", f"output={tmp_path}", "device=cpu"], tmp_path / "d"))
