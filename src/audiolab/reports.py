"""``eval.py``'s report: ``report.md`` beside ``metrics.json`` in the run dir, with the
task's headline table and the plots people look at (spectrogram grids, pitch contours,
SDR box plots). One reporter per task module; each returns the headline rows and the
markdown sections, and writes its figures under ``<run dir>/report/``."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import default_collate

from audiolab.utils.media import markdown_table

log = logging.getLogger("audiolab")


@dataclass
class Report:
    """What a reporter found: ``headline`` rows ``(metric, value, reference)`` for the
    console and the top of the report, then markdown ``sections``."""

    headline: list[tuple[str, float, float | str | None]] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)


def _save_figure(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.name


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _test_items(datamodule, n: int) -> dict[str, torch.Tensor] | None:
    """``n`` test items spread evenly over the test set, collated (None if it is empty)."""
    dataset = datamodule.test_dataloader().dataset
    if len(dataset) == 0:
        return None
    picks = torch.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().long().tolist()
    return default_collate([dataset[i] for i in picks])


# -- VAE -----------------------------------------------------------------------------
VAE_ROWS = [  # (metric, reference metric or None, description)
    ("test/lsd", None, "log-spectral distance of test reconstructions (dB)"),
    ("test/mse", None, "MSE of test reconstructions (normalised spectrograms)"),
    ("test/gen_acc", "test/real_acc", "conditioned samples classified as their digit (ref: real test clips)"),
    ("test/gen_is", "test/real_is", "Inception Score (ref: real test split)"),
    ("test/gen_fd", "test/real_fd", "Frechet distance to the test split (ref: validation vs test)"),
]


def vae_report(model, datamodule, metrics: dict[str, float], out: Path, trainer=None) -> Report:
    from audiolab.utils.plots import spectrogram_grid

    report = Report()
    rows = []
    for key, ref, what in VAE_ROWS:
        if key in metrics:
            reference = metrics.get(ref) if ref else None
            report.headline.append((key, metrics[key], reference))
            rows.append([key, metrics[key], "-" if reference is None else reference, what])
    report.sections.append("## Reconstruction and generation\n\n" + markdown_table(["metric", "value", "reference", "what"], rows))

    batch = _test_items(datamodule, 8)
    if batch is not None and "spec" in batch:
        device = model.device
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = model.labels(batch)
        generator = torch.Generator(device=device).manual_seed(0)
        rows = {
            "test input": batch["spec"],
            "reconstruction": model.reconstruct(batch["spec"], labels),
            "prior sample": model.sample(len(batch["spec"]), labels, generator=generator),
        }
        titles = [f"digit {int(d)}" for d in batch["digit"]] if "digit" in batch else None
        name = _save_figure(spectrogram_grid(rows, titles), out / "spectrograms.png")
        report.sections.append(
            "## Spectrograms\n\nTest clips spread over the split, their reconstructions (posterior mean) and "
            "prior samples conditioned on the same labels (seed 0).\n\n"
            f"![spectrograms](report/{name})\n"
        )
    return report


# -- pitch ---------------------------------------------------------------------------
def pitch_report(model, datamodule, metrics: dict[str, float], out: Path, trainer=None) -> Report:
    """Every ``test/`` metric under the dataset's name (``datamodule.name``, else its class),
    and reference vs estimated contours of a few test clips: on the reference's own time
    base when the data carry one (``ref_times``), else on the frames."""
    from audiolab.models.pitch import EVAL_CHUNK_FRAMES
    from audiolab.audio.pitch_grid import cents_to_hz

    report = Report()
    dataset = getattr(datamodule, "name", None) or type(datamodule).__name__
    rows = []
    for key in sorted(metrics):
        if key.startswith("test/") and key != "test/loss":
            report.headline.append((key, metrics[key], None))
            rows.append([dataset, key.removeprefix("test/"), metrics[key]])
    report.sections.append("## Accuracy per dataset\n\n" + markdown_table(["dataset", "metric", "value"], rows))
    attribution = getattr(datamodule, "attribution", None)
    if attribution:  # licences such as MDB-stem-synth's ask for it on every derived artifact
        report.sections.append(f"Data: {attribution}\n")

    test_set = datamodule.test_dataloader().dataset
    if len(test_set) == 0 or "frames" not in test_set[0]:
        return report
    picks = torch.linspace(0, len(test_set) - 1, min(4, len(test_set))).round().long().unique().tolist()
    items = [test_set[i] for i in picks]
    plt = _pyplot()
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    hop = getattr(datamodule, "hparams", {}).get("hop_length")
    rate = getattr(datamodule, "sample_rate", None)
    fig, axes = plt.subplots(len(items), 1, figsize=(8, 2.2 * len(items)), squeeze=False)
    for ax, item in zip(axes[:, 0], items, strict=True):
        with torch.no_grad():
            logits = model.logits(item["frames"].to(model.device), EVAL_CHUNK_FRAMES)
        cents, _, voiced = model.estimate(torch.sigmoid(logits.float()))
        guess = torch.where(voiced, cents_to_hz(cents), torch.nan).cpu()
        if "ref_times" in item:
            t_ref, ref = item["ref_times"], torch.where(item["ref_f0"] > 0, item["ref_f0"], torch.nan)
            t_est = item["times"]
        else:
            t_ref = t_est = torch.arange(len(item["f0"])).double() * (hop / rate if hop and rate else 1.0)
            ref = torch.where(item["voiced"].bool(), item["f0"], torch.nan)
        ax.plot(t_ref, ref, color="black", lw=2.5, label="reference")
        ax.plot(t_est, guess, color="tab:orange", lw=1.2, label="estimate")
        ax.set_yscale("log")
        # 1-2-3-5 ticks: a contour often spans less than a decade, which has no power of ten
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("f0 (Hz)")
    axes[-1, 0].set_xlabel("time (s)" if "ref_times" in items[0] or (hop and rate) else "frame")
    axes[0, 0].legend(loc="upper right")
    name = _save_figure(fig, out / "contours.png")
    report.sections.append(
        f"## Example contours\n\nReference f0 and the `{model.hparams.decoder}` estimate where the model calls "
        f"the frame voiced (periodicity >= {model.hparams.voicing_threshold}), {len(items)} "
        f"clips of `{dataset}`.\n\n![contours](report/{name})\n"
    )
    return report


# -- separation ----------------------------------------------------------------------
def separation_report(model, datamodule, metrics: dict[str, float], out: Path, trainer=None) -> Report:
    from audiolab.callbacks.museval import MusevalCallback

    report = Report()
    targets = list(model.targets)
    rows = [[t, metrics.get(f"test/sdr_{t}", float("nan"))] for t in targets]
    rows.append(["mean", metrics.get("test/sdr_mean", float("nan"))])
    report.headline += [(f"test/sdr_{name}", value, None) for name, value in rows]
    report.sections.append(
        "## Whole-track SDR (uSDR, dB, mean over test tracks)\n\n" + markdown_table(["target", "uSDR"], rows)
    )
    for callback in getattr(trainer, "callbacks", []):
        if isinstance(callback, MusevalCallback):
            aggregate = callback.root(trainer) / "test_aggregate.json"
            if aggregate.is_file():
                report.sections += _museval_sections(aggregate, out, report)
    return report


def _museval_sections(path: Path, out: Path, report: Report) -> list[str]:
    """The museval callback's aggregate (median over frames, then over tracks) and box
    plots of the per-track values (median over frames) of each target."""
    import csv

    data = json.loads(path.read_text())
    scores = data["scores"]
    metric_names = ["SDR", "SIR", "ISR", "SAR"]
    rows = [[t, *[scores[t][m] for m in metric_names]] for t in scores]
    report.headline += [(f"museval/sdr_{t}", scores[t]["SDR"], None) for t in scores]
    sections = [
        f"## museval (BSSEval v4, mode `{data['mode']}`, backend `{data['backend']}`)\n\n"
        f"Median over 1-s frames, then over {len(data['tracks'])} tracks.\n\n"
        + markdown_table(["target", *metric_names], rows)
    ]
    table = path.with_name("test_tracks.csv")
    if table.is_file():
        per_track = list(csv.DictReader(table.open()))
        plt = _pyplot()
        targets = list(scores)
        fig, axes = plt.subplots(1, 2, figsize=(2.2 * len(targets) + 3, 3.6))
        for ax, metric in zip(axes, ("SDR", "uSDR"), strict=True):
            values = [[float(r[metric]) for r in per_track if r["target"] == t] for t in targets]
            ax.boxplot(values, showmeans=True)
            ax.set_xticks(range(1, len(targets) + 1), targets)
            ax.set_ylabel(f"{metric} (dB)")
            ax.set_title("museval SDR, median over frames" if metric == "SDR" else "whole-track uSDR")
        name = _save_figure(fig, out / "sdr_per_track.png")
        sections.append(f"Per-track scores ({table.name}):\n\n![per-track SDR](report/{name})\n")
    return sections


def _reporter(model):
    from audiolab.models.pitch import PitchModule
    from audiolab.models.separation import SeparationModule
    from audiolab.models.vae import VAEModule

    for cls, fn in ((VAEModule, vae_report), (PitchModule, pitch_report), (SeparationModule, separation_report)):
        if isinstance(model, cls):
            return fn
    return None


def write_report(
    run_dir: Path, model, datamodule, metrics: dict[str, float], info: dict[str, Any], trainer=None
) -> Report:
    """Write ``run_dir/report.md`` (figures in ``run_dir/report/``) and return the report.
    ``trainer`` lets a reporter find its callbacks' outputs (museval)."""
    run_dir = Path(run_dir)
    figures = run_dir / "report"
    reporter = _reporter(model)
    was_training = model.training
    model.eval()
    try:
        report = reporter(model, datamodule, metrics, figures, trainer) if reporter else Report()
    finally:
        model.train(was_training)
    if not report.headline:
        report.headline = [(k, v, None) for k, v in sorted(metrics.items())]
    lines = [f"# Evaluation of `{Path(info['ckpt']).name}`\n"]
    lines.append(
        f"Checkpoint `{info['ckpt']}` (epoch {info.get('epoch')}, step {info.get('global_step')}); "
        f"model `{type(model).__name__}`, data `{type(datamodule).__name__}`.\n"
    )
    lines.append("## Headline\n\n" + markdown_table(
        ["metric", "value", "reference"], [[k, v, "-" if r is None else r] for k, v, r in report.headline]
    ))
    lines += report.sections
    lines.append("## All metrics\n\n" + markdown_table(["metric", "value"], [[k, v] for k, v in sorted(metrics.items())]))
    (run_dir / "report.md").write_text("\n".join(lines))
    return report
