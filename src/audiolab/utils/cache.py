"""On-disk caches named by what they depend on, written so that no reader ever sees half
of one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def config_hash(config: object) -> str:
    """16 hex digits of the SHA-1 of ``config`` as canonical JSON (keys sorted): the name
    of a cache folder, so that a changed input never reads a stale cache."""
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """A fresh temporary folder beside ``target``, renamed to ``target`` when the block
    ends without an error and removed when it raises: a killed or failed run never
    leaves half a cache behind. When another process finished ``target`` first, its copy
    is kept and ours dropped."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, target)
    except OSError:  # target exists and is not empty: another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
