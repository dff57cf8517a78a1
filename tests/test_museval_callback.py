"""The museval callback: per-track JSON in museval's format, museval's aggregate, modes and
how a model's targets supply them, backends (and their consistency check), resuming, the
validation schedule, the real MUSDB18 preview through the same code path; and cSDR.

Runs on a tiny synthetic MUSDB (3-s tracks) with a tiny TFC-TDF U-Net (random weights:
what is scored does not need to be good, only the same in the callback and in the checks).
"""

from __future__ import annotations

import json
import logging
import re
import shutil

import hydra
import jsonschema
import lightning as L
import museval
import numpy as np
import pytest
import torch
from helpers import compose_config, output_dir_of, require_shared, run_cli

from audiolab.callbacks.museval import TABLE_COLUMNS, MusevalCallback
from audiolab.data.musdb import default_setup, target_definitions
from audiolab.metrics.bss_eval import bss_eval_v4
from audiolab.metrics.separation import csdr, usdr
from audiolab.metrics.track_eval import METRICS, MODES, MusevalError, plan_estimates
from audiolab.utils.hydra import instantiate_callbacks, instantiate_loggers

FOUR = ["vocals", "drums", "bass", "other"]
TINY_NET = [
    "model.net.n_fft=256",
    "model.net.hop_length=64",
    "model.net.dim_f=64",
    "model.net.num_subbands=2",
    "model.net.num_scales=2",
    "model.net.channels=4",
    "model.net.channel_growth=4",
    "model.net.growth=4",
    "model.net.bottleneck_factor=4",
    "model.net.min_bottleneck_units=4",
]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    return tmp_path_factory.mktemp("museval_data") / "musdb_synth"


def synth_overrides(root) -> list[str]:
    return [
        "data=musdb_synth",
        f"data.root={root}",
        "data.synthetic.n_train=1",
        "data.synthetic.n_valid=1",
        "data.synthetic.n_test=2",
        "data.synthetic.duration=3",
        "data.chunk_seconds=1",
        "data.samples_per_track=1",
        "data.batch_size=1",
        "data.valid_excerpt_seconds=1",
    ]


def run(out, overrides, fit: bool = False):
    """Compose the real configs (tiny TFC-TDF, callbacks=separation_museval, CSV logger),
    run the test loop (or fit), return the trainer, module and museval callback."""
    cfg = compose_config(
        "train",
        [
            "model=tfc_tdf",
            *TINY_NET,
            "callbacks=separation_museval",
            "callbacks.rich_progress_bar=null",
            "callbacks.model_summary=null",
            "callbacks.museval.workers=1",
            "trainer=cpu",
            "logger=csv",
            # what train.py fills in from the module (the checkpoint callback needs them)
            "optimized_metric=val/sdr_mean",
            "optimized_mode=max",
            *overrides,
        ],
        out,
    )
    L.seed_everything(0)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    callbacks = instantiate_callbacks(cfg.callbacks)
    trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=instantiate_loggers(cfg.logger)
    )
    if fit:
        trainer.fit(model, datamodule=datamodule)
    else:
        trainer.test(model, datamodule=datamodule, verbose=False)
    callback = next(c for c in callbacks if isinstance(c, MusevalCallback))
    return trainer, model, callback, datamodule


def first_test_track(datamodule, mode):
    """The first test track with the references of ``mode``."""
    return datamodule.full_tracks("test", targets=MODES[mode])[0]


def estimates_of(model, track, mode):
    """What the callback scores for ``track``: the module's separate() through the mode's plan."""
    plan = plan_estimates(mode, model.targets, target_definitions(default_setup()))
    with torch.no_grad():
        return plan(model.eval().separate(track["mixture"]), track["mixture"])


def frames(doc) -> dict[str, dict[str, np.ndarray]]:
    return {
        t["name"]: {
            m: np.array([f["metrics"][m] for f in t["frames"]], dtype=float) for m in METRICS
        }
        for t in doc["targets"]
    }


