"""Writing files and folders so that no reader, and no later run, ever sees half of one:
checkpoints, caches, generated datasets, score files and the outputs of the file tools all
go through :func:`atomic_write`."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(*targets: str | Path, keep_existing_folder: bool = False) -> Iterator[list[Path]]:
    """Temporary paths beside ``targets``, one each (``.<name>.<random>.partial``): write a
    file or a folder at each. When the block ends without an error, every one is flushed to
    disk and renamed over its target, all of them together at the end; when it raises (an
    error, Ctrl-C), they are removed and the targets stay as they were.

    A folder replaces an existing target folder, unless ``keep_existing_folder``: then an
    existing target (a cache another process finished first) is kept and ours dropped."""
    finals = [Path(t) for t in targets]
    temps = []
    for final in finals:
        final.parent.mkdir(parents=True, exist_ok=True)
        temps.append(final.with_name(f".{final.name}.{secrets.token_hex(4)}.partial"))
    try:
        yield temps
        for temp in temps:
            _fsync(temp)
        for temp, final in zip(temps, finals, strict=True):
            if temp.is_dir() and final.is_dir():
                if keep_existing_folder:
                    continue
                shutil.rmtree(final)
            os.replace(temp, final)
        for folder in {final.parent for final in finals}:
            _fsync(folder)
    finally:
        for temp in temps:
            if temp.is_dir():
                shutil.rmtree(temp, ignore_errors=True)
            else:
                temp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file's data (or a folder's entries) to disk; a no-op where that is not
    possible (a path that is gone, a filesystem that refuses)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
