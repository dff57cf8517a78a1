"""The real-f0 evaluation set (data=mdb_stem_synth) and eval.py on it: clips framed as
audiolab.pitch.predict frames them, metrics on the reference's time base equal to
mir_eval's, one report per dataset."""

from __future__ import annotations

import json
import warnings

import mir_eval
import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import compose_config, output_dir_of, require_shared, run_cli
from test_pitch_metrics import MDB, MDB_NAME, MIR_EVAL_NAMES

from audiolab.audio.io import read_audio
from audiolab.audio.pitch_grid import cents_to_hz
from audiolab.data.pitch_eval import PitchEvalDataModule, find_f0_pairs, pad_collate, read_f0_csv
from audiolab.pitch.inference import frame_audio, prepare_audio
from audiolab.utils.errors import AudiolabError


def test_items_are_whole_clips_with_their_reference():
    root = require_shared(*MDB)
    dm = PitchEvalDataModule(root=str(root))
    dm.setup("test")
    assert len(dm.dataset) == 1
    item = dm.dataset[0]
    audio, rate = read_audio(root / f"{MDB_NAME}.wav")
    x, _ = prepare_audio(audio, rate)
    assert rate == 44100 and torch.equal(item["frames"], frame_audio(x[0], 160))
    n = 1 + x.shape[-1] // 160
    assert item["frames"].shape == (n, 1024) and torch.allclose(item["times"], torch.arange(n, dtype=torch.float64) * 0.01)
    ref_t, ref_f0 = read_f0_csv(root / f"{MDB_NAME}.csv")
    assert torch.equal(item["ref_times"], ref_t) and torch.equal(item["ref_f0"], ref_f0)
    assert len(ref_t) == 1034 and ref_t[1].item() == pytest.approx(128 / 44100, abs=1e-6)
    # the reference on the frames (for the loss): voiced where the reference is, same pitch
    at_ref = np.interp(item["times"].numpy(), ref_t.numpy(), ref_f0.numpy())
    # frames between two voiced reference samples
    inside = np.interp(item["times"].numpy(), ref_t.numpy(), (ref_f0 > 0).double().numpy()) == 1.0
    both = item["voiced"].numpy() & inside
    assert both.sum() > 0.7 * item["voiced"].sum()
    assert np.abs(1200 * np.log2(item["f0"].numpy()[both] / at_ref[both])).max() < 50


def test_batches_of_clips_are_padded_and_marked():
    a = {"frames": torch.ones(3, 4), "times": torch.arange(3.0), "ref_times": torch.arange(5.0), "index": torch.tensor(0)}
    b = {"frames": torch.ones(2, 4), "times": torch.arange(2.0), "ref_times": torch.arange(7.0), "index": torch.tensor(1)}
    batch = pad_collate([a, b])
    assert batch["frames"].shape == (2, 3, 4) and (batch["frames"][1, 2] == 0).all()
    assert torch.isinf(batch["times"][1, 2]) and torch.isnan(batch["ref_times"][0, 5:]).all()


def test_bad_folders_and_tracks_are_refused_by_name(tmp_path):
    with pytest.raises(AudiolabError, match="not found at .*data.root="):
        find_f0_pairs(tmp_path / "missing")
    with pytest.raises(AudiolabError, match="no time,f0 CSV files"):
        find_f0_pairs(tmp_path)
    (tmp_path / "song.csv").write_text("0.0,0.0\n0.01,220.0\n")
    with pytest.raises(AudiolabError, match="song.csv.*needs a <name>.wav"):
        find_f0_pairs(tmp_path)
    sf.write(tmp_path / "song.wav", np.zeros(1600), 16000)
    assert find_f0_pairs(tmp_path) == [(tmp_path / "song.wav", tmp_path / "song.csv")]
    # a header line is allowed
    (tmp_path / "song.csv").write_text("time,f0\n0.0,0.0\n0.01,220.0\n")
    assert read_f0_csv(tmp_path / "song.csv")[1].tolist() == [0.0, 220.0]
    for text, message in [
        ("0.0,nan\n", "NaN or infinite"),
        ("0.01,100\n0.0,100\n", "times must start at 0 s or later and increase"),
        ("0.0,-5\n", "negative f0"),
        ("a,b\nc,d\n", "cannot read the f0 track .*song.csv"),
    ]:
        (tmp_path / "song.csv").write_text(text)
        with pytest.raises(AudiolabError, match=message):
            read_f0_csv(tmp_path / "song.csv")
    with pytest.raises(AudiolabError, match="evaluation set: use it with eval.py"):
        PitchEvalDataModule(root=str(tmp_path)).train_dataloader()


