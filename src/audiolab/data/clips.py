"""Whole recordings listed by a DataModule for tasks that read the audio themselves
(teacher-labelled pitch data reads the FSDD recordings and the MUSDB18 vocal stems)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class AudioClip:
    """One mono recording.

    Args:
        name: unique within its list; used in messages and cache metadata.
        identity: what the audio depends on (name, file size, modification time, ...),
            hashable into a cache key, so that a changed file is never read stale.
        read: ``() -> (audio (samples,) float32, sample_rate)``, or None when the
            DataModule skips a bad file (it has warned about it).
    """

    name: str
    identity: tuple
    read: Callable[[], tuple[torch.Tensor, int] | None]


def file_identity(name: str, path: Path) -> tuple:
    """``(name, size, mtime_ns)`` of ``path``: changes whenever the file is rewritten."""
    stat = Path(path).stat()
    return (name, stat.st_size, stat.st_mtime_ns)
