"""Pitch tracking task: ``python src/predict.py ckpt=<tiny|full|checkpoint> input=<file or
folder> output=DIR``.

One model load; for every audio file under ``input`` a CSV ``time,f0,periodicity`` and a
PNG of the contour over the spectrogram in ``output`` (the folder's layout is kept). A file
that cannot be read is reported by name and the others go on; the run then exits with
status 1."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from audiolab.pitch.inference import PitchInputError, load_model, predict_files_to_files
from audiolab.separate import resolve_device
from audiolab.separation.files import AudioFileError, find_audio_files
from audiolab.utils.errors import AudiolabError
from audiolab.utils.hydra import task_wrapper

log = logging.getLogger("audiolab")


def output_paths(files: list[Path], source: Path, out: Path) -> list[Path]:
    """``out/<path below source>.csv`` for each file (``out/<name>.csv`` for a single file).
    Two inputs that would share an output (``a.wav`` and ``a.flac``) are refused."""
    base = source if source.is_dir() else source.parent
    outputs = [out / f.relative_to(base).with_suffix(".csv") for f in files]
    seen: dict[Path, Path] = {}
    for f, o in zip(files, outputs, strict=True):
        if o in seen:
            raise AudiolabError(
                f"{seen[o]} and {f} would both write {o}: rename one of them or run them separately"
            )
        seen[o] = f
    return outputs


@task_wrapper
def predict_files(cfg: DictConfig) -> tuple[dict, dict]:
    from tqdm.auto import tqdm

    device = resolve_device(str(cfg.device))
    net = load_model(str(cfg.ckpt), device)
    source = Path(cfg.input).expanduser()
    files = find_audio_files(source)
    out = Path(cfg.output if cfg.output else cfg.paths.output_dir).expanduser()
    outputs = output_paths(files, source, out)
    settings = {
        "model": net,
        "device": device,
        "decoder": cfg.decoder,
        "hop_length": cfg.hop_length,
        "fmin": cfg.fmin,
        "fmax": cfg.fmax,
        "batch_size": cfg.batch_size,
        "silence_db": cfg.silence_db,
        "plot": cfg.plot,
        "voicing_threshold": cfg.voicing_threshold,
        "overwrite": cfg.overwrite,
    }
    written, failed, skipped = [], [], 0
    with tqdm(list(zip(files, outputs, strict=True)), desc="files", unit="file", disable=len(files) == 1) as bar:
        for path, target in bar:
            bar.set_postfix_str(path.name)
            try:
                done = predict_files_to_files([path], [target], **settings)
            except (PitchInputError, AudioFileError) as exc:
                if len(files) == 1:
                    raise
                log.error(f"skipped {path}: {exc}")
                failed.append(str(path))
                continue
            skipped += not done
            written += done
    if skipped:
        log.info(f"{skipped} files already had their outputs in {out} (overwrite=true redoes them)")
    print(f"tracked pitch in {len(files) - len(failed)} of {len(files)} files into {out}")
    if failed:
        raise AudiolabError(
            f"{len(failed)} of {len(files)} files could not be read (the others were written): {', '.join(failed)}"
        )
    return {"written": [str(p) for p in written], "output": str(out)}, {"net": net}
