"""Separating audio files: streamed decoding (:mod:`audiolab.audio.io`), streamed writing,
one model load for many files. The audio arrives in blocks, goes through
:func:`iter_separate` and is written block by block, so memory stays flat however long the
file is.

Writing is safe: each output goes to a ``.partial`` file renamed into place only when
the whole file has been separated, so an interrupted or failed file never leaves a
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
    chunk_seconds: float = 6.0,
    overlap: float = 0.25,
    window: str = "hann",
    batch_size: int = 4,
    device: str | torch.device | None = None,
    subtype: str = "FLOAT",
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    commit: bool = True,
) -> list[Path]:
    """Separate one file into ``out_dir/<track>/<target>.wav`` (at the network's sample
    rate), plus ``accompaniment.wav`` = mixture - vocals when the network separates
    vocals but not accompaniment. Returns the written paths; outputs that already exist
    are kept (the file is skipped) unless ``overwrite``. ``commit=False`` leaves the
    finished outputs as ``<target>.wav.partial`` for the caller to rename (all of them at
    once: :mod:`audiolab.utils.file_jobs`)."""
    net = network_of(model)
    path = Path(path)
    outputs = output_names(net, targets, accompaniment)
    residual = outputs[-1] == "accompaniment" and "accompaniment" not in net.targets
    names = outputs[:-1] if residual else outputs
    folder = Path(out_dir) / track_name(path)
    final = {name: folder / f"{name}.wav" for name in outputs}
    if not overwrite and all(p.exists() for p in final.values()):
        log.info(f"{path.name}: outputs exist in {folder}, skipping (overwrite=true redoes them)")
        return []
    channels = getattr(net, "audio_channels", 2)
    info, blocks = read_blocks(path, net.sample_rate, channels)
    folder.mkdir(parents=True, exist_ok=True)
    partial = {name: p.with_name(p.name + ".partial") for name, p in final.items()}
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
        for name, p in partial.items()
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
    except BaseException:
        for name, writer in writers.items():
            writer.close()
            partial[name].unlink(missing_ok=True)
        raise
    for name, writer in writers.items():
        writer.close()
        if commit:
            partial[name].replace(final[name])
    return list(final.values())