# -- the callback on the synthetic set ------------------------------------------------------
@pytest.fixture(scope="module")
def four_stem_run(synth_root, tmp_path_factory):
    """Four-stem model, fast backend, scored by the test loop of the real configs."""
    out = tmp_path_factory.mktemp("four_stems")
    overrides = [*synth_overrides(synth_root), f"data.targets=[{','.join(FOUR)}]"]
    trainer, model, callback, dm = run(out, [*overrides, "callbacks.museval.test_backend=fast"])
    return {
        "out": out,
        "overrides": overrides,
        "trainer": trainer,
        "model": model,
        "callback": callback,
        "dm": dm,
    }


def test_writes_museval_json_and_aggregates_like_evalstore(four_stem_run):
    trainer, callback = four_stem_run["trainer"], four_stem_run["callback"]
    root = four_stem_run["out"] / "museval"
    names = [ref.name for ref in four_stem_run["dm"].tracks("test")]
    assert sorted(callback.last_run["evaluated"]) == sorted(names) and len(names) == 2
    # one museval-format JSON per track: museval's schema, its loader, its target order
    schema = museval.TrackStore("x").schema
    docs = {}
    for name in names:
        doc = json.loads((root / "test" / f"{name}.json").read_text())
        jsonschema.validate(doc, schema)
        assert [t["name"] for t in doc["targets"]] == list(MODES["four_stems"])
        assert len(museval.json2df(doc, name)) == 4 * 4 * 3  # targets x metrics x 1-s frames
        assert doc["audiolab"]["settings"]["mode"] == "four_stems"
        assert doc["audiolab"]["settings"]["backend"] == "fast"
        docs[name] = doc

    # the aggregate: median over frames, then over tracks, computed here with numpy, and
    # museval's own EvalStore reading the same folder
    store = museval.EvalStore()
    store.add_eval_dir(root)
    evalstore = store.agg_frames_tracks_scores()
    aggregate = json.loads((root / "test_aggregate.json").read_text())
    assert aggregate["mode"] == "four_stems" and aggregate["backend"] == "fast"
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for target in MODES["four_stems"]:
        for metric in METRICS:
            per_track = [np.nanmedian(frames(d)[target][metric]) for d in docs.values()]
            expected = float(np.median(per_track))
            assert aggregate["scores"][target][metric] == pytest.approx(expected, abs=1e-9)
            assert evalstore[(target, metric)] == pytest.approx(expected, abs=1e-9)
            assert logged[f"test/museval/{metric.lower()}_{target}"] == pytest.approx(
                expected, abs=1e-4
            )
        usdr_mean = np.mean([d["audiolab"]["usdr"][target] for d in docs.values()])
        assert logged[f"test/museval/usdr_{target}"] == pytest.approx(usdr_mean, abs=1e-4)
    # the per-track table, in the run folder (CSV logger: no W&B table)
    lines = (root / "test_tracks.csv").read_text().splitlines()
    assert lines[0].split(",") == ["track", "target", *METRICS, "uSDR", "cSDR"]
    assert len(lines) == 1 + 2 * 4


def test_json_scores_are_bss_eval_v4_of_the_separated_track(four_stem_run):
    """The stored frames are bss_eval_v4 of what the module's separate() gives (the fast
    backend), and uSDR / cSDR are those of the same estimates."""
    model, dm = four_stem_run["model"], four_stem_run["dm"]
    track = first_test_track(dm, "four_stems")
    est = estimates_of(model, track, "four_stems")
    ref = track["targets"]
    scores = bss_eval_v4(ref.transpose(1, 2), est.transpose(1, 2), 44100, 44100, 512)
    doc = json.loads(
        (four_stem_run["out"] / "museval" / "test" / f"{track['name']}.json").read_text()
    )
    stored = frames(doc)
    # the file has 5 decimals, and the projections round differently with the worker's one
    # BLAS thread than with this process's several
    for i, target in enumerate(MODES["four_stems"]):
        for metric in METRICS:
            np.testing.assert_allclose(
                stored[target][metric], scores[metric.lower()][i].numpy(), atol=1e-4
            )
    np.testing.assert_allclose(
        list(doc["audiolab"]["usdr"].values()), usdr(est, ref).numpy(), atol=1e-9
    )
    np.testing.assert_allclose(
        list(doc["audiolab"]["csdr"].values()), csdr(est, ref, 44100).numpy(), atol=1e-9
    )


