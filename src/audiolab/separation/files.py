"""Separating audio files: streamed decoding (:mod:`audiolab.audio.io`), streamed writing,
one model load for many files. The audio arrives in blocks, goes through
:func:`iter_separate` and is written block by block, so memory stays flat however long the
file is.

Writing is safe: :func:`separate_file` writes through
:func:`audiolab.utils.atomic.atomic_write`, so an interrupted or failed file never leaves a
truncated output, and finished outputs are never overwritten unless asked.

Bad files are refused with one line naming them (see :mod:`audiolab.audio.io`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import soundfile as sf
import torch
from torch import nn

from audiolab.audio.io import read_blocks, track_name
from audiolab.separation.overlap_add import SeparationInputError, iter_separate, network_of
from audiolab.utils.atomic import atomic_write

log = logging.getLogger("audiolab")


def output_names(model: nn.Module, targets: Sequence[str] | None = None, accompaniment: bool = True) -> list[str]:
    """The outputs (without ``.wav``) that :func:`separate_file` writes: ``targets`` (all the
    network separates when None), plus ``accompaniment`` = mixture - vocals when asked for
    and the network separates vocals but not accompaniment."""
    net = network_of(model)
    names = list(targets) if targets else list(net.targets)
    unknown = sorted(set(names) - set(net.targets))
    if unknown:
        raise SeparationInputError(
            f"the network does not separate {unknown}; it separates {net.targets}"
        )
    residual = accompaniment and "vocals" in net.targets and "accompaniment" not in net.targets
    return names + (["accompaniment"] if residual else [])


def separate_file(
    model: nn.Module,
    path: str | Path,
    out_dir: str | Path,
    targets: Sequence[str] | None = None,
    accompaniment: bool = True,
    overwrite: bool = False,
    **kwargs,
) -> list[Path]:
    """Separate one file into ``out_dir/<track>/<target>.wav`` (at the network's sample
    rate), plus ``accompaniment.wav`` = mixture - vocals when the network separates
    vocals but not accompaniment, all renamed into place together once complete. Returns
    the written paths; outputs that already exist are kept (the file is skipped) unless
    ``overwrite``. ``kwargs``: as :func:`write_stems`."""
    path = Path(path)
    outputs = output_names(model, targets, accompaniment)
    folder = Path(out_dir) / track_name(path)
    final = [folder / f"{name}.wav" for name in outputs]
    if not overwrite and all(p.exists() for p in final):
        log.info(f"{path.name}: outputs exist in {folder}, skipping (overwrite=true redoes them)")
        return []
    with atomic_write(*final) as temps:
        write_stems(model, path, dict(zip(outputs, temps, strict=True)), **kwargs)
    return final


def write_stems(
    model: nn.Module,
    path: str | Path,
    files: dict[str, Path],
    chunk_seconds: float = 6.0,
    overlap: float = 0.25,
    window: str = "hann",
    batch_size: int = 4,
    device: str | torch.device | None = None,
    subtype: str = "FLOAT",
    progress: Callable[[int], None] | None = None,
) -> None:
    """Separate ``path`` and write each stem of ``files`` (``{name: wav path}``, names from
    :func:`output_names`) block by block, exactly to those paths: renaming them into place
    is the caller's (:func:`separate_file`, :mod:`audiolab.utils.file_jobs`)."""
    net = network_of(model)
    path = Path(path)
    residual = "accompaniment" in files and "accompaniment" not in net.targets
    names = [name for name in files if not (residual and name == "accompaniment")]
    channels = getattr(net, "audio_channels", 2)
    _, blocks = read_blocks(path, net.sample_rate, channels)
    index = {name: list(net.targets).index(name) for name in names}
    vocals = list(net.targets).index("vocals") if residual else None
    mixture_fifo: list[torch.Tensor] = []

    def remember(stream: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        for x in stream:
            if residual:
                mixture_fifo.append(x)
            yield x

    def take_mixture(n: int) -> torch.Tensor:
        parts, have = [], 0
        while have < n:
            head = mixture_fifo[0]
            need = n - have
            parts.append(head[:, :need])
            have += min(need, head.shape[-1])
            if head.shape[-1] <= need:
                mixture_fifo.pop(0)
            else:
                mixture_fifo[0] = head[:, need:]
        return torch.cat(parts, dim=-1)

    writers = {
        name: sf.SoundFile(
            str(p),
            "w",
            samplerate=net.sample_rate,
            channels=channels,
            subtype=subtype,
            format="WAV",
        )
        for name, p in files.items()
    }
    try:
        for est in iter_separate(
            net, remember(blocks), chunk_seconds, overlap, window, batch_size, device, progress
        ):
            for name in names:
                writers[name].write(est[index[name]].T.numpy())
            if residual:
                writers["accompaniment"].write(
                    (take_mixture(est.shape[-1]) - est[vocals]).T.numpy()
                )
    finally:
        for writer in writers.values():
            writer.close()
