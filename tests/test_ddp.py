"""DDP: every task trained with ``trainer=ddp_sim`` (two CPU processes, gloo) through the
real entry point, and a multirun of DDP jobs. Each run must leave exactly one run dir (one
``.hydra/``), one set of checkpoints and the same weights on both ranks, and its validation
metrics must equal a single-process validation of the same weights on the same data (the
ranks' shares are reduced, not rank zero's alone reported). Plus the pieces alone:
HydraDDPStrategy's command for ranks > 0, its clean-up between multirun jobs, and the
weights checksum."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import hydra
import lightning as L
import pytest
import torch
from helpers import CONFIG_DIR, RUN_DIR_NAME, compose_config, output_dir_of, require_shared, run_cli
from omegaconf import OmegaConf, open_dict
from test_museval_callback import TINY_NET, synth_overrides

from audiolab.callbacks.generation_metrics import GenerationMetricsCallback
from audiolab.callbacks.weights_check import (
    WeightsCheck,
    WeightsMismatchError,
    checksums,
    tensor_checksum,
)
from audiolab.tasks.train import train
from audiolab.utils import distributed
from audiolab.utils.checkpoint import load_checkpoint, stored_config
from audiolab.utils.distributed import quote_override_value, rank_command

# every DDP run: two CPU ranks, one epoch, CSV metrics, and each rank writing the checksums
# of its weights at the end of fit (the callback also compares them itself)
DDP = [
    "trainer=ddp_sim",
    "trainer.max_epochs=1",
    "extras.print_config=false",
    "callbacks.rich_progress_bar=null",
    "callbacks.model_summary=null",
    "+callbacks.weights_check._target_=audiolab.callbacks.weights_check.WeightsCheck",
    "+callbacks.weights_check.record_dir=${paths.output_dir}",
]
# pitch: 2 training batches of 4 clips per epoch (one per rank), 4 validation clips
PITCH = [
    "data.batch_size=4",
    "data.train_batches_per_epoch=2",
    "data.val_clips=4",
    "data.test_clips=2",
    "data.eval_batch_size=1",
]


def ddp_train(log_dir: Path, *overrides: str, logger: str = "csv") -> Path:
    """``python src/train.py trainer=ddp_sim ...``; checks what every DDP run must leave
    behind and returns its run dir."""
    proc = run_cli("train", *DDP, f"logger={logger}", *overrides, f"paths.log_dir={log_dir}")
    run_dir = output_dir_of(proc)
    assert proc.stdout.count("Output dir:") == 1, "only rank zero prints the run dir"
    check_run_dir(log_dir, run_dir)
    assert sorted(log_dir.iterdir()) == [log_dir / "train"], sorted(log_dir.iterdir())
    assert sorted((log_dir / "train").iterdir()) == [run_dir], "one run dir, none for rank 1"
    assert RUN_DIR_NAME.match(run_dir.name), run_dir
    return run_dir


def check_run_dir(log_dir: Path, run_dir: Path) -> None:
    """One ``.hydra/``, one best and one last checkpoint, rank 1's log beside rank 0's, and
    the same weights on both ranks (equal to those in last.ckpt)."""
    assert sorted(log_dir.rglob(".hydra")) == [run_dir / ".hydra"]
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    ckpts = sorted(log_dir.rglob("*.ckpt"))
    assert ckpts == [run_dir / "checkpoints" / "epoch_000.ckpt", run_dir / "checkpoints" / "last.ckpt"], ckpts
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in (run_dir / "train.rank1.log").read_text()
    assert "identical on all 2 ranks" in (run_dir / "train.log").read_text()

    records = [json.loads((run_dir / f"weights_rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["when"]) for r in records] == [(0, 2, "fit end"), (1, 2, "fit end")]
    assert records[0]["pid"] != records[1]["pid"]
    assert records[0]["global_step"] == records[1]["global_step"] > 0
    assert records[0]["checksums"] == records[1]["checksums"]
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    saved = checksums((name, state[name]) for name in records[0]["checksums"])
    assert saved == records[0]["checksums"], "rank zero's weights are the ones checkpointed"


def logged_metrics(run_dir: Path, stage: str) -> dict[str, float]:
    """The ``<stage>/...`` values of the one CSV row that has them (one epoch)."""
    rows = list(csv.DictReader(open(next(run_dir.glob("csv/version_*/metrics.csv")))))
    rows = [r for r in rows if any(k.startswith(f"{stage}/") and v for k, v in r.items())]
    assert len(rows) == 1, rows
    return {k: float(v) for k, v in rows[0].items() if k.startswith(f"{stage}/") and v}


def single_process(run_dir: Path, stage: str, ckpt: str = "last.ckpt", callbacks=()) -> dict[str, float]:
    """Validation (or test) of a checkpoint in this process, one device, on the data of the
    run's stored config, with ``callbacks``."""
    checkpoint = load_checkpoint(run_dir / "checkpoints" / ckpt)
    run = OmegaConf.create(stored_config(checkpoint))
    datamodule = hydra.utils.instantiate(run.data)
    model = hydra.utils.instantiate(run.model)
    model.load_state_dict(checkpoint["state_dict"])
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
    )
    run_stage = trainer.validate if stage == "val" else trainer.test
    return {k: float(v) for k, v in run_stage(model, datamodule=datamodule, verbose=False)[0].items()}


