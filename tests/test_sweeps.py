"""Hyperparameter searches (hparams_search=*_optuna) and cluster launch (cluster=slurm):
what they compose to, a real 2-trial Optuna sweep, a trial run as a submitit job, and the
sbatch script the SLURM launcher writes."""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path

import hydra
import pytest
import torch
from helpers import RUN_DIR_NAME, SMALL, run_cli
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep
from omegaconf import DictConfig, OmegaConf, open_dict

from audiolab import cli

# hparams_search option -> (LightningModule whose monitor it optimises, metric, mode)
SEARCHES = {
    "pitch_optuna": ("audiolab.models.pitch.PitchModule", "val/rpa", "max"),
    "vae_optuna": ("audiolab.models.vae.VAEModule", "val/lsd", "min"),
    "separation_optuna": ("audiolab.models.separation.SeparationModule", "val/sdr_mean", "max"),
}
# the data each search trains on, when it picks one (pitch: the default synth_pitch)
SEARCH_DATA = {
    "pitch_optuna": "audiolab.data.synth_pitch.SynthPitchDataModule",
    "vae_optuna": "audiolab.data.fsdd.FsddDataModule",
    "separation_optuna": "audiolab.data.musdb.MusdbDataModule",
}
SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"



def compose_with_hydra(overrides: list[str]) -> DictConfig:
    """``train.yaml`` composed as the entry point composes it, the ``hydra`` node (sweeper,
    launcher, mode) included."""
    from hydra import compose, initialize_config_dir

    cli._prepare()  # what the entry points set up first (AUDIOLAB_ROOT, resolvers)
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(cli.CONFIG_DIR)):
        return compose("train", overrides=overrides, return_hydra_config=True)


def search_space(cfg: DictConfig) -> dict:
    """``hydra.sweeper.params`` parsed the way the Optuna sweeper parses them."""
    parser = OverridesParser.create()
    return {
        key: parser.parse_override(f"{key}={value}").value()
        for key, value in cfg.hydra.sweeper.params.items()
    }


@pytest.mark.parametrize("search", sorted(SEARCHES))
def test_search_composes_with_its_task(search):
    module, metric, mode = SEARCHES[search]
    cfg = compose_with_hydra([f"hparams_search={search}"])
    assert cfg.model._target_ == module and cfg.data._target_ == SEARCH_DATA[search]
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    # the metric is the one the task declares and logs, with the task's direction
    module_cls = hydra.utils.get_class(module)
    assert (cfg.optimized_metric, cfg.optimized_mode) == (metric, mode)
    assert (module_cls.monitor, module_cls.monitor_mode) == (metric, mode)
    assert cfg.hydra.sweeper.direction == {"max": "maximize", "min": "minimize"}[mode]
    # the best checkpoint is picked on the same metric, the same way
    assert cfg.callbacks.model_checkpoint.monitor == metric
    assert cfg.callbacks.model_checkpoint.mode == mode
    # every searched key exists in the config (a typo would be added as a new key, silently)
    # and is searched (a plain value would be a fixed override)
    for key, value in search_space(cfg).items():
        assert OmegaConf.select(cfg, key) is not None, f"{search} searches {key}, which is not a config key"
        assert isinstance(value, (ChoiceSweep, IntervalSweep)), (key, value)
    assert "log" in search_space(cfg)["model.optimizer.lr"].tags


@pytest.mark.parametrize("mode,direction", [("min", "minimize"), ("max", "maximize")])
def test_sweeper_direction_follows_optimized_mode(mode, direction):
    cfg = compose_with_hydra(["hparams_search=pitch_optuna", "optimized_metric=val/loss", f"optimized_mode={mode}"])
    assert cfg.hydra.sweeper.direction == direction
    assert cfg.callbacks.model_checkpoint.mode == mode


