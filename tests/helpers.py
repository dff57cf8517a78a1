"""Shared test helpers: composing the real configs, running the real CLIs, locating
../shared/data."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig

from audiolab.cli import compose_run

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "conf"
# The default job (CREPE on synthetic tones) on a training budget small enough for CI: a
# handful of batches per stage.
SMALL = [
    "data.batch_size=16",
    "data.train_batches_per_epoch=4",
    "data.val_clips=4",
    "data.test_clips=4",
    "data.eval_batch_size=2",
    "extras.print_config=false",
]
RUN_DIR_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}-\d{6}$")


def shared_data_dir() -> Path | None:
    """``$AUDIOLAB_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    env = os.environ.get("AUDIOLAB_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None


def require_shared(*parts: str) -> Path:
    base = shared_data_dir()
    if base is None or not base.joinpath(*parts).exists():
        pytest.skip(
            f"shared test data {'/'.join(parts)} not found: set AUDIOLAB_SHARED_DATA or put "
            "the shared/ folder beside the repository"
        )
    return base.joinpath(*parts)


def compose_config(config_name: str, overrides: list[str], out_dir: Path) -> DictConfig:
    """Compose a real config the way the entry points do, with every output under ``out_dir``."""
    return compose_run(config_name, [f"paths.log_dir={out_dir}", *overrides], out_dir)


def run_cli(
    script: str, *args: str, timeout: int = 600, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``python src/<script>.py args...`` from the repository root."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0")
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "src" / f"{script}.py"), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{script}.py {' '.join(args)} failed ({proc.returncode})\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def output_dir_of(proc: subprocess.CompletedProcess) -> Path:
    """The run dir printed by the task wrapper (``Output dir: ...``)."""
    found = re.findall(r"^Output dir: (.+)$", proc.stdout, flags=re.M)
    assert found, f"no 'Output dir:' line in\n{proc.stdout[-3000:]}"
    return Path(found[-1].strip())


def read_wandb_records(path: Path) -> list:
    """Parse an offline W&B run file (``run-<id>.wandb``) into protobuf ``Record``s.

    The file is a 7-byte header (``:W&B``, magic, version) followed by a LevelDB-style log:
    32 KiB blocks of chunks, each ``crc32 (4) | length (2, little endian) | type (1)``;
    type 1 is a whole record, 2/3/4 the first/middle/last piece of a split one."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left_in_block = block - pos % block
        if left_in_block < 7:  # block trailer padding
            pos += left_in_block
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records
