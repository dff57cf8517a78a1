"""The shared data folder of the benchmarks: ``$AUDIOLAB_SHARED_DATA`` or ``../shared/data``
beside the repository (the tests find it the same way, in ``tests/helpers.py``)."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data(*parts: str) -> Path:
    """The shared data folder, or a path inside it; exits with one line where it is missing."""
    env = os.environ.get("AUDIOLAB_SHARED_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    path = root.joinpath(*parts)
    if not path.exists():
        raise SystemExit(
            f"error: {path} not found: set AUDIOLAB_SHARED_DATA to the shared data folder"
        )
    return path