@pytest.fixture(scope="module")
def pitch_checkpoint(tmp_path_factory):
    """A pitch checkpoint: pretrained CREPE tiny after one synthetic training step."""
    from audiolab.tasks.train import train

    out = tmp_path_factory.mktemp("pitch_train")
    cfg = compose_config(
        "train",
        [
            "debug=limit", "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
            "test=false", "model.pretrained=tiny", "data.batch_size=8", "data.train_batches_per_epoch=4",
            "data.val_clips=2", "data.eval_batch_size=2", "extras.print_config=false",
        ],
        out,
    )
    train(cfg)
    return out / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_eval_on_mdb_stem_synth_matches_mir_eval(pitch_checkpoint, tmp_path):
    """eval.py ckpt=<pitch checkpoint> data=mdb_stem_synth: the stored data config is
    replaced, metrics are computed on the reference's time base and equal mir_eval's on the
    same network outputs; report.md names the dataset and credits it."""
    from audiolab.pitch.inference import load_model
    from audiolab.utils.checkpoint import load_module

    root = require_shared(*MDB)
    proc = run_cli(
        "eval", f"ckpt={pitch_checkpoint}", "data=mdb_stem_synth", f"data.root={root}",
        f"paths.log_dir={tmp_path}", "trainer=cpu", "extras.print_config=false",
    )
    out = output_dir_of(proc)
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]

    module, _ = load_module(pitch_checkpoint)
    net = load_model(pitch_checkpoint)
    item = PitchEvalDataModule(root=str(root)).dataset[0]
    with torch.no_grad():
        activations = net(item["frames"])
    cents, period, voiced = module.estimate(activations)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = mir_eval.melody.evaluate(
            item["ref_times"].numpy(), item["ref_f0"].numpy(), item["times"].numpy(),
            cents_to_hz(cents).double().numpy(), est_voicing=voiced.double().numpy(),
        )
    for name, theirs in MIR_EVAL_NAMES.items():
        assert metrics[f"test/{name}"] == pytest.approx(want[theirs], abs=1e-6), name
    assert metrics["test/rpa"] > 0.9
    text = (out / "report.md").read_text()
    assert "| mdb_stem_synth | rpa |" in text and "Data: MDB-stem-synth" in text
    assert (out / "report" / "contours.png").stat().st_size > 0


def test_padded_frames_of_frame_labelled_clips_are_not_scored():
    """Clips of different lengths in one batch (real-audio training data): the padding
    (infinite times) must not count, so a padded batch scores like its clips alone."""
    from audiolab.models.pitch import PitchModule
    from audiolab.nets.crepe import Crepe

    torch.manual_seed(0)
    module = PitchModule(Crepe("tiny"), lambda params: torch.optim.Adam(params)).eval()
    n, pad = 12, 7
    frames = torch.randn(1, n + pad, 1024)
    frames[:, n:] = 0.0  # the padding is silence, as pad_collate makes it
    f0 = torch.full((1, n + pad), 220.0)
    voiced = torch.ones(1, n + pad)
    voiced[:, n:] = 0
    times = torch.arange(n + pad, dtype=torch.float32)[None] * 0.01
    times[:, n:] = torch.inf
    with torch.no_grad():
        module.evaluation_step({"frames": frames, "f0": f0, "voiced": voiced, "times": times}, "test")
        padded = {k: v.item() for k, v in module.test_metrics.compute().items()}
        module.test_metrics.reset()
        module.evaluation_step({"frames": frames[:, :n], "f0": f0[:, :n], "voiced": voiced[:, :n], "times": times[:, :n]}, "test")
        alone = {k: v.item() for k, v in module.test_metrics.compute().items()}
    assert padded == pytest.approx(alone, abs=1e-7)
