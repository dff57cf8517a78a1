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


def pitch_contour_figure(
    audio: torch.Tensor,
    sample_rate: int,
    f0: torch.Tensor,
    periodicity: torch.Tensor,
    hop_seconds: float,
    voicing_threshold: float = 0.5,
    title: str | None = None,
    max_columns: int = 2000,
):
    """A pitch track over the spectrogram of mono ``audio`` ``(samples,)``, on a log
    frequency axis, with the periodicity below it. The contour is drawn where the
    periodicity reaches ``voicing_threshold`` (dashed line in the lower panel). The
    spectrogram hop grows with the clip so that it has at most ``max_columns`` columns:
    a long file plots as fast as a short one. Returns the figure."""
    import math

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    from audiolab.audio.features import amplitude_to_db
    from audiolab.audio.stft import Stft

    # 64 ms windows resolve the harmonics of voices down to about 30 Hz
    n_fft = 2 ** math.ceil(math.log2(0.064 * sample_rate))
    hop = max(n_fft // 4, math.ceil(audio.shape[-1] / max_columns))
    stft = Stft(n_fft, hop, pad_mode="constant")
    db = amplitude_to_db(stft(audio.float().cpu()).abs(), top_db=80.0)
    freqs = torch.arange(db.shape[-2]) * sample_rate / n_fft
    times = torch.arange(db.shape[-1]) * hop / sample_rate
    t = torch.arange(len(f0)) * hop_seconds
    period = periodicity.detach().float().cpu()
    contour = torch.where(period >= voicing_threshold, f0.detach().float().cpu(), torch.nan)

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(9, 4.8), sharex=True, gridspec_kw={"height_ratios": [4, 1]}
    )
    # the DC bin has no place on a log axis
    top.pcolormesh(times.numpy(), freqs[1:].numpy(), db[1:].numpy(), shading="nearest", cmap="magma")
    top.plot(t.numpy(), contour.numpy(), color="cyan", lw=1.6, label=f"f0 (periodicity >= {voicing_threshold:g})")
    top.set_yscale("log")
    top.set_ylim(30.0, sample_rate / 2)
    top.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    top.yaxis.set_major_formatter(ScalarFormatter())
    top.yaxis.set_minor_formatter(NullFormatter())
    top.set_ylabel("frequency (Hz)")
    top.legend(loc="upper right", fontsize=8)
    if title:
        top.set_title(title, fontsize=9)
    bottom.plot(t.numpy(), period.numpy(), color="black", lw=1.0)
    bottom.axhline(voicing_threshold, color="tab:red", ls="--", lw=0.8)
    bottom.set_ylim(0.0, 1.0)
    bottom.set_ylabel("periodicity")
    bottom.set_xlabel("time (s)")
    fig.tight_layout()
    return fig
