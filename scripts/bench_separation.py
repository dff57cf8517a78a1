"""Source separation benchmark, one run, one printed table per section:

    .venv/bin/python scripts/bench_separation.py [--sections train,inference,quality]
        [--ckpt PATH] [--quality-minutes 20] [--device cpu|cuda]

- train: steps/s and peak memory of one training step per model preset (random batch of
  the data config's chunk length), each preset in its own process so peaks do not mix.
- inference: real-time factor and peak RSS of ``src/separate.py``'s file-to-file path
  (streamed decode -> overlap-add -> streamed write) for 30, 60, 120 and 600 s stereo
  tracks, each in a fresh process: memory must stay flat as the track grows.
- quality: trains ``experiment=separation_synth`` for a fixed wall-time budget (or takes
  ``--ckpt``), then scores it on the synthetic test tracks beside the oracles IRM1, IBM
  and the mixture-as-estimate, all with the same whole-track SDR (uSDR) on the same tracks.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

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


def train_quality_model(args, out_dir: Path) -> str:
    h, rem = divmod(args.quality_minutes * 60, 3600)
    m, s = divmod(rem, 60)
    cmd = [
        sys.executable,
        str(REPO / "src" / "train.py"),
        "experiment=separation_synth",
        "logger=csv",
        f"trainer.max_time=00:{h:02d}:{m:02d}:{s:02d}",
        "trainer.max_epochs=1000",
        "test=false",
        "callbacks.rich_progress_bar=null",
        f"paths.log_dir={out_dir}",
        "extras.print_config=false",
        f"hydra.run.dir={out_dir}/run",
    ]
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sections", default="train,inference,quality")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument(
        "--ckpt", default=None, help="a separation checkpoint (inference and quality use it)"
    )
    parser.add_argument("--quality-minutes", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench_separation"))
    # worker mode (internal)
    parser.add_argument("--worker", choices=["train", "inference"], help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--wav", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.presets = args.presets.split(",")

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


if __name__ == "__main__":
    main()