def test_second_run_evaluates_nothing_and_a_broken_file_is_redone(four_stem_run, tmp_path):
    scores = tmp_path / "museval"
    shutil.copytree(four_stem_run["out"] / "museval", scores)
    files = sorted((scores / "test").glob("*.json"))
    before = {p.name: p.stat().st_mtime_ns for p in files}
    resume = [
        *four_stem_run["overrides"],
        "callbacks.museval.test_backend=fast",
        f"callbacks.museval.output_dir={scores}",
    ]
    trainer, _, callback, _ = run(tmp_path / "again", resume)
    assert callback.last_run["evaluated"] == [] and len(callback.last_run["reused"]) == 2
    assert {p.name: p.stat().st_mtime_ns for p in files} == before
    first = json.loads((four_stem_run["out"] / "museval" / "test_aggregate.json").read_text())
    assert float(trainer.callback_metrics["test/museval/sdr_vocals"]) == pytest.approx(
        first["scores"]["vocals"]["SDR"], abs=1e-4
    )
    # a truncated file (what a killed writer without os.replace would leave) is scored again
    files[0].write_text(files[0].read_text()[:200])
    resume.append("callbacks.museval.workers=0")  # in process: no pool start-up
    _, _, callback, _ = run(tmp_path / "truncated", resume)
    assert callback.last_run["evaluated"] == [files[0].stem]
    # and files scored with other settings (here: the other mode) are all scored again
    _, _, callback, _ = run(
        tmp_path / "other", [*resume, "callbacks.museval.mode=vocals_accompaniment"]
    )
    assert sorted(callback.last_run["evaluated"]) == sorted(p.stem for p in files)
    assert not list(scores.rglob("*.tmp"))


def test_both_backends_agree_and_museval_scores_are_written(synth_root, tmp_path, caplog):
    """Vocals + accompaniment of a four-stem model (accompaniment = drums + bass + other),
    both backends: the JSON holds museval's own numbers and the recorded differences are
    those between museval and bss_eval_v4 on the same estimates."""
    overrides = [
        *synth_overrides(synth_root),
        f"data.targets=[{','.join(FOUR)}]",
        "callbacks.museval.mode=vocals_accompaniment",
        "callbacks.museval.test_backend=both",
        "callbacks.museval.tolerance_db=1e-12",
    ]
    with caplog.at_level(logging.WARNING, logger="audiolab"):
        _, model, _, dm = run(tmp_path, overrides)
    track = first_test_track(dm, "vocals_accompaniment")
    est = estimates_of(model, track, "vocals_accompaniment")
    ref = track["targets"]
    stems = estimates_of(model, track, "four_stems")
    torch.testing.assert_close(est[1], stems[1:].sum(0), atol=1e-6, rtol=0)
    refs, ests = ref.transpose(1, 2).double().numpy(), est.transpose(1, 2).double().numpy()
    sdr, isr, sir, sar = museval.evaluate(refs, ests)
    ours = bss_eval_v4(refs, ests, 44100, 44100, 512)
    doc = json.loads((tmp_path / "museval" / "test" / f"{track['name']}.json").read_text())
    assert doc["audiolab"]["settings"]["recipes"] == {
        "vocals": "vocals",
        "accompaniment": "drums + bass + other",
    }
    stored = frames(doc)
    diffs = doc["audiolab"]["backends"]["max_abs_diff"]
    for metric, theirs in zip(("SDR", "ISR", "SIR", "SAR"), (sdr, isr, sir, sar), strict=True):
        for i, target in enumerate(MODES["vocals_accompaniment"]):
            np.testing.assert_allclose(stored[target][metric], theirs[i], atol=1e-5)  # 5 decimals
        # the same up to BLAS rounding (the worker runs one thread, this process several)
        independent = np.nanmax(np.abs(theirs - ours[metric.lower()].numpy()))
        assert diffs[metric] == pytest.approx(independent, abs=1e-6)
    # SDR needs no ill-conditioned projection: the two agree to rounding
    assert diffs["SDR"] < 1e-6
    aggregate = json.loads((tmp_path / "museval" / "test_aggregate.json").read_text())
    assert aggregate["backends"]["max_abs_diff"]["SDR"] >= diffs["SDR"]
    # a tolerance of 1e-12 dB is below float64 rounding: the consistency warning fires
    assert "disagree" in caplog.text


