"""Separation task: ``python src/separate.py ckpt=PATH input=<file or folder> output=DIR``.

One model load, every audio file under ``input`` separated into
``output/<path below input>/<track>/<target>.wav`` beside the settings record
``settings.json`` (``in/a/x.wav`` -> ``out/a/x/vocals.wav``; a single file ->
``out/<track>/``); a file that fails is reported and the others go on. Reruns, settings
records and interruptions: :mod:`audiolab.utils.file_jobs`."""

from __future__ import annotations

import logging
from pathlib import Path

import soundfile as sf
from omegaconf import DictConfig

from audiolab.audio.io import track_name
from audiolab.separation.files import output_names, write_stems
from audiolab.separation.overlap_add import WINDOWS
from audiolab.utils.checkpoint import load_module
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


def separation_job(source: Path, folder: Path, names: list[str]) -> FileJob:
    """``folder/<name>.wav`` for each output and the record ``folder/settings.json``."""
    return FileJob(source, tuple(folder / f"{name}.wav" for name in names), folder / "settings.json")


def _check_chunking(chunk_seconds, overlap, window, batch_size) -> None:
    """The overlap-add settings, checked before the first file (not as a traceback in it)."""
    problems = []
    if not chunk_seconds > 0:
        problems.append(f"chunk_seconds must be positive, got {chunk_seconds}")
    if not 0 <= overlap < 1:
        problems.append(f"overlap must be in [0, 1), got {overlap}")
    if window not in WINDOWS:
        problems.append(f"window must be one of {', '.join(WINDOWS)}, got {window}")
    if not batch_size >= 1:
        problems.append(f"batch_size must be at least 1, got {batch_size}")
    if problems:
        raise AudiolabError("; ".join(problems))


@task_wrapper
def separate_files(cfg: DictConfig) -> tuple[dict, dict]:
    from tqdm.auto import tqdm

    out = check_output_folder(cfg.output if cfg.output else cfg.paths.output_dir)
    source = Path(cfg.input).expanduser()
    files = find_inputs(source, out)
    folders = place_outputs(files, source, out, lambda rel: rel.parent / track_name(rel))
    device = resolve_device(str(cfg.device))
    module, _ = load_module(cfg.ckpt, device)
    if not hasattr(module, "separate"):
        raise AudiolabError(
            f"{cfg.ckpt} is a {type(module).__name__} checkpoint; separate.py needs a separation checkpoint"
        )
    names = output_names(module, cfg.targets, cfg.accompaniment)
    if not sf.check_format("WAV", str(cfg.subtype)):
        raise AudiolabError(f"subtype={cfg.subtype} is not a wav sample format: use FLOAT, PCM_16 or PCM_24")
    jobs = [separation_job(f, d, names) for f, d in zip(files, folders, strict=True)]
    hp = module.hparams
    chunking = {
        "chunk_seconds": cfg.chunk_seconds if cfg.chunk_seconds is not None else hp.chunk_seconds,
        "overlap": cfg.overlap if cfg.overlap is not None else hp.overlap,
        "window": cfg.window if cfg.window is not None else hp.window,
    }
    # what shapes the outputs; targets and accompaniment decide which outputs there are
    # (a record lists them), batch_size and device only change the speed
    settings = {**model_identity(cfg.ckpt), **chunking, "subtype": cfg.subtype}
    batch_size = cfg.batch_size if cfg.batch_size is not None else hp.separate_batch_size
    _check_chunking(**chunking, batch_size=batch_size)
    rate = module.sample_rate

    def produce(job: FileJob) -> None:
        with tqdm(desc=job.source.name, unit="s", unit_scale=True, leave=False) as inner:
            write_stems(
                module,
                job.source,
                {output.stem: job.partial(output) for output in job.outputs},
                device=device,
                subtype=cfg.subtype,
                progress=lambda n: inner.update(n / rate),
                batch_size=batch_size,
                **chunking,
            )

    tally = run_jobs(jobs, settings, produce, overwrite=cfg.overwrite)
    finish(tally, "separated", out, settings, failure="could not be separated")
    return {"written": [str(p) for p in tally.written_paths], "output": str(out)}, {"module": module}