def assert_same_metrics(ddp: dict[str, float], single: dict[str, float], names: list[str]) -> None:
    for name in names:
        assert name in ddp and name in single, (name, sorted(ddp), sorted(single))
        assert ddp[name] == pytest.approx(single[name], rel=1e-5, abs=0.0), (name, ddp[name], single[name])


@pytest.fixture
def fsdd(shared_cache):
    return [f"data.root={require_shared('fsdd')}", f"paths.data_dir={shared_cache}"]


@pytest.mark.slow
def test_pitch_trains_under_ddp(tmp_path):
    """CREPE tiny from the published weights on noisy tones (scores neither 0 nor 1), 2
    validation clips per rank with their own voiced frames: the ratios must be those of all
    frames of the 4 clips."""
    noisy = ["data.renderer.snr_db=[-10.0,0.0]", "data.renderer.clean_prob=0.0"]
    run_dir = ddp_train(tmp_path, *PITCH, *noisy, "model.pretrained=tiny")
    # 8 training clips: 4 per rank, one step
    assert json.loads((run_dir / "weights_rank0.json").read_text())["global_step"] == 1
    single = single_process(run_dir, "val")
    assert 0 < single["val/rpa"] < 1 and 0 < single["val/overall_accuracy"] < 1, single
    names = ["val/rpa", "val/rca", "val/voicing_recall", "val/voicing_false_alarm", "val/overall_accuracy", "val/loss"]
    assert_same_metrics(logged_metrics(run_dir, "val"), single, names)
    assert "test/rpa" in logged_metrics(run_dir, "test")


