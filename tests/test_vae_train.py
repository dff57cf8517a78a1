"""VAE end to end on the real FSDD recordings: training with media logging, then
generate.py from the checkpoint."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
from helpers import compose_config, output_dir_of, require_shared, run_cli

from audiolab.tasks.train import train

TINY_DATA = [
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "data.speakers=[george]",
    "extras.print_config=false",
]
TINY_VAE = ["model.net.filters=[8,8,8,8,8]", "model.net.latent_dim=8", *TINY_DATA]


@pytest.fixture
def fsdd(shared_cache):
    return [f"data.root={require_shared('fsdd')}", f"paths.data_dir={shared_cache}"]


@pytest.mark.slow
def test_vae_logs_grids_and_audio_then_generates(tmp_path, fsdd):
    run_dir = tmp_path / "run"
    cfg = compose_config(
        "train",
        ["data=fsdd", "model=vae", "callbacks=vae", "debug=limit", "trainer.max_epochs=2",
         "callbacks.vae_media.n_items=4", *TINY_VAE, *fsdd],
        run_dir,
    )
    metrics, _ = train(cfg)
    assert metrics["test/lsd"] > 0 and "val/lsd" in metrics
    grids = sorted((run_dir / "media" / "val_spectrograms").glob("step_*.png"))
    assert len(grids) == 2  # one per validation epoch
    waves = sorted((run_dir / "media").glob("val_audio_*/step_*.wav"))
    assert len(waves) == 2 * 2 * 2  # 2 reconstructions + 2 prior samples, per epoch
    audio, rate = sf.read(waves[0])
    assert rate == 22050 and len(audio) == round(0.74 * 22050) and abs(audio).max() > 0

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    out = tmp_path / "gen"
    proc = run_cli("generate", f"ckpt={ckpt}", "n=4", "digit=7", f"output={out}", f"paths.log_dir={tmp_path}")
    files = sorted(p.name for p in out.glob("*.wav"))
    assert files == [f"sample_{i:03d}_digit7.wav" for i in range(4)], proc.stdout
    assert (out / "samples.png").stat().st_size > 0
    bad = run_cli("generate", f"ckpt={ckpt}", "digit=12", f"paths.log_dir={tmp_path}", check=False)
    assert bad.returncode == 1 and "error: digit must be in [0, 10), got 12" in bad.stderr

    # a latent walk between two real recordings of different digits
    recordings = require_shared("fsdd") / "recordings"
    a, b = recordings / "3_george_0.wav", recordings / "8_jackson_1.wav"
    out = tmp_path / "interp"
    run_cli("generate", f"ckpt={ckpt}", f"interpolate=[{a},{b}]", "steps=5", f"output={out}", f"paths.log_dir={tmp_path}")
    files = sorted(out.glob("interp_*.wav"))
    assert [p.name for p in files] == [f"interp_{i:03d}.wav" for i in range(5)]
    audio, rate = sf.read(files[2])
    assert rate == 22050 and len(audio) == round(0.74 * 22050) and abs(audio).max() > 0
    assert (out / "interps.png").stat().st_size > 0
    bad = run_cli("generate", f"ckpt={ckpt}", f"interpolate=[{a}]", f"paths.log_dir={tmp_path}", check=False)
    assert bad.returncode == 1 and "interpolate takes two audio files" in bad.stderr
    unnamed = tmp_path / "clip.wav"
    sf.write(unnamed, sf.read(a)[0], 8000)
    bad = run_cli("generate", f"ckpt={ckpt}", f"interpolate=[{unnamed},{b}]", f"paths.log_dir={tmp_path}", check=False)
    assert bad.returncode == 1 and "pass digit=<0-9> for both" in bad.stderr


@pytest.mark.slow
def test_generate_refuses_what_it_cannot_do(tmp_path, fsdd):
    cfg = compose_config(
        "train", ["data=fsdd", "model=vae_baseline", "debug=limit", "trainer.max_epochs=1", "test=false",
                  *TINY_VAE, *fsdd], tmp_path / "run"
    )
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    proc = run_cli("generate", f"ckpt={ckpt}", "digit=3", f"paths.log_dir={tmp_path}", check=False)
    assert proc.returncode == 1 and "this VAE is not conditional" in proc.stderr
    pitch = compose_config("train", ["debug=limit", "trainer.max_epochs=1", "data.batch_size=8",
                                     "data.train_batches_per_epoch=2", "data.val_clips=2", "data.test_clips=2",
                                     "extras.print_config=false"], tmp_path / "pitch")
    train(pitch)
    proc = run_cli("generate", f"ckpt={tmp_path / 'pitch' / 'checkpoints' / 'last.ckpt'}", f"paths.log_dir={tmp_path}", check=False)
    assert proc.returncode == 1 and "is a PitchModule checkpoint; generate.py needs a VAE checkpoint" in proc.stderr


@pytest.mark.slow
def test_generation_metrics_from_a_trained_classifier(tmp_path, fsdd):
    clf = compose_config(
        "train",
        ["data=fsdd", "model=digit_classifier", "debug=limit", "trainer.max_epochs=1",
         "model.net.channels=[4,8]", *TINY_DATA, *fsdd],
        tmp_path / "clf",
    )
    train(clf)
    clf_ckpt = tmp_path / "clf" / "checkpoints" / "last.ckpt"
    # the metrics are a callback (callbacks=vae lists it, off until it names a classifier)
    vae = compose_config(
        "train",
        ["data=fsdd", "model=vae", "callbacks=vae", "callbacks.vae_media=null", "debug=limit",
         "trainer.max_epochs=1", f"callbacks.generation_metrics.classifier_ckpt={clf_ckpt}",
         "callbacks.generation_metrics.samples_per_class=3", *TINY_VAE, *fsdd],
        tmp_path / "vae",
    )
    metrics, _ = train(vae)
    for key in ("test/real_acc", "test/gen_acc"):
        assert 0.0 <= metrics[key] <= 1.0
    for key in ("test/real_is", "test/gen_is"):
        assert 1.0 - 1e-6 <= metrics[key] <= 10.0 + 1e-6
    assert metrics["test/real_fd"] >= 0 and metrics["test/gen_fd"] >= 0

    # eval.py on the VAE: the classifier is an option of the callback, added on the command
    # line (the test batches of debug=limit, so that the values are those of training's test)
    vae_ckpt = tmp_path / "vae" / "checkpoints" / "last.ckpt"
    generation = ["test/real_acc", "test/real_is", "test/real_fd", "test/gen_is", "test/gen_fd", "test/gen_acc"]
    proc = run_cli(
        "eval", f"ckpt={vae_ckpt}", "+callbacks=generation_metrics",
        f"callbacks.generation_metrics.classifier_ckpt={clf_ckpt}", "callbacks.generation_metrics.samples_per_class=3",
        "trainer.limit_test_batches=2", f"paths.log_dir={tmp_path}",
    )
    assert "test/gen_fd" in proc.stdout and "test/real_is" in proc.stdout
    out = output_dir_of(proc)
    report = json.loads((out / "metrics.json").read_text())["metrics"]
    text = (out / "report.md").read_text()
    # generation metrics with the real data's value beside them
    assert f"| test/gen_fd | {report['test/gen_fd']:.3f} | {report['test/real_fd']:.3f} |" in text
    assert "![spectrograms](report/spectrograms.png)" in text and (out / "report" / "spectrograms.png").stat().st_size > 0
    for key in generation:
        assert report[key] == pytest.approx(metrics[key], rel=1e-6, abs=1e-9), key

    # the deprecated model.classifier_ckpt (earlier configs and checkpoints) still works:
    # the module hands it to the callback, and the values are the same
    proc = run_cli(
        "eval", f"ckpt={vae_ckpt}", f"model.classifier_ckpt={clf_ckpt}", "model.samples_per_class=3",
        "trainer.limit_test_batches=2", f"paths.log_dir={tmp_path}",
    )
    assert "deprecated" in proc.stderr
    old = json.loads((output_dir_of(proc) / "metrics.json").read_text())["metrics"]
    for key in generation:
        assert old[key] == report[key], key
