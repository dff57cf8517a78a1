"""Separation task: ``python src/separate.py ckpt=PATH input=<file or folder> output=DIR``.

One model load, every audio file under ``input`` separated into
``output/<track>/<target>.wav``; a file that fails is reported and the others go on."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from audiolab.separation.files import find_audio_files, separate_file
from audiolab.separation.overlap_add import SeparationInputError
from audiolab.utils.checkpoint import load_module
from audiolab.utils.errors import AudiolabError
from audiolab.utils.hydra import task_wrapper

log = logging.getLogger("audiolab")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AudiolabError(
            f"device={name} but no CUDA GPU is available; use device=cpu or device=auto"
        )
    return device


@task_wrapper
def separate_files(cfg: DictConfig) -> tuple[dict, dict]:
    from tqdm.auto import tqdm

    device = resolve_device(str(cfg.device))
    module, _ = load_module(cfg.ckpt, device)
    if not hasattr(module, "separate"):
        raise AudiolabError(
            f"{cfg.ckpt} is a {type(module).__name__} checkpoint; separate.py needs a separation checkpoint"
        )
    hp = module.hparams
    settings = {
        "chunk_seconds": cfg.chunk_seconds if cfg.chunk_seconds is not None else hp.chunk_seconds,
        "overlap": cfg.overlap if cfg.overlap is not None else hp.overlap,
        "window": cfg.window if cfg.window is not None else hp.window,
        "batch_size": cfg.batch_size if cfg.batch_size is not None else hp.separate_batch_size,
    }
    files = find_audio_files(cfg.input)
    out = Path(cfg.output if cfg.output else cfg.paths.output_dir)
    written, failed = [], []
    with tqdm(files, desc="files", unit="file", disable=len(files) == 1) as bar:
        for path in bar:
            bar.set_postfix_str(path.name)
            with tqdm(desc=path.name, unit="s", unit_scale=True, leave=False) as inner:
                rate = module.sample_rate
                try:
                    written += separate_file(
                        module,
                        path,
                        out,
                        targets=cfg.targets,
                        accompaniment=cfg.accompaniment,
                        device=device,
                        subtype=cfg.subtype,
                        overwrite=cfg.overwrite,
                        progress=lambda n, inner=inner, rate=rate: inner.update(n / rate),
                        **settings,
                    )
                except SeparationInputError as exc:
                    if len(files) == 1:
                        raise
                    log.error(f"skipped {path}: {exc}")
                    failed.append(str(path))
    log.info(f"wrote {len(written)} files under {out}")
    print(f"separated {len(files) - len(failed)} of {len(files)} files into {out}")
    if failed:
        raise AudiolabError(
            f"{len(failed)} of {len(files)} files could not be separated (the others were written): {', '.join(failed)}"
        )
    return {"written": [str(p) for p in written], "output": str(out)}, {"module": module}