def count_separations(monkeypatch) -> list[int]:
    """Count the tracks SeparationModule.separate() is asked for (a batch counts each)."""
    from audiolab.models.separation import SeparationModule

    calls: list[int] = []
    original = SeparationModule.separate

    def counting(self, mixture, progress=False):
        calls.append(1 if mixture.ndim == 2 else mixture.shape[0])
        return original(self, mixture, progress)

    monkeypatch.setattr(SeparationModule, "separate", counting)
    return calls


def test_test_step_estimates_are_scored_without_separating_again(synth_root, tmp_path, monkeypatch):
    """On test, the callback scores the estimates the test step returned: every test track
    is separated once (by the test step), and the scores are those of that separation."""
    calls = count_separations(monkeypatch)
    overrides = [
        *synth_overrides(synth_root),
        "callbacks.museval.test_backend=fast",
        "callbacks.museval.workers=0",
    ]
    trainer, model, callback, dm = run(tmp_path, overrides)
    names = [ref.name for ref in dm.tracks("test")]
    assert sum(calls) == len(names) == 2
    assert callback.last_run["handed_over"] == names and callback.last_run["separated"] == []
    assert sorted(callback.last_run["evaluated"]) == sorted(names)
    # the stored scores are bss_eval_v4 of what the module's separate() gives
    track = first_test_track(dm, "vocals_accompaniment")
    est = estimates_of(model, track, "vocals_accompaniment")
    scores = bss_eval_v4(track["targets"].transpose(1, 2), est.transpose(1, 2), 44100, 44100, 512)
    stored = frames(json.loads((tmp_path / "museval" / "test" / f"{track['name']}.json").read_text()))
    for i, target in enumerate(MODES["vocals_accompaniment"]):
        np.testing.assert_allclose(stored[target]["SDR"], scores["sdr"][i].numpy(), atol=1e-4)
    # the aggregate is kept in memory too, as written
    written = json.loads((tmp_path / "museval" / "test_aggregate.json").read_text())
    assert callback.aggregates["test"].record == written
    assert callback.aggregates["test"].tag == "test"
    assert "val" not in callback.aggregates