@pytest.mark.slow
def test_vae_trains_under_ddp(tmp_path, fsdd):
    """The VAE on two digits of one FSDD speaker (80 training, 10 validation and 10 test
    clips): 5 validation clips per rank in batches of 2, 2 and 1, so per-batch means must
    be weighted by batch size. With a classifier, the test stage's Inception Score and
    Frechet distance of the real test clips (which depend on the classifier alone) must
    be those of all 10 clips, not a mean of the two ranks' values over 5 each. Images and
    audio go to the run folder and to W&B (offline) from rank zero alone."""
    data = ["data.speakers=[george]", "data.digits=[0,1]", "data.batch_size=8", "data.eval_batch_size=2", *fsdd]
    clf = compose_config(
        "train",
        ["data=fsdd", "model=digit_classifier", "model.net.channels=[4,8]", "trainer=cpu", "trainer.max_epochs=1",
         "trainer.limit_train_batches=2", "test=false", "callbacks.rich_progress_bar=null", "logger=csv",
         "extras.print_config=false", *data],
        tmp_path / "clf",
    )
    train(clf)
    # the classifier's weights need not be good, only the same in both evaluations
    clf_ckpt = tmp_path / "clf" / "checkpoints" / "last.ckpt"
    run_dir = ddp_train(
        tmp_path / "vae",
        "data=fsdd", "model=vae", "model.net.filters=[8,8,8,8,8]", "model.net.latent_dim=8",
        "model.prior_components=2", "trainer.limit_train_batches=2",
        f"callbacks.generation_metrics.classifier_ckpt={clf_ckpt}", "callbacks.generation_metrics.samples_per_class=3",
        "callbacks=vae", "callbacks.vae_media.n_items=2", "callbacks.vae_media.n_audio=1",
        "logger.wandb.mode=offline", *data, logger="many_loggers",
    )
    # one W&B run, TensorBoard files of one process (rank 1 would add its own), the media once
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1, list((run_dir / "wandb").iterdir())
    events = list(run_dir.glob("tensorboard/version_*/events.out.tfevents.*"))
    rank0_pid = json.loads((run_dir / "weights_rank0.json").read_text())["pid"]
    assert events and {e.name.split(".")[-2] for e in events} == {str(rank0_pid)}, events
    assert len(list((run_dir / "media" / "val_spectrograms").glob("step_*.png"))) == 1
    val_names = ["val/lsd", "val/mse", "val/kl"]
    assert_same_metrics(logged_metrics(run_dir, "val"), single_process(run_dir, "val"), val_names)
    # the barely trained classifier's features are small and alike, but they are not one
    # point: the Frechet distances (the mean of the ranks' values is 2.5 and 1.003 times
    # these) tell 5 clips from 10
    generation = GenerationMetricsCallback(str(clf_ckpt), samples_per_class=3)
    single = single_process(run_dir, "test", "epoch_000.ckpt", callbacks=[generation])
    assert single["test/real_fd"] > 0 and single["test/gen_fd"] > 0
    test_names = ["test/lsd", "test/real_acc", "test/real_is", "test/real_fd", "test/gen_is", "test/gen_fd", "test/gen_acc"]
    assert_same_metrics(logged_metrics(run_dir, "test"), single, test_names)


@pytest.mark.slow
def test_separation_trains_under_ddp(tmp_path):
    """A tiny TFC-TDF on a synthetic MUSDB: 2 validation tracks with 3 excerpts each, 3 per
    rank in batches of 2 and 1; uSDR per target and the loss must be those of all 6."""
    data = [
        *synth_overrides(tmp_path / "musdb_synth"),
        "data.synthetic.n_valid=2",
        "data.valid_excerpts_per_track=3",
        "data.eval_batch_size=2",
    ]
    run_dir = ddp_train(tmp_path / "runs", *data, "model=tfc_tdf", *TINY_NET, "callbacks=separation", "test=false")
    single = single_process(run_dir, "val")
    names = [n for n in single if n.startswith("val/sdr_")] + ["val/loss"]
    assert {"val/sdr_vocals", "val/sdr_accompaniment", "val/sdr_mean"} <= set(names), names
    assert_same_metrics(logged_metrics(run_dir, "val"), single, names)


@pytest.mark.slow
def test_multirun_of_ddp_jobs_writes_one_dir_per_job(tmp_path):
    """``-m`` with two jobs: Lightning's own relaunch would hand rank 1 the whole sweep (a
    second sweep folder, jobs run twice); HydraDDPStrategy runs each job's rank 1 in that
    job's folder with that job's learning rate (else the weights check fails the job)."""
    proc = run_cli("train", "-m", *DDP, "logger=csv", "model.optimizer.lr=1e-3,3e-4", *PITCH, "data.val_clips=2",
                   f"paths.log_dir={tmp_path}")
    assert sorted(tmp_path.iterdir()) == [tmp_path / "train"]
    assert sorted((tmp_path / "train").iterdir()) == [tmp_path / "train" / "multirun"]
    sweeps = sorted((tmp_path / "train" / "multirun").iterdir())
    assert len(sweeps) == 1 and RUN_DIR_NAME.match(sweeps[0].name), sweeps
    sweep = sweeps[0]
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    assert proc.stdout.count("Output dir:") == 2
    for job, lr in (("0", "0.001"), ("1", "0.0003")):
        assert f"model.optimizer.lr={lr}" in (sweep / job / ".hydra" / "overrides.yaml").read_text()
        check_run_dir_of_job(sweep / job)