@pytest.mark.parametrize("search", ["vae_optuna", "separation_optuna"])
def test_every_architecture_choice_builds(search):
    """The smallest and the largest value of every searched ``model.net`` choice gives a
    network that runs a forward pass."""
    cfg = compose_with_hydra([f"hparams_search={search}"])
    choices = {k: v.list for k, v in search_space(cfg).items() if k.startswith("model.net.")}
    assert choices and all(isinstance(v, list) for v in choices.values())
    for pick in (min, max):
        overrides = [f"hparams_search={search}"] + [f"{k}={pick(v)}" for k, v in choices.items()]
        cfg = compose_with_hydra(overrides)
        with open_dict(cfg):
            del cfg["hydra"]
        module = hydra.utils.instantiate(cfg.model).eval()
        with torch.no_grad():
            if search == "vae_optuna":
                spec = torch.rand(2, *cfg.model.net.input_shape)
                recon, mu, _ = module.net(spec, torch.tensor([3, 7]))
                assert recon.shape == spec.shape and mu.shape == (2, cfg.model.net.latent_dim)
            else:
                mixture = torch.randn(1, cfg.data.audio_channels, cfg.data.sample_rate)
                out = module(mixture)
                assert out.shape == (1, len(cfg.data.targets), *mixture.shape[1:])


@pytest.mark.slow
def test_optuna_sweep_reports_every_trial(tmp_path):
    proc = run_cli(
        "train",
        "hparams_search=pitch_optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "debug=fdr",
        *SMALL,
        f"paths.log_dir={tmp_path}",
    )
    sweeps = list((tmp_path / "debug" / "multirun").iterdir())
    assert len(sweeps) == 1 and RUN_DIR_NAME.match(sweeps[0].name), sweeps
    sweep = sweeps[0]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"], jobs
    assert proc.stdout.count("Output dir:") == 2

    values, sampled = [], []
    for job in jobs:
        overrides = dict(o.split("=", 1) for o in OmegaConf.load(sweep / job / ".hydra" / "overrides.yaml"))
        # the command line fixes data.batch_size: Optuna samples only the other two
        assert overrides["data.batch_size"] == "16"
        lr, blur = float(overrides["model.optimizer.lr"]), float(overrides["model.blur_cents"])
        assert 1e-4 <= lr <= 1e-2 and 10.0 <= blur <= 40.0
        sampled.append((lr, blur))
        # the value the job returned to Optuna (LogJobReturnCallback), in the job's own log
        log = (sweep / job / "debug.log").read_text()
        found = re.findall(r"Succeeded with return value: (\S+)", log)
        assert len(found) == 1, log[-2000:]
        value = float(found[0])
        assert math.isfinite(value) and 0.0 <= value <= 1.0  # val/rpa
        values.append(value)
    assert sampled[0] != sampled[1]

    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.name == "optuna"
    assert set(results.best_params) == {"model.optimizer.lr", "model.blur_cents"}
    # maximize: the best trial is the one with the higher val/rpa
    assert results.best_value == pytest.approx(max(values))
    assert (results.best_params["model.optimizer.lr"], results.best_params["model.blur_cents"]) in [
        pytest.approx(s) for s in sampled
    ]


@pytest.mark.slow
def test_trial_runs_as_a_submitit_job(tmp_path):
    """What a SLURM job goes through, on this machine (hydra/launcher=submitit_local): the
    launcher pickles the task, a fresh process (python -m submitit.core._submit) composes the
    job's config again, trains, and its return value reaches the Optuna sweeper."""
    proc = run_cli(
        "train",
        "hparams_search=pitch_optuna",
        "hydra/launcher=submitit_local",
        "hydra.sweeper.n_trials=1",
        "debug=fdr",
        *SMALL,
        f"paths.log_dir={tmp_path}",
    )
    (sweep,) = list((tmp_path / "debug" / "multirun").iterdir())
    # the job ran in the submitit process, not in the one that launched it
    assert "Output dir:" not in proc.stdout
    (job_out,) = list((sweep / ".submitit").glob("*/*_0_log.out"))
    assert f"Output dir: {sweep / '0'}" in job_out.read_text()
    log = (sweep / "0" / "debug.log").read_text()
    (value,) = re.findall(r"Succeeded with return value: (\S+)", log)
    assert math.isfinite(float(value))
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.best_value == pytest.approx(float(value))