def test_other_test_split_is_separated_here_and_reported(synth_root, tmp_path, monkeypatch):
    """callbacks.museval.test_split=valid: the test loop separates the test tracks, the
    callback the validation tracks (not the test loop's), writes valid_aggregate.json, and
    eval.py's report shows that aggregate (handed over in memory, not re-read from a file)."""
    from audiolab.reports import write_report

    calls = count_separations(monkeypatch)
    overrides = [
        *synth_overrides(synth_root),
        "callbacks.museval.test_backend=fast",
        "callbacks.museval.workers=0",
        "callbacks.museval.test_split=valid",
    ]
    trainer, model, callback, dm = run(tmp_path, overrides)
    valid = [ref.name for ref in dm.tracks("valid")]
    assert sum(calls) == len(dm.tracks("test")) + len(valid)
    assert callback.last_run["separated"] == valid and callback.last_run["handed_over"] == []
    root = tmp_path / "museval"
    assert sorted(p.name for p in root.iterdir()) == [
        "valid",
        "valid_aggregate.json",
        "valid_tracks.csv",
        "valid_tracks.md",
    ]
    aggregate = json.loads((root / "valid_aggregate.json").read_text())
    assert aggregate["split"] == "valid" and aggregate["tracks"] == valid
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert metrics["test/museval/sdr_vocals"] == pytest.approx(
        aggregate["scores"]["vocals"]["SDR"], abs=1e-4
    )
    # the report asks the callback: the files may be gone
    shutil.rmtree(root)
    (tmp_path / "eval").mkdir()
    report = write_report(tmp_path / "eval", model, dm, metrics, {"ckpt": "x.ckpt"}, trainer)
    text = (tmp_path / "eval" / "report.md").read_text()
    assert "## museval (BSSEval v4, mode `vocals_accompaniment`, backend `fast`)" in text
    assert "tracks of split `valid`" in text
    assert f"| vocals | {aggregate['scores']['vocals']['SDR']:.3f} |" in text
    assert ("museval/sdr_vocals", aggregate["scores"]["vocals"]["SDR"], None) in report.headline
    assert (tmp_path / "eval" / "report" / "sdr_per_track.png").stat().st_size > 0


def test_validation_every_n_epochs(synth_root, tmp_path):
    overrides = [
        *synth_overrides(synth_root),
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=1",
        "callbacks.museval.every_n_val_epochs=2",
        "callbacks.museval.val_backend=fast",
        "trainer.num_sanity_val_steps=0",
    ]
    trainer, _, _, _ = run(tmp_path, overrides, fit=True)
    root = tmp_path / "museval"
    assert sorted(p.name for p in root.iterdir()) == [
        "valid_epoch001",
        "valid_epoch001_aggregate.json",
        "valid_epoch001_tracks.csv",
        "valid_epoch001_tracks.md",
    ]
    aggregate = json.loads((root / "valid_epoch001_aggregate.json").read_text())
    assert aggregate["mode"] == "vocals_accompaniment" and aggregate["epoch"] == 1
    assert "val/museval/sdr_vocals" in trainer.callback_metrics


def test_real_preview_track_matches_eval_mus_track(tmp_path):
    """The real MUSDB18 preview (.stem.mp4, read by musdb) through the callback with the
    museval backend gives what museval.eval_mus_track gives for the same estimates."""
    preview = require_shared("musdb18-sample", "train", "Music Delta - 80s Rock.stem.mp4").parents[
        1
    ]
    overrides = [
        "data=musdb",
        f"data.root={preview}",
        "data.splits.valid.split=null",
        "data.splits.test.subsets=train",
        "data.chunk_seconds=2",
    ]
    trainer, model, callback, dm = run(tmp_path, overrides)
    assert callback.last_run["evaluated"] == ["Music Delta - 80s Rock"]
    track = dm.full_tracks("test")[0]
    est = estimates_of(model, track, "vocals_accompaniment")
    mus_track = dm.tracks("test")[0].track
    expected = museval.eval_mus_track(
        mus_track,
        {t: est[i].T.double().numpy() for i, t in enumerate(MODES["vocals_accompaniment"])},
    )
    doc = json.loads((tmp_path / "museval" / "test" / "Music Delta - 80s Rock.json").read_text())
    ours, theirs = frames(doc), frames(json.loads(expected.json))
    assert list(ours) == list(theirs) == ["vocals", "accompaniment"]
    for target in ours:
        for metric in METRICS:
            # musdb's references are float64 decodes, the data module's float32: 1e-3 dB
            np.testing.assert_allclose(ours[target][metric], theirs[target][metric], atol=1e-3)
    assert float(trainer.callback_metrics["test/museval/sdr_vocals"]) == pytest.approx(
        float(np.nanmedian(theirs["vocals"]["SDR"])), abs=1e-3
    )