@pytest.mark.slow
def test_multirun_mixing_ddp_and_single_process_jobs(tmp_path):
    """A DDP job, then a single-process one, in one sweep: the first job's processes and
    process group are released when it ends, so the second does not inherit a dead group."""
    proc = run_cli("train", "-m", *[a for a in DDP if not a.startswith("trainer=")], "trainer=ddp_sim,cpu",
                   "logger=csv", *PITCH, "data.val_clips=2", f"paths.log_dir={tmp_path}")
    sweep = next((tmp_path / "train" / "multirun").iterdir())
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    assert proc.stdout.count("Output dir:") == 2
    check_run_dir_of_job(sweep / "0")
    assert (sweep / "1" / "checkpoints" / "last.ckpt").is_file()
    assert not (sweep / "1" / "train.rank1.log").exists()  # one process
    assert json.loads((sweep / "1" / "weights_rank0.json").read_text())["rank"] == 0


def check_run_dir_of_job(job_dir: Path) -> None:
    assert sorted(p.name for p in (job_dir / "checkpoints").iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in (job_dir / "train.rank1.log").read_text()
    records = [json.loads((job_dir / f"weights_rank{r}.json").read_text()) for r in (0, 1)]
    assert records[0]["checksums"] == records[1]["checksums"]
    assert [r["rank"] for r in records] == [0, 1]


# -- the pieces, without training ---------------------------------------------------


@pytest.fixture
def multirun_job(tmp_path, monkeypatch):
    """The Hydra runtime of job 1 of ``python src/train.py -m --config-name=train
    model.optimizer.lr=1e-3,3e-4 trainer=ddp_sim hydra.job.chdir=false
    hydra.sweep.dir=<dir>``, as HydraConfig holds it while the job runs."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=["trainer=ddp_sim", f"paths.log_dir={tmp_path}"], return_hydra_config=True)
    job_dir = tmp_path / "it's a sweep" / "1"
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(job_dir)
        cfg.hydra.runtime.cwd = str(tmp_path)
        cfg.hydra.overrides.task = ["model.optimizer.lr=0.0003", "trainer=ddp_sim", f"paths.log_dir={tmp_path}"]
        cfg.hydra.overrides.hydra = [
            "hydra.mode=MULTIRUN", "hydra.job.chdir=false", f"hydra.sweep.dir={tmp_path}", "hydra/launcher=basic"
        ]
    previous = HydraConfig.instance().cfg
    HydraConfig().set_config(cfg)
    import __main__

    # as when the sweep was started with `python src/train.py` (not the test runner's `-m pytest`)
    monkeypatch.setattr(__main__, "__spec__", None)
    monkeypatch.setattr(sys, "argv", [
        "src/train.py", "-m", "--config-name=train", "model.optimizer.lr=1e-3,3e-4", "trainer=ddp_sim",
        "hydra.job.chdir=false", f"hydra.sweep.dir={tmp_path}", f"paths.log_dir={tmp_path}",
    ])
    yield job_dir
    HydraConfig.instance().cfg = previous


def test_rank_command_runs_the_job_not_the_sweep(multirun_job, tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    command, cwd = rank_command(1)
    # the script relative to where the sweep was started (the job may have changed directory)
    assert command[:2] == [sys.executable, str(tmp_path / "src" / "train.py")]
    assert cwd == str(tmp_path)
    args = command[2:]
    assert "-m" not in args and "--multirun" not in args
    assert "--config-name=train" in args
    parsed = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(args[1:])}
    assert parsed == {
        "model.optimizer.lr": 0.0003,  # the job's value, not the sweep
        "trainer": "ddp_sim",
        "paths.log_dir": str(tmp_path),
        "hydra.job.chdir": False,  # kept; the sweep's dir and launcher are not
        "hydra.mode": "RUN",
        "hydra.run.dir": str(multirun_job),
        "hydra.output_subdir": None,
        "hydra.job_logging.handlers.file.filename": str(multirun_job / "train.rank1.log"),
    }


def test_rank_command_needs_a_hydra_run(tmp_path):
    """A config composed without a run (compose API) has no folder for the other ranks."""
    compose_config("train", ["trainer=ddp_sim"], tmp_path)  # sets HydraConfig, no runtime dir
    assert distributed._current_job() is None
    with pytest.raises(RuntimeError, match="composed without a run"):
        rank_command(1)


@pytest.mark.parametrize("value", ["/tmp/a b/c", "/tmp/it's", "/tmp/x\\y", "/tmp/end\\", "/tmp/a,b=c", "/tmp/${x}"])
def test_quoted_override_values_read_back_unchanged(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_override(f"hydra.run.dir={quote_override_value(value)}")
    assert OmegaConf.create({"dir": parsed.value()}).dir == value


def test_previous_job_is_cleaned_up_before_the_next_one(monkeypatch):
    """What a job's launch left behind (its rank > 0 processes, the environment Lightning
    set, a process group) is cleared when a strategy is built for another job."""
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_PORT", "12910")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    env_before = {"MASTER_PORT": "29999", "LOCAL_RANK": None, "WORLD_SIZE": None}
    monkeypatch.setattr(distributed, "_last_launch", distributed._Launch("/a/previous/job", env_before, [proc]))
    try:
        distributed.HydraDDPStrategy()
    finally:
        if dist.is_initialized():  # a failed clean-up must not leave a group to later tests
            dist.destroy_process_group()
    assert proc.returncode == 0
    assert os.environ["MASTER_PORT"] == "29999" and "LOCAL_RANK" not in os.environ
    assert distributed._last_launch is None
    distributed.HydraDDPStrategy()  # nothing left to do


def test_failed_or_stuck_rank_processes_are_reported_or_ended(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    monkeypatch.setattr(distributed, "_last_launch", distributed._Launch("/a/job", {"LOCAL_RANK": None}, [failed]))
    with pytest.raises(RuntimeError, match=r"a DDP process of the job /a/job \(pid \d+\) exited with code 3"):
        distributed.release_processes()
    assert "LOCAL_RANK" not in os.environ and distributed._last_launch is None  # cleaned up all the same

    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setattr(distributed, "_last_launch", distributed._Launch("/a/job", {}, [stuck]))
    with pytest.raises(RuntimeError, match="still running 0 s after that job ended; it was killed"):
        distributed.release_processes(timeout=0.1)
    assert stuck.returncode is not None

    waiting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setattr(distributed, "_last_launch", distributed._Launch("/a/job", {}, [waiting]))
    distributed.release_processes(kill=True)  # after a failed job: ended, no error
    assert waiting.returncode is not None


def test_checksum_sees_every_bit_and_position():
    x = torch.randn(1000)
    assert tensor_checksum(x) == tensor_checksum(x.clone())
    flipped = x.clone()
    flipped.view(torch.int32)[617] ^= 1  # the lowest mantissa bit of one element
    assert tensor_checksum(flipped) != tensor_checksum(x)
    assert tensor_checksum(x.flip(0)) != tensor_checksum(x)
    for t in (x.double(), x.bfloat16(), x > 0, (x * 100).long(), x.reshape(10, 100).t()):
        assert tensor_checksum(t) == tensor_checksum(t.clone()), t.dtype
    # chunked sums: a long tensor still sees a change at its end
    long = torch.zeros(3 * (1 << 22) + 5)
    changed = long.clone()
    changed[-1] = 1.0
    assert tensor_checksum(long) != tensor_checksum(changed)


def test_weights_check_names_the_tensors_that_differ(tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    local = torch.stack([tensor_checksum(p) for p in module.parameters()])
    other = local.clone()
    other[2] += 1  # rank 1 differs in the second layer's weight

    def trainer(gathered):
        strategy = SimpleNamespace(all_gather=lambda t: gathered)
        return SimpleNamespace(world_size=2, global_rank=0, is_global_zero=True, current_epoch=0, global_step=5,
                               strategy=strategy)

    module.device = torch.device("cpu")
    check = WeightsCheck(record_dir=str(tmp_path))
    check.on_train_end(trainer(torch.stack([local, local])), module)
    record = json.loads((tmp_path / "weights_rank0.json").read_text())
    assert record["checksums"] == checksums(module.named_parameters())
    with pytest.raises(WeightsMismatchError, match=r"ranks \[1\] hold other weights than rank 0 in 1 of 4 tensors: 1.weight"):
        check.on_train_end(trainer(torch.stack([local, other])), module)
