"""Pitch tracking task: ``python src/predict.py ckpt=<tiny|full|checkpoint> input=<file or
folder> output=DIR``.

One model load; for every audio file under ``input`` a CSV ``time,f0,periodicity``, a PNG
of the contour over the spectrogram and the settings record ``<name>.settings.json`` in
``output``, whose layout mirrors the input folder's (``in/a/x.wav`` -> ``out/a/x.csv``).
A file that cannot be read is reported by name and the others go on; the run then exits
with status 1. Reruns, settings records and interruptions:
:mod:`audiolab.utils.file_jobs`."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from audiolab.pitch.decode import DECODERS
from audiolab.pitch.inference import load_model, write_pitch_files
from audiolab.pitch.pretrained import SHIPPED, shipped_weights_digest
from audiolab.utils.devices import resolve_device
from audiolab.utils.errors import AudiolabError
from audiolab.utils.file_jobs import (
    FileJob,
    check_output_folder,
    find_inputs,
    finish,
    model_identity,
    place_outputs,
    run_jobs,
)
from audiolab.utils.hydra import task_wrapper

log = logging.getLogger("audiolab")


def pitch_job(source: Path, csv: Path, plot: bool) -> FileJob:
    """``x.csv`` (+ ``x.png``) and the record ``x.settings.json``."""
    outputs = [csv, csv.with_suffix(".png")] if plot else [csv]
    return FileJob(source, tuple(outputs), csv.with_suffix(".settings.json"))


def _check_settings(cfg: DictConfig) -> None:
    """The tracking settings, checked before the model is loaded (not as a traceback in
    the first file)."""
    problems = []
    if cfg.decoder not in DECODERS:
        problems.append(f"decoder must be one of {', '.join(sorted(DECODERS))}, got {cfg.decoder}")
    if not (isinstance(cfg.hop_length, int) and cfg.hop_length >= 1):
        problems.append(f"hop_length must be a positive number of samples at 16 kHz, got {cfg.hop_length}")
    if not 0 < cfg.fmin < cfg.fmax:
        problems.append(f"need 0 < fmin < fmax, got fmin={cfg.fmin} and fmax={cfg.fmax}")
    if not (isinstance(cfg.batch_size, int) and cfg.batch_size >= 1):
        problems.append(f"batch_size must be at least 1, got {cfg.batch_size}")
    if problems:
        raise AudiolabError("; ".join(problems))


@task_wrapper
def predict_files(cfg: DictConfig) -> tuple[dict, dict]:
    out = check_output_folder(cfg.output if cfg.output else cfg.paths.output_dir)
    source = Path(cfg.input).expanduser()
    files = find_inputs(source, out)
    csvs = place_outputs(files, source, out, lambda rel: rel.with_suffix(".csv"))
    jobs = [pitch_job(f, csv, cfg.plot) for f, csv in zip(files, csvs, strict=True)]
    _check_settings(cfg)
    device = resolve_device(str(cfg.device))
    net = load_model(str(cfg.ckpt), device)
    # what shapes the outputs (not batch_size or device, which only change the speed)
    settings = {
        **model_identity(cfg.ckpt),
        "decoder": cfg.decoder,
        "hop_length": cfg.hop_length,
        "fmin": cfg.fmin,
        "fmax": cfg.fmax,
        "silence_db": cfg.silence_db,
    }
    if str(cfg.ckpt) in SHIPPED:  # by its weights too: outputs of other weights are stale
        settings["model_weights"] = shipped_weights_digest(str(cfg.ckpt))
    if cfg.plot:
        settings["voicing_threshold"] = cfg.voicing_threshold
    predict_kwargs = {
        "model": net,
        "device": device,
        "decoder": cfg.decoder,
        "hop_length": cfg.hop_length,
        "fmin": cfg.fmin,
        "fmax": cfg.fmax,
        "batch_size": cfg.batch_size,
        "silence_db": cfg.silence_db,
    }

    def produce(job: FileJob) -> None:
        partials = [job.partial(o) for o in job.outputs]
        write_pitch_files(job.source, *partials, voicing_threshold=cfg.voicing_threshold, **predict_kwargs)

    tally = run_jobs(jobs, settings, produce, overwrite=cfg.overwrite)
    finish(tally, "tracked pitch in", out, settings)
    return {"written": [str(p) for p in tally.written_paths], "output": str(out)}, {"net": net}