@pytest.mark.slow
def test_ddp_splits_tracks_across_ranks_and_aggregates_on_rank_zero(tmp_path):
    """eval.py on two simulated DDP ranks (CPU, gloo): each rank scores its share of the
    tracks, rank zero aggregates all of them and logs the result."""
    # three test tracks, so the ranks get different shares
    data = [*synth_overrides(tmp_path / "musdb_synth"), "data.synthetic.n_test=3"]
    proc = run_cli(
        "train",
        *data,
        "model=tfc_tdf",
        *TINY_NET,
        "trainer=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "test=false",
        "callbacks=separation",
        "callbacks.rich_progress_bar=null",
        "extras.print_config=false",
        f"paths.log_dir={tmp_path / 'train'}",
    )
    ckpt = next((output_dir_of(proc) / "checkpoints").glob("epoch_*.ckpt"))
    proc = run_cli(
        "eval",
        f"ckpt={ckpt}",
        "trainer=ddp_sim",
        "+callbacks=museval",
        "callbacks.museval.test_backend=fast",
        "callbacks.museval.workers=1",
        f"paths.log_dir={tmp_path / 'eval'}",
    )
    run_dir = output_dir_of(proc)
    # rank 0 scores tracks 0 and 2, rank 1 track 1
    shares = re.findall(
        r"museval test \(vocals_accompaniment, fast\): (\d) track", proc.stdout + proc.stderr
    )
    assert sorted(shares) == ["1", "2"], proc.stdout[-3000:]
    # the ranks scored the estimates of their own test steps: nothing was separated again
    handed = re.findall(r"\((\d) from the test step, 0 separated here\)", proc.stdout + proc.stderr)
    assert sorted(handed) == ["1", "2"], proc.stdout[-3000:]
    aggregate = json.loads((run_dir / "museval" / "test_aggregate.json").read_text())
    assert len(aggregate["tracks"]) == 3
    store = museval.EvalStore()
    store.add_eval_dir(run_dir / "museval")
    expected = store.agg_frames_tracks_scores()
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    for target in MODES["vocals_accompaniment"]:
        assert metrics[f"test/museval/sdr_{target}"] == pytest.approx(
            expected[(target, "SDR")], abs=1e-4
        )
    # eval.py's report (rank zero only) carries the museval aggregate and the box plots
    report = (run_dir / "report.md").read_text()
    vocals = aggregate["scores"]["vocals"]["SDR"]
    assert "## museval (BSSEval v4, mode `vocals_accompaniment`, backend `fast`)" in report
    assert f"| vocals | {vocals:.3f} |" in report
    assert (run_dir / "report" / "sdr_per_track.png").stat().st_size > 0