SLURM = ["cluster=slurm", "cluster.nodes=2", "cluster.gpus_per_node=4", "cluster.partition=gpu"]


def test_cluster_slurm_lines_up_launcher_and_trainer():
    cfg = compose_with_hydra(SLURM)
    launcher, trainer = cfg.hydra.launcher, cfg.trainer
    assert launcher._target_ == SLURM_LAUNCHER
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert launcher.nodes == trainer.num_nodes == 2
    # Lightning wants one SLURM task per GPU: SLURM_NTASKS = devices x num_nodes
    assert launcher.gpus_per_node == launcher.tasks_per_node == trainer.devices == 4
    assert launcher.partition == "gpu"
    # the DDP of trainer=ddp, on GPUs
    assert trainer.accelerator == "gpu"
    assert trainer.strategy == compose_with_hydra(["trainer=ddp"]).trainer.strategy
    # the keys below are read by the launcher: each must be set from cluster.*
    for key in ("cpus_per_task", "mem_gb", "timeout_min"):
        assert launcher[key] == cfg.cluster[key], key


def test_cluster_slurm_goes_with_a_search():
    cfg = compose_with_hydra(["hparams_search=vae_optuna", *SLURM])
    assert cfg.hydra.launcher._target_ == SLURM_LAUNCHER
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.trainer.devices == cfg.hydra.launcher.tasks_per_node == 4


def test_submitit_launcher_composes_from_the_command_line():
    """``python src/train.py -m hydra/launcher=submitit_slurm ...`` composes (the plugin is
    installed; ``hydra.mode=MULTIRUN`` stands for -m, which --cfg does not take), and
    ``cluster=slurm`` resolves to matching launcher and trainer values."""
    proc = run_cli(
        "train", "hydra/launcher=submitit_slurm", "hydra.mode=MULTIRUN", "--cfg", "hydra", "--package", "hydra.launcher"
    )
    assert OmegaConf.create(proc.stdout)._target_ == SLURM_LAUNCHER

    proc = run_cli("train", *SLURM, "--cfg", "all", "--resolve")
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.hydra.launcher._target_ == SLURM_LAUNCHER and cfg.hydra.mode == "MULTIRUN"
    assert (cfg.hydra.launcher.nodes, cfg.hydra.launcher.tasks_per_node) == (2, 4)
    assert (cfg.trainer.num_nodes, cfg.trainer.devices) == (2, 4)
    assert cfg.hydra.launcher.name == cfg.task_name == "train"  # the SLURM job's name


def _fake_slurm(bin_dir: Path, record: Path) -> None:
    """``srun`` (submitit only checks that it exists) and an ``sbatch`` that keeps the
    script it is given and refuses the job."""
    bin_dir.mkdir()
    scripts = {
        "srun": "#!/bin/sh\nexit 1\n",
        "sbatch": f'#!/bin/sh\ncp "$1" "{record}"\necho "sbatch: refused by the test" >&2\nexit 1\n',
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_slurm_launcher_writes_one_task_per_gpu(tmp_path, monkeypatch):
    """The real launcher turns cluster.* into the sbatch script's resources."""
    from hydra.core.utils import setup_globals

    record = tmp_path / "job.sbatch"
    _fake_slurm(tmp_path / "bin", record)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    setup_globals()  # ${now:} in the sweep dir
    cfg = compose_with_hydra([*SLURM, "cluster.cpus_per_task=6", "cluster.mem_gb=100", f"paths.log_dir={tmp_path}"])
    launcher = hydra.utils.instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=lambda c: None, config=cfg)
    with pytest.raises(Exception, match="refused by the test|sbatch"):
        launcher.launch([["seed=1"]], initial_job_idx=0)
    sbatch = record.read_text()
    flags = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)$", sbatch, flags=re.M))
    assert flags["nodes"] == "2" and flags["ntasks-per-node"] == "4" and flags["gpus-per-node"] == "4"
    assert flags["partition"] == "gpu" and flags["cpus-per-task"] == "6" and flags["mem"] == "100GB"
    assert flags["time"] == str(cfg.cluster.timeout_min) and flags["job-name"] == "train"
    assert re.search(r"^srun .*submitit", sbatch, flags=re.M), sbatch


