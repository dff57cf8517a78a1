"""Source separation benchmark, one run, one printed table per section:

    .venv/bin/python scripts/bench_separation.py [--sections train,inference,quality,data]
        [--ckpt PATH] [--quality-minutes 20] [--device cpu|cuda]
        [--data-sets musdb_synth,musdb_render] [--data-minutes 30] [--data-ckpts A,B]

- train: steps/s and peak memory of one training step per model preset (random batch of
  the data config's chunk length), each preset in its own process so peaks do not mix.
- inference: real-time factor and peak RSS of ``src/separate.py``'s file-to-file path
  (streamed decode -> overlap-add -> streamed write) for 30, 60, 120 and 600 s stereo
  tracks, each in a fresh process: memory must stay flat as the track grows.
- quality: trains ``experiment=separation_synth`` for a fixed wall-time budget (or takes
  ``--ckpt``), then scores it on the synthetic test tracks beside the oracles IRM1, IBM
  and the mixture-as-estimate, all with the same whole-track SDR (uSDR) on the same tracks.
- data: which built-in training set carries over to real music. The same network
  (``experiment=separation_<set>``: TFC-TDF, 4 stems) trains on each set for the same
  budget, all sets at once, one torch thread each (so each gets one core: CPU minutes =
  wall minutes), the data generated beforehand; or ``--data-ckpts`` takes trained ones.
  Each model is scored on the real MUSDB18 preview (BSSEval v4 SDR, median of 1-s frames,
  numerically museval's) beside the oracle IRM1 and the mixture-as-estimate, and on every
  set's own synthetic test tracks (uSDR, median over tracks).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from shared_data import shared_data  # scripts/shared_data.py

REPO = Path(__file__).resolve().parents[1]
PRESETS = ["tfc_tdf", "tfc_tdf_ismir2020", "tfc_tdf_keras", "spleeter", "spleeter_4stems"]
LENGTHS = [30, 60, 120, 600]


def compose(overrides: list[str], out_dir: Path):
    from audiolab.cli import compose_run

    return compose_run("train", [f"paths.log_dir={out_dir}", *overrides], out_dir)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: list[str]) -> dict:
    """Run this script's worker mode in a fresh process; returns its JSON line."""
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, cwd=REPO
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- workers (run in their own process)


def worker_train_step(preset: str, device: str, steps: int, batch_size: int) -> dict:
    import hydra

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose([f"model={preset}", "data=musdb_synth"], Path(tmp))
    module = hydra.utils.instantiate(cfg.model).to(device).train()
    optimizer = module.optimizer_factory(params=module.parameters())
    n = round(cfg.data.chunk_seconds * cfg.data.sample_rate)
    mixture_targets = (
        torch.randn(batch_size, len(module.targets), cfg.data.audio_channels, n, device=device)
        * 0.1
    )
    batch = {"mixture": mixture_targets.sum(1), "targets": mixture_targets}
    params = sum(p.numel() for p in module.net.parameters())
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()

    module.log = lambda *a, **k: None  # no trainer attached
    step()  # warm-up (allocations, cuDNN autotuning)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    out = {
        "preset": preset,
        "params": params,
        "seconds_per_step": seconds,
        "peak_rss_mb": peak_rss_mb(),
    }
    out["batch"] = f"{batch_size} x {cfg.data.chunk_seconds:g} s"
    if device == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def worker_inference(ckpt: str | None, preset: str, wav: str, device: str) -> dict:
    import hydra

    from audiolab.separation.files import separate_file

    if ckpt:
        from audiolab.utils.checkpoint import load_module

        module, _ = load_module(ckpt, device)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = compose([f"model={preset}", "data=musdb_synth"], Path(tmp))
        module = hydra.utils.instantiate(cfg.model).to(device).eval()
    hp = module.hparams
    base = peak_rss_mb()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        separate_file(
            module,
            wav,
            out,
            chunk_seconds=hp.chunk_seconds,
            overlap=hp.overlap,
            window=hp.window,
            batch_size=hp.separate_batch_size,
            device=device,
        )
        seconds = time.perf_counter() - start
    import soundfile as sf

    audio_seconds = sf.info(wav).duration
    return {
        "seconds": seconds,
        "audio_seconds": audio_seconds,
        "speed_x_realtime": audio_seconds / seconds,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": base,
    }


# --- sections


