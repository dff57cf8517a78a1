"""Separation end to end through the real entry points: train on the synthetic multitrack
set, evaluate the checkpoint, separate files (including the real .stem.mp4 preview and
bad files) with separate.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from helpers import output_dir_of, require_shared, run_cli

# A tiny synthetic set (shared by the session) and a few short steps.
SMALL = [
    "experiment=separation_synth",
    "data.synthetic.n_train=2",
    "data.synthetic.n_valid=1",
    "data.synthetic.n_test=1",
    "data.synthetic.duration=4",
    "data.chunk_seconds=1",
    "data.samples_per_track=2",
    "data.batch_size=2",
    "data.valid_excerpt_seconds=2",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    # the EMA of the weights takes part: validation, checkpoints and test use the average
    "callbacks=separation_ema",
    "callbacks.ema.update_starting_at_step=0",
    "extras.print_config=false",
    "callbacks.rich_progress_bar=null",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_cache):
    out = tmp_path_factory.mktemp("sep_train")
    proc = run_cli(
        "train", *SMALL, f"paths.data_dir={shared_cache}", f"paths.log_dir={out}", "logger=csv"
    )
    run_dir = output_dir_of(proc)
    best = sorted((run_dir / "checkpoints").glob("epoch_*.ckpt"))
    assert len(best) == 1, list(run_dir.rglob("*"))
    return {"run_dir": run_dir, "ckpt": best[0], "out": out, "data_dir": shared_cache}


def _logged_test_metrics(run_dir):
    import csv

    rows = list(csv.DictReader(open(next(run_dir.glob("csv/version_*/metrics.csv")))))
    return {k: float(v) for r in rows for k, v in r.items() if k.startswith("test/") and v}


@pytest.mark.slow
def test_train_logs_per_target_sdr_and_eval_reproduces_it(trained, tmp_path):
    logged = _logged_test_metrics(trained["run_dir"])
    for target in ("vocals", "drums", "bass", "other", "mean"):
        assert f"test/sdr_{target}" in logged, sorted(logged)
    proc = run_cli("eval", f"ckpt={trained['ckpt']}", f"paths.log_dir={tmp_path}", "trainer=cpu")
    out = output_dir_of(proc)
    report = json.loads((out / "metrics.json").read_text())["metrics"]
    for key in ("test/sdr_vocals", "test/sdr_mean", "test/loss"):
        assert report[key] == pytest.approx(logged[key], abs=1e-4), key
    text = (out / "report.md").read_text()
    assert f"| bass | {report['test/sdr_bass']:.3f} |" in text and "test/sdr_mean" in proc.stdout


@pytest.mark.slow
def test_separate_cli_on_a_folder(trained, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    test_track = next((trained["data_dir"] / "musdb_synth" / "test").iterdir())
    shutil.copy(test_track / "mixture.wav", inputs / "song.wav")
    mono = sf.read(test_track / "mixture.wav", dtype="float32")[0].mean(axis=1)
    sf.write(inputs / "mono_22k.flac", mono[::2], 22050)
    (inputs / "broken.mp3").write_bytes(b"ID3 this is not an mp3")
    out = tmp_path / "out"
    proc = run_cli(
        "separate",
        f"ckpt={trained['ckpt']}",
        f"input={inputs}",
        f"output={out}",
        "device=cpu",
        check=False,
    )
    # the bad file is reported by name and makes the exit status non-zero; the others are written
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "broken.mp3" in proc.stdout + proc.stderr
    for name in ("song", "mono_22k"):
        files = sorted(p.name for p in (out / name).iterdir())
        assert files == [
            "accompaniment.wav", "bass.wav", "drums.wav", "other.wav", "settings.json", "vocals.wav"
        ], files  # settings.json: the settings record (audiolab.utils.file_jobs)
    mix, rate = sf.read(inputs / "song.wav", dtype="float32", always_2d=True)
    stems = [
        sf.read(out / "song" / f"{t}.wav", dtype="float32", always_2d=True)
        for t in ("vocals", "drums", "bass", "other")
    ]
    assert all(r == 44100 and s.shape == mix.shape for s, r in stems)
    accompaniment = sf.read(out / "song" / "accompaniment.wav", dtype="float32", always_2d=True)[0]
    np.testing.assert_allclose(accompaniment + stems[0][0], mix, atol=1e-5)
    # resampled mono input comes back at the model rate, stereo, same duration
    info = sf.info(str(out / "mono_22k" / "vocals.wav"))
    assert info.samplerate == 44100 and info.channels == 2 and abs(info.duration - 4.0) < 0.01
    assert not list(out.rglob("*.partial"))


@pytest.mark.slow
def test_separate_cli_on_the_real_stem_file_and_errors(trained, tmp_path):
    stem = require_shared("musdb18-sample", "train", "Music Delta - 80s Rock.stem.mp4")
    out = tmp_path / "out"
    run_cli(
        "separate",
        f"ckpt={trained['ckpt']}",
        f"input={stem}",
        f"output={out}",
        "targets=[vocals]",
        "device=cpu",
    )
    vocals, rate = sf.read(out / "Music Delta - 80s Rock" / "vocals.wav", always_2d=True)
    assert rate == 44100 and vocals.shape[1] == 2 and abs(len(vocals) / rate - 7.0) < 0.2
    assert np.isfinite(vocals).all()

    missing = run_cli(
        "separate", f"ckpt={trained['ckpt']}", f"input={tmp_path / 'nope.wav'}", check=False
    )
    assert missing.returncode == 1 and "input not found" in missing.stderr
    no_ckpt = run_cli("separate", f"ckpt={tmp_path / 'x.ckpt'}", f"input={stem}", check=False)
    assert no_ckpt.returncode == 1 and "checkpoint not found" in no_ckpt.stderr
    wrong = run_cli(
        "separate", f"ckpt={trained['ckpt']}", f"input={stem}", "targets=[piano]", check=False
    )
    assert wrong.returncode == 1 and "piano" in wrong.stderr
