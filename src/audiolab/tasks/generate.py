"""Generation task: prior samples of a trained VAE, or a latent interpolation between two
recordings, as wav files and a spectrogram grid.

The output folder is checked before the model is loaded; the files are written as
``.partial`` files and renamed into place once all of them are complete."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import soundfile as sf
import torch
from omegaconf import DictConfig

from audiolab.audio.features import spectrogram_to_audio
from audiolab.utils.atomic import atomic_write
from audiolab.utils.checkpoint import load_module
from audiolab.utils.errors import AudiolabError
from audiolab.utils.file_jobs import check_output_folder
from audiolab.utils.hydra import task_wrapper
from audiolab.utils.media import figure_to_array
from audiolab.utils.plots import spectrogram_grid

log = logging.getLogger("audiolab")


@task_wrapper
def generate(cfg: DictConfig) -> tuple[dict, dict]:
    out = check_output_folder(cfg.output if cfg.output else cfg.paths.output_dir)
    module, run = load_module(cfg.ckpt, cfg.device)
    if not hasattr(module, "sample") or not hasattr(module, "db_range"):
        raise AudiolabError(f"{cfg.ckpt} is a {type(module).__name__} checkpoint; generate.py needs a VAE checkpoint")
    data = run.data
    if data.get("feature") != "log_spectrogram":
        raise AudiolabError(f"the VAE was trained on {data.get('feature')!r} features; only log_spectrogram can be turned into sound")
    if cfg.get("interpolate"):
        specs, lo, hi, labels, titles, prefix = _interpolation(module, data, cfg)
    else:
        specs, labels = _prior_samples(module, cfg)
        n = len(specs)
        lo, hi = module.db_range[0].expand(n), module.db_range[1].expand(n)
        titles = [f"digit {int(d)}" for d in labels] if labels is not None else None
        prefix = "sample"
    length = round(data.duration * data.sample_rate)
    waves = spectrogram_to_audio(
        specs, lo, hi, n_fft=data.n_fft, hop_length=data.hop_length, n_iter=cfg.griffin_lim_iters, length=length
    )

    import matplotlib.pyplot as plt

    names = []
    writes = []
    for i, wave in enumerate(waves.cpu()):
        suffix = f"_digit{int(labels[i])}" if labels is not None and prefix == "sample" else ""
        name = f"{prefix}_{i:03d}{suffix}.wav"
        writes.append((name, lambda p, wave=wave: sf.write(p, wave.numpy(), data.sample_rate, format="WAV")))
        names.append(name)
    row = "interpolation" if prefix == "interp" else "prior sample"
    grid = figure_to_array(spectrogram_grid({row: specs}, titles))
    writes.append((f"{prefix}s.png", lambda p: plt.imsave(p, grid, format="png")))
    _write_all(out, writes)
    log.info(f"wrote {len(names)} clips and {prefix}s.png to {out}")
    print(f"{len(names)} clips in {out}")
    return {"files": names, "output": str(out)}, {"module": module}


def _write_all(out: Path, writes: list[tuple[str, Callable[[Path], None]]]) -> None:
    """Every file written, then all renamed into place together: a failure or an
    interruption leaves no half-written set (and no folder made for it)."""
    made = not out.exists()
    try:
        with atomic_write(*(out / name for name, _ in writes)) as temps:
            for temp, (_, write) in zip(temps, writes, strict=True):
                write(temp)
    except BaseException:
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _read_recording(path: Path, duration: float, sample_rate: int) -> torch.Tensor:
    """A recording as the VAE's training clips were made: mono, padded or cut to
    ``duration`` seconds, at ``sample_rate``. Any rate, channel count and length."""
    import math

    import torchaudio

    from audiolab.audio.features import pad_or_trim
    from audiolab.audio.io import read_audio

    audio, rate = read_audio(path)
    audio = pad_or_trim(audio, math.ceil(duration * rate))
    if rate != sample_rate:
        audio = torchaudio.functional.resample(audio, rate, sample_rate)
    return pad_or_trim(audio, round(duration * sample_rate))


def _prior_samples(module, cfg: DictConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    n = int(cfg.n)
    if n <= 0:
        raise AudiolabError(f"n must be a positive number of samples, got {n}")
    n_classes = getattr(module.net, "n_classes", 0)
    if cfg.digit is not None:
        labels = torch.full((n,), _check_digit(cfg.digit, n_classes), dtype=torch.long)
    else:
        labels = torch.arange(n) % n_classes if n_classes else None
    generator = torch.Generator(device=cfg.device).manual_seed(int(cfg.seed))
    labels = None if labels is None else labels.to(cfg.device)
    return module.sample(n, labels, generator=generator, temperature=None if cfg.temperature is None else float(cfg.temperature)), labels


def _check_digit(digit, n_classes: int) -> int:
    if n_classes == 0:
        raise AudiolabError("this VAE is not conditional (trained without labels): drop digit=")
    if not 0 <= int(digit) < n_classes:
        raise AudiolabError(f"digit must be in [0, {n_classes}), got {digit}")
    return int(digit)


def _interpolation(module, data, cfg: DictConfig):
    """Encode two recordings with the training run's feature pipeline, decode ``steps``
    points between their posterior means; the dB range is blended the same way."""
    from audiolab.data.fsdd import FILE_PATTERN, FsddFeatures

    paths = [Path(p).expanduser() for p in cfg.interpolate]
    if len(paths) != 2:
        raise AudiolabError(f"interpolate takes two audio files, e.g. interpolate=[a.wav,b.wav]; got {len(paths)}")
    for path in paths:
        if not path.is_file():
            raise AudiolabError(f"interpolate: no such file {path}")
    steps = int(cfg.steps)
    if steps < 2:
        raise AudiolabError(f"steps must be at least 2 (the two ends), got {steps}")
    audio = torch.stack([_read_recording(p, data.duration, data.sample_rate) for p in paths])
    features = FsddFeatures(data.feature, data.sample_rate, data.n_fft, data.hop_length, data.n_mels)(audio)
    device = module.device
    labels = None
    n_classes = getattr(module.net, "n_classes", 0)
    if n_classes:
        if cfg.digit is not None:
            labels = torch.full((2,), _check_digit(cfg.digit, n_classes))
        else:
            matches = [FILE_PATTERN.match(p.name) for p in paths]
            if not all(matches):
                raise AudiolabError(
                    "this VAE is conditioned on the digit: name the files {digit}_{speaker}_{index}.wav "
                    "(FSDD style) or pass digit=<0-9> for both"
                )
            labels = torch.tensor([int(m["digit"]) for m in matches])
        labels = labels.to(device)
    spec = features["spec"].to(device)
    specs = module.interpolate(spec[0], spec[1], steps=steps, labels=labels)
    t = torch.linspace(0, 1, steps, device=device)
    lo = torch.lerp(features["min"][0].to(device), features["min"][1].to(device), t)
    hi = torch.lerp(features["max"][0].to(device), features["max"][1].to(device), t)
    titles = [f"{paths[0].stem}" if i == 0 else (paths[1].stem if i == steps - 1 else f"t={float(t[i]):.2f}")
              for i in range(steps)]
    return specs, lo, hi, labels, titles, "interp"
