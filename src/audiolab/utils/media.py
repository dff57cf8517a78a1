"""Images and audio for people to look at and listen to: saved in the run folder and
sent to the loggers that can show them (W&B image and audio panels, TensorBoard)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import soundfile as sf
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_")


def media_dir(trainer) -> Path:
    return Path(trainer.default_root_dir) / "media"


def figure_to_array(fig) -> np.ndarray:
    """Render a matplotlib figure to an RGB uint8 array (H, W, 3) and close it."""
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def log_image(trainer, key: str, image: np.ndarray, step: int) -> Path:
    """Save ``image`` (H, W, 3 uint8) as PNG under the run's media folder and log it."""
    import matplotlib.pyplot as plt

    path = media_dir(trainer) / _slug(key) / f"step_{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, image)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[image], step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, global_step=step, dataformats="HWC")
    return path


def log_audio(trainer, key: str, audio: np.ndarray, sample_rate: int, step: int) -> Path:
    """Save ``audio`` (samples,) as a wav under the run's media folder and log it."""
    audio = np.asarray(audio, dtype=np.float32)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > 1.0:
        audio = audio / peak
    path = media_dir(trainer) / _slug(key) / f"step_{step:07d}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, sample_rate)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_audio(key=key, audios=[audio], step=step, sample_rate=[sample_rate])
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_audio(key, audio[None], global_step=step, sample_rate=sample_rate)
    return path


def markdown_table(columns: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured markdown table; floats with 3 decimals."""

    def cell(value) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def log_table(trainer, key: str, columns: list[str], rows: list[list], step: int) -> None:
    """Send a table to the loggers that can show one: a W&B table, or markdown text in
    TensorBoard. (Callers keep their own copy in the run folder.)"""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_table(key=key, columns=columns, data=rows, step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(key, markdown_table(columns, rows), global_step=step)
