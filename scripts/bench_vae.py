"""Baseline VAE vs audiolab's VAE on FSDD with the same training budget, in one run.

Both models train on the FSDD train split for the same number of epochs (and at most the
same wall time each), then the test stage scores them with the same digit classifier. The
baseline is much slower per epoch, so with a time cap it completes fewer epochs: ours is then
also trained a second time for exactly as many epochs as the baseline did (as many training
examples: ``trainer.max_steps``, fractional epochs included), so one run gives both the
equal-time and the equal-epochs comparison:

    .venv/bin/python scripts/bench_vae.py --classifier-ckpt outputs/digit_classifier_fsdd/<run>/checkpoints/epoch_XXX.ckpt \
        [--fsdd-root ../shared/data/fsdd] [--epochs 2] [--max-minutes 30]

Prints one table: test LSD (dB), test MSE, accuracy of digit-conditioned samples, Inception
Score and Frechet distance (with the real test split's values as reference), training
seconds per epoch and prior samples generated per second (spectrograms, and audio through
Griffin-Lim), plus the ratio ours / baseline of every row.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from audiolab.audio.features import spectrogram_to_audio
from audiolab.cli import compose_run
from audiolab.tasks.train import train

REPO = Path(__file__).resolve().parents[1]
# each model with its own recipe: the baseline's batch 64 (the classic code's), ours batch 16
EXPERIMENTS = {"vae_baseline": "vae_baseline_fsdd", "vae": "vae_fsdd"}


def run_config(model: str, args, out_dir: Path, name: str | None = None, max_steps: int | None = None):
    overrides = [
        f"experiment={EXPERIMENTS[model]}", "callbacks.vae_media=null", "logger=csv",  # callbacks=vae without media
        f"data.root={args.fsdd_root}",
        f"callbacks.generation_metrics.classifier_ckpt={Path(args.classifier_ckpt).resolve()}",
        f"callbacks.generation_metrics.samples_per_class={args.samples_per_class}", f"trainer.max_epochs={args.epochs}",
        "trainer.max_time=00:{:02d}:{:02d}:00".format(*divmod(args.max_minutes, 60)), "callbacks.rich_progress_bar=null",
        "extras.print_config=false", f"seed={args.seed}", f"paths.log_dir={out_dir}",
    ]
    if max_steps is not None:
        # the equal-epochs run: exactly as many training examples as the baseline saw
        overrides += [f"trainer.max_steps={max_steps}", "trainer.max_epochs=-1", "trainer.max_time=null"]
    return compose_run("train", overrides, out_dir / (name or model))


def sampling_speed(module, datamodule, n: int = 200) -> tuple[float, float]:
    """Prior samples per second: spectrograms only, and turned into audio."""
    module.eval()
    labels = torch.arange(n) % 10 if module.conditional else None
    start = time.perf_counter()
    specs = module.sample(n, labels)
    spec_rate = n / (time.perf_counter() - start)
    hp = datamodule.hparams
    m = min(n, 50)
    start = time.perf_counter()
    spectrogram_to_audio(
        specs[:m], module.db_range[0].expand(m), module.db_range[1].expand(m), hp.n_fft, hp.hop_length,
        n_iter=32, length=round(hp.duration * hp.sample_rate),
    )
    audio_rate = m / (time.perf_counter() - start)
    return spec_rate, audio_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier-ckpt", required=True, help="experiment=digit_classifier_fsdd checkpoint")
    parser.add_argument("--fsdd-root", default=str(REPO.parent / "shared" / "data" / "fsdd"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-minutes", type=int, default=30, help="wall-time cap per model")
    parser.add_argument("--samples-per-class", type=int, default=50)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench_vae"))
    args = parser.parse_args()
    out_dir = Path(args.out) / time.strftime("%Y-%m-%d_%H-%M-%S")

    rows: dict[str, dict[str, float]] = {}
    base_examples = None
    for model, name in (("vae_baseline", "vae_baseline"), ("vae", "vae"), ("vae", "vae_equal_epochs")):
        max_steps = None
        if name == "vae_equal_epochs":
            if base_examples is None or base_examples >= rows["vae"]["examples seen (steps x batch)"]:
                break  # ours already had no more data than the baseline
            max_steps = max(1, round(base_examples / rows["vae"]["batch size"]))
        cfg = run_config(model, args, out_dir, name, max_steps)
        batch_size = cfg.data.batch_size
        start = time.perf_counter()
        metrics, objects = train(cfg)
        elapsed = time.perf_counter() - start
        trainer = objects["trainer"]
        # data passes, fractional: a time cap can stop the run inside an epoch
        epochs = trainer.global_step / max(trainer.num_training_batches, 1)
        rows[name] = {
            **{k: v for k, v in metrics.items() if k.startswith("test/")},
            "epochs": epochs,
            "optimizer steps": trainer.global_step,
            "batch size": batch_size,
            "examples seen (steps x batch)": trainer.global_step * batch_size,
        }
        if name != "vae_equal_epochs":
            spec_rate, audio_rate = sampling_speed(objects["model"], objects["datamodule"])
            rows[name].update({
                "train s / epoch (incl. validation)": elapsed / max(epochs, 1e-9),
                "spectrograms / s": spec_rate,
                "audio clips / s (Griffin-Lim 32)": audio_rate,
            })
        if model == "vae_baseline":
            base_examples = trainer.global_step * batch_size

    keys = ["test/lsd", "test/mse", "test/gen_acc", "test/gen_is", "test/gen_fd", "test/real_acc", "test/real_is",
            "test/real_fd", "epochs", "batch size", "optimizer steps", "examples seen (steps x batch)", "train s / epoch (incl. validation)", "spectrograms / s",
            "audio clips / s (Griffin-Lim 32)"]
    print(f"\nFSDD, {args.epochs} epochs (cap {args.max_minutes} min each), classifier {args.classifier_ckpt}")
    snap = rows.get("vae_equal_epochs", {})
    print(f"{'metric':<38}{'baseline':>12}{'ours':>12}{'ours/base':>11}{'ours, base epochs':>19}")
    for key in keys:
        base, ours = rows["vae_baseline"].get(key), rows["vae"].get(key)
        fmt = lambda v, w=12: f"{v:>{w}.4f}" if isinstance(v, float) else (f"{v:>{w}}" if v is not None else f"{'-':>{w}}")  # noqa: E731
        ratio = f"{ours / base:>11.3f}" if isinstance(base, (int, float)) and isinstance(ours, (int, float)) and base else f"{'-':>11}"
        print(f"{key:<38}{fmt(base)}{fmt(ours)}{ratio}{fmt(snap.get(key), 19)}")
    print(f"runs in {out_dir}")


if __name__ == "__main__":
    main()
