"""Generation task: prior samples of a trained VAE as wav files and a spectrogram grid."""

from __future__ import annotations

import logging
from pathlib import Path

import soundfile as sf
import torch
from omegaconf import DictConfig

from audiolab.audio.features import spectrogram_to_audio
from audiolab.utils.checkpoint import load_module
from audiolab.utils.errors import AudiolabError
from audiolab.utils.hydra import task_wrapper
from audiolab.utils.media import figure_to_array
from audiolab.utils.plots import spectrogram_grid

log = logging.getLogger("audiolab")


@task_wrapper
def generate(cfg: DictConfig) -> tuple[dict, dict]:
    module, run = load_module(cfg.ckpt, cfg.device)
    if not hasattr(module, "sample") or not hasattr(module, "db_range"):
        raise AudiolabError(f"{cfg.ckpt} is a {type(module).__name__} checkpoint; generate.py needs a VAE checkpoint")
    data = run.data
    if data.get("feature") != "log_spectrogram":
        raise AudiolabError(f"the VAE was trained on {data.get('feature')!r} features; only log_spectrogram can be turned into sound")
    n = int(cfg.n)
    if n <= 0:
        raise AudiolabError(f"n must be a positive number of samples, got {n}")
    n_classes = getattr(module.net, "n_classes", 0)
    if cfg.digit is not None:
        if n_classes == 0:
            raise AudiolabError("this VAE is not conditional (trained without labels): drop digit=")
        if not 0 <= int(cfg.digit) < n_classes:
            raise AudiolabError(f"digit must be in [0, {n_classes}), got {cfg.digit}")
        labels = torch.full((n,), int(cfg.digit), dtype=torch.long)
    else:
        labels = torch.arange(n) % n_classes if n_classes else None

    generator = torch.Generator(device=cfg.device).manual_seed(int(cfg.seed))
    specs = module.sample(n, None if labels is None else labels.to(cfg.device), generator=generator)
    lo, hi = module.db_range[0].expand(n), module.db_range[1].expand(n)
    length = round(data.duration * data.sample_rate)
    waves = spectrogram_to_audio(
        specs, lo, hi, n_fft=data.n_fft, hop_length=data.hop_length, n_iter=cfg.griffin_lim_iters, length=length
    )

    out = Path(cfg.output if cfg.output else cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for i, wave in enumerate(waves.cpu()):
        suffix = f"_digit{int(labels[i])}" if labels is not None else ""
        path = out / f"sample_{i:03d}{suffix}.wav"
        sf.write(path, wave.numpy(), data.sample_rate)
        names.append(path.name)
    titles = [f"digit {int(d)}" for d in labels] if labels is not None else None
    import matplotlib.pyplot as plt

    plt.imsave(out / "samples.png", figure_to_array(spectrogram_grid({"prior sample": specs}, titles)))
    log.info(f"wrote {n} samples and samples.png to {out}")
    print(f"{n} samples in {out}")
    return {"files": names, "output": str(out)}, {"module": module}