def test_callback_runs_before_weight_averaging():
    """EMA swaps its averaged weights out in its own on_validation_epoch_end: the museval
    callback moves itself in front of it, so it scores the weights validation scored."""
    ema, callback = L.pytorch.callbacks.EMAWeightAveraging(), MusevalCallback()
    trainer = L.Trainer(
        callbacks=[ema, callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    callback.setup(trainer, None, "fit")
    assert trainer.callbacks.index(callback) < trainer.callbacks.index(ema)


def test_per_track_table_goes_to_wandb(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from lightning.pytorch.loggers import WandbLogger

    from audiolab.utils.media import log_table

    calls = []
    monkeypatch.setattr(WandbLogger, "log_table", lambda self, **kw: calls.append(kw))
    trainer = SimpleNamespace(loggers=[WandbLogger(mode="disabled", save_dir=str(tmp_path))])
    rows = [["track a", "vocals", 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]
    log_table(trainer, "test/museval/tracks", TABLE_COLUMNS, rows, step=7)
    assert calls == [dict(key="test/museval/tracks", columns=TABLE_COLUMNS, data=rows, step=7)]


# -- modes: which estimates a model's targets supply -------------------------------------------
@pytest.mark.parametrize(
    "mode,model_targets,recipes",
    [
        ("vocals_accompaniment", ["vocals", "accompaniment"], ["vocals", "accompaniment"]),
        ("vocals_accompaniment", FOUR, ["vocals", "drums + bass + other"]),
        ("vocals_accompaniment", ["vocals"], ["vocals", "mixture - vocals"]),
        ("vocals_accompaniment", ["accompaniment", "vocals"], ["vocals", "accompaniment"]),
        ("four_stems", ["drums", "bass", "other", "vocals"], ["vocals", "drums", "bass", "other"]),
        (
            "four_stems",
            ["vocals", "drums", "bass"],
            ["vocals", "drums", "bass", "mixture - vocals - drums - bass"],
        ),
    ],
)
def test_plan_forms_the_mode_estimates(mode, model_targets, recipes):
    definitions = target_definitions(default_setup())
    plan = plan_estimates(mode, model_targets, definitions)
    assert list(plan.recipes.values()) == recipes
    gen = torch.Generator().manual_seed(0)
    sources = {s: torch.randn(2, 100, generator=gen) for s in ("vocals", "drums", "bass", "other")}
    mixture = sum(sources.values())

    def target(name):
        return sum(g * sources[s] for s, g in definitions[name].items())

    out = plan(torch.stack([target(t) for t in model_targets]), mixture)
    torch.testing.assert_close(
        out, torch.stack([target(t) for t in MODES[mode]]), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize(
    "mode,model_targets,fix",
    [
        ("four_stems", ["vocals", "accompaniment"], "callbacks.museval.mode=vocals_accompaniment"),
        ("four_stems", ["vocals"], "data.targets=[vocals, drums, bass, other]"),
        ("vocals_accompaniment", ["bass"], "vocals or accompaniment among data.targets"),
    ],
)
def test_plan_refuses_modes_the_model_cannot_supply(mode, model_targets, fix):
    with pytest.raises(MusevalError, match="cannot be formed") as err:
        plan_estimates(mode, model_targets, target_definitions(default_setup()))
    assert fix in str(err.value) and str(model_targets) in str(err.value)


def test_bad_options_are_refused():
    with pytest.raises(MusevalError, match="mode must be"):
        MusevalCallback(mode="stems")
    with pytest.raises(MusevalError, match="test_backend must be one of fast, museval, both"):
        MusevalCallback(test_backend="bsseval")
    with pytest.raises(MusevalError, match="workers"):
        MusevalCallback(workers=-1)


# -- cSDR ---------------------------------------------------------------------------------------
def test_csdr_is_the_median_of_chunk_sdrs():
    rng = np.random.default_rng(0)
    chunk, n_chunks = 50, 6
    length = chunk * n_chunks + 17  # a trailing partial chunk, dropped
    ref = rng.standard_normal((3, 2, 2, length))  # (B, S, C, T)
    est = ref + rng.uniform(0.1, 2.0, (3, 2, 1, 1)) * rng.standard_normal(ref.shape)
    ref[0, 1, :, :chunk] = 0.0  # a silent reference chunk
    est[0, 1, :, :chunk] = 0.0
    expected = np.empty((3, 2))
    for b in range(3):
        for s in range(2):
            scores = []
            for k in range(n_chunks):
                r = ref[b, s, :, k * chunk : (k + 1) * chunk]
                e = est[b, s, :, k * chunk : (k + 1) * chunk]
                scores.append(10 * np.log10((np.sum(r**2) + 1e-7) / (np.sum((r - e) ** 2) + 1e-7)))
            expected[b, s] = np.median(scores)  # even count: mean of the middle two
    got = csdr(torch.from_numpy(est), torch.from_numpy(ref), chunk)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-10)
    # a signal shorter than a chunk is one chunk: its uSDR
    short = csdr(torch.from_numpy(est[..., :30]), torch.from_numpy(ref[..., :30]), chunk)
    np.testing.assert_allclose(
        short.numpy(),
        usdr(torch.from_numpy(est[..., :30]), torch.from_numpy(ref[..., :30])).numpy(),
    )
