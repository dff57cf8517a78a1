"""Plots people would rather look at than read."""

from __future__ import annotations

import numpy as np
import torch


def spectrogram_grid(rows: dict[str, torch.Tensor], column_titles: list[str] | None = None):
    """A grid of spectrograms: one row per entry of ``rows`` (each ``(n, [1,] bins,
    frames)``, values in [0, 1]), low frequencies at the bottom. Returns the figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 0.8, 2.0 * len(rows)), squeeze=False)
    for r, (name, specs) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(specs):
                image = specs[c].detach().float().cpu().reshape(specs.shape[-2], specs.shape[-1]).numpy()
                ax.imshow(image, origin="lower", aspect="auto", cmap="magma", vmin=0.0, vmax=1.0)
            else:
                ax.axis("off")
            if c == 0:
                ax.set_ylabel(name)
            if r == 0 and column_titles and c < len(column_titles):
                ax.set_title(column_titles[c], fontsize=8)
    fig.tight_layout()
    return fig


def as_numpy_audio(wave: torch.Tensor) -> np.ndarray:
    return wave.detach().float().cpu().numpy()