def section_train(args) -> None:
    rows = []
    for preset in args.presets:
        try:
            rows.append(
                child(
                    [
                        "--worker",
                        "train",
                        "--preset",
                        preset,
                        "--device",
                        args.device,
                        "--steps",
                        str(args.train_steps),
                        "--batch-size",
                        str(args.batch_size),
                    ]
                )
            )
        except RuntimeError as exc:
            print(f"{preset}: {str(exc).splitlines()[-1]}")
    print(
        f"\n## Training step ({args.device}, batch {args.batch_size}, {torch.get_num_threads()} threads)"
    )
    print(
        "| preset | params | batch | s/step | steps/s | peak RSS MB |"
        + (" peak GPU MB |" if args.device == "cuda" else "")
    )
    print("|---|---:|---|---:|---:|---:|" + ("---:|" if args.device == "cuda" else ""))
    for r in rows:
        gpu = f" {r['peak_gpu_mb']:.0f} |" if "peak_gpu_mb" in r else ""
        print(
            f"| {r['preset']} | {r['params'] / 1e6:.2f} M | {r['batch']} | {r['seconds_per_step']:.3f} | "
            f"{1 / r['seconds_per_step']:.2f} | {r['peak_rss_mb']:.0f} |{gpu}"
        )


def write_test_track(path: Path, seconds: int) -> None:
    """A stereo wav of ``seconds``: synthetic music tiled from one 30 s render."""
    import soundfile as sf

    from audiolab.data.synth_musdb import render_track

    stems = render_track(seed=1234, duration=30.0, sample_rate=44100)
    mix = sum(stems.values())
    mix = 0.9 * mix / np.abs(mix).max()
    reps = int(np.ceil(seconds / 30))
    with sf.SoundFile(str(path), "w", samplerate=44100, channels=2, subtype="PCM_16") as f:
        for _ in range(reps):
            f.write(mix.T[: min(30, seconds) * 44100])
            seconds -= 30
            if seconds <= 0:
                break


