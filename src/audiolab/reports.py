"""``eval.py``'s report: ``report.md`` beside ``metrics.json`` in the run dir, with the
task's headline table and the plots people look at (spectrogram grids, pitch contours,
SDR box plots).

Every task module reports itself: :meth:`audiolab.models.base.TaskModule.report` returns
the headline rows and the markdown sections and writes its figures under
``<run dir>/report/``; what a callback measured (museval) the module asks the callback
for. This file holds what the reports share and writes ``report.md``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import default_collate

from audiolab.utils.media import markdown_table


@dataclass
class Report:
    """What a reporter found: ``headline`` rows ``(metric, value, reference)`` for the
    console and the top of the report, then markdown ``sections``."""

    headline: list[tuple[str, float, float | str | None]] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)


def save_figure(fig, path: Path) -> str:
    """Save a matplotlib figure as ``path`` (folders made), close it, return its file name."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.name


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def spread_items(dataset, n: int) -> list:
    """``n`` items of ``dataset`` spread evenly over it (fewer when it is smaller)."""
    if len(dataset) == 0:
        return []
    picks = torch.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().long().unique()
    return [dataset[i] for i in picks.tolist()]


def test_items(datamodule, n: int) -> dict[str, torch.Tensor] | None:
    """``n`` test items spread evenly over the test set, collated (None if it is empty)."""
    items = spread_items(datamodule.test_dataloader().dataset, n)
    return default_collate(items) if items else None


def write_report(
    run_dir: Path, model, datamodule, metrics: dict[str, float], info: dict[str, Any], trainer=None
) -> Report:
    """Write ``run_dir/report.md`` (figures in ``run_dir/report/``) and return the report.
    The model's own ``report(datamodule, metrics, figures, trainer)`` fills it (``trainer``
    lets it ask its callbacks for what they measured); a model without one gets the
    metrics table alone."""
    run_dir = Path(run_dir)
    figures = run_dir / "report"
    reporter = getattr(model, "report", None)
    was_training = model.training
    model.eval()
    try:
        report = reporter(datamodule, metrics, figures, trainer) if callable(reporter) else Report()
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