def test_multirun_checks_refuse_a_reversed_direction_and_a_mismatched_launcher():
    from audiolab.utils.errors import AudiolabError
    from audiolab.utils.sweeps import check_slurm_launcher, check_sweep_direction

    good = compose_with_hydra(["hparams_search=pitch_optuna", "cluster=slurm", "cluster.gpus_per_node=4"])
    check_sweep_direction(good)
    check_slurm_launcher(good)
    reversed_ = compose_with_hydra(["hparams_search=pitch_optuna", "hydra.sweeper.direction=minimize"])
    with pytest.raises(AudiolabError, match="direction=minimize but optimized_mode=max"):
        check_sweep_direction(reversed_)
    by_hand = compose_with_hydra(["cluster=slurm", "cluster.gpus_per_node=4", "trainer.devices=2"])
    with pytest.raises(AudiolabError, match=r"4 task\(s\) but the trainer runs 1 node\(s\) x 2 device"):
        check_slurm_launcher(by_hand)


@pytest.mark.slow
def test_a_reversed_sweep_stops_before_any_job(tmp_path):
    proc = run_cli(
        "train", "-m", "hparams_search=pitch_optuna", "hydra.sweeper.direction=minimize",
        *SMALL, f"paths.log_dir={tmp_path}", check=False,
    )
    assert proc.returncode == 1
    assert "error: hydra.sweeper.direction=minimize but optimized_mode=max" in proc.stderr, proc.stderr[-2000:]
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("overrides.yaml"))


@pytest.mark.slow
def test_a_trial_without_validation_fails_and_the_sweep_goes_on(tmp_path):
    """limit_val_batches=0: that trial never logs val/rpa; Optuna records it as failed with
    the reason and the other trials still run and rank."""
    proc = run_cli(
        "train",
        "hparams_search=pitch_optuna",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.sampler.n_startup_trials=4",
        "hydra.sweeper.sampler.seed=0",  # draws both values within 4 trials
        "trainer.limit_val_batches=0,1",
        "debug=limit",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "callbacks.rich_progress_bar=null",
        *SMALL,
        f"paths.log_dir={tmp_path}",
    )
    (sweep,) = list((tmp_path / "debug" / "multirun").iterdir())
    failed, completed = [], []
    for job in sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")):
        overrides = dict(o.split("=", 1) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml"))
        log = (job / "debug.log").read_text()
        (returned,) = re.findall(r"Succeeded with return value: (\S+)", log)
        if overrides["trainer.limit_val_batches"] == "0":
            assert "optimized_metric='val/rpa' was never logged" in log and returned == "nan"
            assert (job / "checkpoints" / "last.ckpt").is_file()  # the run kept its checkpoint
            failed.append(job.name)
        else:
            assert 0.0 <= float(returned) <= 1.0
            completed.append(job.name)
    assert failed and completed, (failed, completed)  # the seeded sampler draws both
    for number in failed:
        assert f"trial {number} failed: optimized_metric='val/rpa' was never logged" in proc.stdout + proc.stderr
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.best_params["trainer.limit_val_batches"] == 1


@pytest.mark.slow
def test_a_run_that_ends_before_validation_exits_cleanly(tmp_path):
    proc = run_cli(
        "train", "trainer.max_steps=2", "trainer.limit_val_batches=0", *SMALL,
        "callbacks.rich_progress_bar=null", f"paths.log_dir={tmp_path}", check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if "was never logged" in line]
    assert len(warnings) == 1 and "optimized_metric='val/rpa'" in warnings[0], warnings
    assert "Traceback" not in proc.stderr
    (run,) = list((tmp_path / "train").iterdir())
    assert (run / "checkpoints" / "last.ckpt").is_file()