def section_inference(args) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in LENGTHS:
            wav = Path(tmp) / f"track_{seconds}s.wav"
            write_test_track(wav, seconds)
            r = child(
                [
                    "--worker",
                    "inference",
                    "--preset",
                    args.presets[0],
                    "--wav",
                    str(wav),
                    "--device",
                    args.device,
                ]
                + (["--ckpt", args.ckpt] if args.ckpt else [])
            )
            rows.append(r)
            wav.unlink()
    model = args.ckpt or f"{args.presets[0]} (random weights: speed does not depend on them)"
    print(f"\n## Inference, file to file ({args.device}): {model}")
    print("| track | wall s | x real time | peak RSS MB |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['audio_seconds']:.0f} s | {r['seconds']:.2f} | {r['speed_x_realtime']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    growth = rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
    print(
        f"peak RSS growth from {rows[0]['audio_seconds']:.0f} s to {rows[-1]['audio_seconds']:.0f} s: {growth:+.0f} MB "
        f"(the audio itself is {rows[-1]['audio_seconds'] * 44100 * 2 * 4 / 2**20:.0f} MB as float32 stereo)"
    )


def train_command(experiment: str, minutes: int, log_dir: Path, run_dir: Path) -> list[str]:
    """``src/train.py`` for ``experiment`` capped at ``minutes`` of wall time, no test pass."""
    h, rem = divmod(minutes * 60, 3600)
    m, s = divmod(rem, 60)
    return [
        sys.executable,
        str(REPO / "src" / "train.py"),
        f"experiment={experiment}",
        "logger=csv",
        f"trainer.max_time=00:{h:02d}:{m:02d}:{s:02d}",
        "trainer.max_epochs=1000",
        "test=false",
        "callbacks.rich_progress_bar=null",
        f"paths.log_dir={log_dir}",
        "extras.print_config=false",
        f"hydra.run.dir={run_dir}",
    ]


def train_quality_model(args, out_dir: Path) -> str:
    cmd = train_command("separation_synth", args.quality_minutes, out_dir, out_dir / "run")
    if args.device == "cuda":
        cmd += ["trainer=gpu", "trainer.precision=bf16-mixed"]
    print("training:", " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    print(f"trained for {time.perf_counter() - start:.0f} s", flush=True)
    best = sorted((out_dir / "run" / "checkpoints").glob("epoch_*.ckpt"))
    if not best:
        raise RuntimeError(f"no checkpoint written under {out_dir / 'run'}")
    return str(best[-1])


def section_quality(args) -> None:
    import hydra
    from omegaconf import OmegaConf

    from audiolab.metrics.separation import usdr
    from audiolab.separation.oracle import oracle_separation
    from audiolab.utils.checkpoint import load_module

    out_dir = Path(args.out) / "quality"
    ckpt = args.ckpt or train_quality_model(args, out_dir)
    module, run = load_module(ckpt, args.device)
    data_cfg = OmegaConf.to_container(run.data, resolve=True)
    datamodule = hydra.utils.instantiate(data_cfg)
    datamodule.prepare_data()
    tracks = datamodule.full_tracks("test")
    targets = list(module.targets)
    methods = ["model", "irm1", "ibm", "mix"]
    scores = {m: [] for m in methods}
    start = time.perf_counter()
    for item in tracks:
        mixture, refs = item["mixture"], item["targets"]
        estimates = {"model": module.separate(mixture)}
        for kind in ("irm1", "ibm", "mix"):
            estimates[kind] = oracle_separation(kind, mixture, refs)
        for m in methods:
            scores[m].append(usdr(estimates[m], refs).float())
    print(
        f"\n## Quality on {len(tracks)} synthetic test tracks (uSDR dB, median over tracks; scored in "
        f"{time.perf_counter() - start:.0f} s)\ncheckpoint: {ckpt}"
    )
    print("| method | " + " | ".join(targets) + " | mean |")
    print("|---|" + "---:|" * (len(targets) + 1))
    for m in methods:
        per_target = torch.stack(scores[m]).median(dim=0).values
        print(
            f"| {m} | "
            + " | ".join(f"{v:.2f}" for v in per_target.tolist())
            + f" | {per_target.mean():.2f} |"
        )
    model = torch.stack(scores["model"]).median(dim=0).values
    irm = torch.stack(scores["irm1"]).median(dim=0).values
    print(
        "model - IRM1 per target: "
        + ", ".join(
            f"{t} {d:+.2f} dB" for t, d in zip(targets, (model - irm).tolist(), strict=True)
        )
    )


DATA_SETS = ["musdb_synth", "musdb_render"]
PREVIEW = ("musdb18-sample", "train", "Music Delta - 80s Rock.stem.mp4")
STEMS = ["vocals", "drums", "bass", "other"]


def data_module(overrides: list[str]):
    """The MUSDB DataModule of ``data=...`` overrides, 4 stems, data prepared."""
    import hydra
    from omegaconf import OmegaConf

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose([*overrides, f"data.targets=[{','.join(STEMS)}]"], Path(tmp))
    datamodule = hydra.utils.instantiate(OmegaConf.to_container(cfg.data, resolve=True))
    datamodule.prepare_data()
    return datamodule


def train_data_models(args, out_dir: Path) -> dict[str, str]:
    """Train ``experiment=separation_<set>`` for every set at once (their data prepared),
    one thread each, for ``--data-minutes`` of wall time; returns {set: best checkpoint}."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = {}
    for name in args.data_sets:
        run_dir = out_dir / name
        cmd = train_command(
            f"separation_{name.removeprefix('musdb_')}", args.data_minutes, out_dir, run_dir
        )
        print("training:", " ".join(cmd[2:]), flush=True)
        log = open(out_dir / f"{name}.log", "w")  # noqa: SIM115 (closed after the wait)
        procs[name] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log), log)
    ckpts = {}
    for name, (proc, log) in procs.items():
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.close()
        if proc.returncode != 0:
            raise RuntimeError(f"training on {name} failed; see {out_dir / f'{name}.log'}")
        best = sorted((out_dir / name / "checkpoints").glob("epoch_*.ckpt"))
        if not best:
            raise RuntimeError(f"no checkpoint written under {out_dir / name}")
        ckpts[name] = str(best[-1])
        print(
            f"{name}: {(usage.ru_utime + usage.ru_stime) / 60:.1f} CPU minutes "
            f"(with its data loader), best checkpoint {best[-1].name}",
            flush=True,
        )
    return ckpts


def median_frame_sdr(estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """BSSEval v4 SDR per source, median over 1-s frames (NaN frames skipped, as museval)."""
    from audiolab.metrics.bss_eval import bss_eval_v4

    sdr = bss_eval_v4(references.transpose(1, 2), estimates.transpose(1, 2))["sdr"]
    return sdr.nanmedian(dim=1).values


def section_data(args) -> None:
    from audiolab.metrics.separation import usdr
    from audiolab.separation.oracle import oracle_separation
    from audiolab.utils.checkpoint import load_module

    preview_file = shared_data(*PREVIEW)
    given = args.data_ckpts.split(",") if args.data_ckpts else None
    if given is not None and len(given) != len(args.data_sets):
        raise SystemExit(
            f"error: --data-ckpts gives {len(given)} checkpoints for {len(args.data_sets)} "
            "--data-sets: pass one per set, in the same order"
        )
    out_dir = Path(args.out) / "data"
    out_dir.mkdir(parents=True, exist_ok=True)
    datamodules = {}
    for name in args.data_sets:
        print(f"preparing data={name} ...", flush=True)
        datamodules[name] = data_module([f"data={name}"])
    ckpts = (
        dict(zip(args.data_sets, given, strict=True)) if given else train_data_models(args, out_dir)
    )
    preview = data_module(
        [
            "data=musdb",
            f"data.root={preview_file.parents[1]}",
            "data.splits.valid.split=null",
            "data.splits.test.subsets=train",
        ]
    ).full_tracks("test")[0]
    test_sets = {name: datamodule.full_tracks("test") for name, datamodule in datamodules.items()}

    def row(label: str, values: torch.Tensor) -> str:
        return (
            f"| {label} | "
            + " | ".join(f"{v:.2f}" for v in values.tolist())
            + f" | {values.mean():.2f} |"
        )

    mixture, refs = preview["mixture"], preview["targets"]
    lines = [
        f"\n## Real MUSDB18 preview ({preview_file.name}, {mixture.shape[-1] / 44100:.1f} s): "
        "BSSEval v4 SDR dB, median of 1-s frames",
        "| estimate | " + " | ".join(STEMS) + " | mean |",
        "|---|" + "---:|" * (len(STEMS) + 1),
    ]
    models = {}
    for name, ckpt in ckpts.items():
        module, _ = load_module(ckpt, args.device)
        if list(module.targets) != STEMS:
            raise SystemExit(f"error: {ckpt} separates {list(module.targets)}, not {STEMS}")
        models[name] = module
        with torch.no_grad():
            estimate = module.separate(mixture.to(args.device)).cpu()
        lines.append(row(f"trained on {name}", median_frame_sdr(estimate, refs)))
    for kind in ("irm1", "mix"):
        lines.append(
            row(f"oracle {kind}", median_frame_sdr(oracle_separation(kind, mixture, refs), refs))
        )
    print("\n".join(lines))
    print(f"checkpoints: {ckpts}")

    print("\n## Synthetic test tracks of each set: uSDR dB, median over tracks")
    print("| model | test set | " + " | ".join(STEMS) + " | mean |")
    print("|---|---|" + "---:|" * (len(STEMS) + 1))
    for set_name, tracks in test_sets.items():
        scores = {name: [] for name in models}
        for item in tracks:
            with torch.no_grad():
                for name, module in models.items():
                    estimate = module.separate(item["mixture"].to(args.device)).cpu()
                    scores[name].append(usdr(estimate, item["targets"]).float())
        for name in models:
            values = torch.stack(scores[name]).median(dim=0).values
            print(row(f"trained on {name} | {set_name} ({len(tracks)})", values))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sections", default="train,inference,quality")  # data: on request
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument(
        "--ckpt", default=None, help="a separation checkpoint (inference and quality use it)"
    )
    parser.add_argument("--quality-minutes", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--data-sets", default=",".join(DATA_SETS), help="built-in sets (data section)"
    )
    parser.add_argument(
        "--data-minutes", type=int, default=30, help="training wall minutes per set"
    )
    parser.add_argument(
        "--data-ckpts", default=None, help="trained checkpoints, one per --data-sets"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench_separation"))
    # worker mode (internal)
    parser.add_argument("--worker", choices=["train", "inference"], help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--wav", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.presets = args.presets.split(",")
    args.data_sets = args.data_sets.split(",")

    if args.worker == "train":
        print(json.dumps(worker_train_step(args.preset, args.device, args.steps, args.batch_size)))
        return
    if args.worker == "inference":
        print(json.dumps(worker_inference(args.ckpt, args.preset, args.wav, args.device)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    sections = args.sections.split(",")
    if "train" in sections:
        section_train(args)
    if "inference" in sections:
        section_inference(args)
    if "quality" in sections:
        section_quality(args)
    if "data" in sections:
        section_data(args)


if __name__ == "__main__":
    main()
