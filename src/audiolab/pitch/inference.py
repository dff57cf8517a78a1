"""Pitch tracking and pitch embeddings for audio of any rate, shape and length.

Frames are CREPE's: 1024 samples at 16 kHz, centred every ``hop_length`` samples (the
audio is zero-padded by half a frame at both ends), so a clip of ``n`` samples at 16 kHz
gives ``1 + n // hop_length`` frames, frame ``i`` centred on ``i * hop_length / 16000``
seconds. Frames are cut from the audio in batches of ``batch_size`` as the network needs
them, so memory for frames does not grow with the length of the input.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torchaudio
from torch import nn

from audiolab.audio.io import read_audio
from audiolab.audio.pitch_grid import FRAME_LENGTH, HOP_LENGTH, SAMPLE_RATE, cents_to_hz
from audiolab.pitch.decode import check_decoder, decode_with_bins, limit_range
from audiolab.pitch.postprocess import a_weighted_loudness, silence_gate
from audiolab.pitch.postprocess import periodicity as periodicity_at
from audiolab.pitch.pretrained import (
    MODEL_NAMES,
    PRETRAINED,
    SHIPPED,
    pretrained_crepe,
    shipped_model,
)
from audiolab.utils.atomic import atomic_write
from audiolab.utils.errors import AudiolabError
from audiolab.utils.threads import one_cpu_thread_when

FMIN, FMAX = 32.7, 1975.5  # C1 and B7, CREPE's range
# A call of a network that reports its cost (`macs_per_frame()`, as HarmonicPitchNet does)
# under this many multiply-adds (128 frames, 1.28 s at the 10-ms hop, of the `fast` model)
# runs the network on one CPU thread: a second thread then costs about half again the CPU
# time and saves little or no wall time (measured with `fast`, scripts/bench_pitch.py).
# CREPE reports no cost and keeps the process's threads.
PARALLEL_MACS = 64_000_000


class PitchInputError(AudiolabError):
    """Audio that cannot be analysed as given (shape, values, rate)."""


def load_model(model: str | Path | nn.Module = "tiny", device: str | torch.device = "cpu") -> nn.Module:
    """A pitch network in eval mode on ``device``: ``fast`` (audiolab's own, shipped with the
    package), ``tiny`` / ``full`` (pretrained CREPE), the path of an audiolab pitch checkpoint, or a network (``net(frames)`` gives
    activations, ``net.embed(frames)`` embeddings). Names and paths are loaded once per
    process and device."""
    if isinstance(model, nn.Module):
        return model.to(device).eval()
    return _load_cached(str(model), str(torch.device(device)))


@functools.lru_cache(maxsize=4)
def _load_cached(model: str, device: str) -> nn.Module:
    if model in SHIPPED:
        return shipped_model(model).to(device)
    if model in PRETRAINED:
        return pretrained_crepe(model).to(device)
    from audiolab.utils.checkpoint import load_module

    path = Path(model).expanduser()
    if not path.suffix and not path.exists():
        raise AudiolabError(
            f"unknown pitch model {model!r}: pass one of {', '.join(MODEL_NAMES)} or the path of a "
            "checkpoint written by audiolab-train (e.g. outputs/train/<run>/checkpoints/last.ckpt)"
        )
    module, _ = load_module(path, device)
    net = getattr(module, "net", None)
    rate = module.hparams.get("sample_rate") if hasattr(module, "hparams") else None
    if net is None or not hasattr(net, "embed") or rate != SAMPLE_RATE:
        raise AudiolabError(f"{path} is not a pitch checkpoint of a CREPE-style network at {SAMPLE_RATE} Hz")
    return net.eval()


def prepare_audio(
    audio: torch.Tensor | np.ndarray, sample_rate: int, mix_channels: bool = False
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Checked float32 audio at 16 kHz, shape ``(batch, samples)``, and the leading shape
    of the output (``()`` for a single clip, ``(batch,)`` for a batch).

    ``(samples,)``: one clip. ``(batch, samples)``: a batch of clips, unless
    ``mix_channels``, where it is ``(channels, samples)`` of one clip and the channels
    are averaged. ``(batch, channels, samples)``: channels are averaged."""
    x = torch.as_tensor(audio)
    if not x.is_floating_point():
        raise PitchInputError(f"audio must hold floating-point samples (in [-1, 1]), got {x.dtype}: convert it with audio / 32768 or similar")
    if not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise PitchInputError(f"sample_rate must be a positive integer in Hz, got {sample_rate!r}")
    if x.dim() == 2 and mix_channels:
        x = x.mean(dim=0)
    elif x.dim() == 3:
        x = x.mean(dim=1)
    elif x.dim() not in (1, 2):
        raise PitchInputError(
            f"audio must be (samples,), (batch, samples) or (batch, channels, samples), got shape {tuple(x.shape)}"
        )
    if x.shape[-1] == 0:
        raise PitchInputError("audio holds no samples: pass at least one sample per clip")
    bad = ~torch.isfinite(x)
    if bad.any():
        where = int(bad.reshape(-1, x.shape[-1]).any(dim=0).nonzero()[0])
        raise PitchInputError(
            f"audio contains NaN or infinite samples (the first at sample {where}, "
            f"{where / sample_rate:.3f} s): replace them (e.g. torch.nan_to_num) before pitch tracking"
        )
    lead = tuple(x.shape[:-1])
    x = x.reshape(-1, x.shape[-1]).float()
    if sample_rate != SAMPLE_RATE:
        x = torchaudio.functional.resample(x, int(sample_rate), SAMPLE_RATE)
    return x, lead


def frame_audio(audio: torch.Tensor, hop_length: int = HOP_LENGTH) -> torch.Tensor:
    """CREPE's centred frames of 16 kHz audio ``(..., samples)`` -> ``(..., 1 + samples //
    hop_length, 1024)``: zero-padded by half a frame at both ends, frame ``i`` centred on
    ``i * hop_length / 16000`` s. A view of the padded audio: nothing is copied yet."""
    if hop_length < 1:
        raise PitchInputError(f"hop_length must be a positive number of samples at 16 kHz, got {hop_length}")
    half = FRAME_LENGTH // 2
    return torch.nn.functional.pad(audio, (half, half)).unfold(-1, FRAME_LENGTH, hop_length)


def _frame_batches(frames: torch.Tensor, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Frames ``(batch, n, 1024)`` (:func:`frame_audio`) on ``device``, ``k`` frames of
    every clip at a time; the frames of all clips in one step count towards
    ``batch_size``."""
    step = max(1, batch_size // frames.shape[0])
    for start in range(0, frames.shape[1], step):
        yield frames[:, start : start + step].to(device)


def threads_for(net: nn.Module, n_frames: int, device: torch.device) -> contextlib.AbstractContextManager:
    """One CPU thread for ``n_frames`` of a network that reports its cost per frame
    (``macs_per_frame()``) when they cost less than :data:`PARALLEL_MACS`; the process's
    threads otherwise, and on accelerators."""
    cost = getattr(net, "macs_per_frame", None)
    return one_cpu_thread_when(cost is not None and n_frames * cost() < PARALLEL_MACS, device)


def _run(net: nn.Module, fn, audio: torch.Tensor, hop_length: int, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Network outputs for every frame ``(batch, frames, ...)`` and which frames are
    constant (digital silence or DC, where the network's output means nothing)."""
    outputs, constant = [], []
    all_frames = frame_audio(audio, hop_length)  # checks hop_length; a view of the padded audio
    with torch.inference_mode(), threads_for(net, all_frames.shape[0] * all_frames.shape[1], device):
        for frames in _frame_batches(all_frames, batch_size, device):
            outputs.append(fn(frames))
            constant.append(frames.amax(dim=-1) == frames.amin(dim=-1))
    return torch.cat(outputs, dim=1), torch.cat(constant, dim=1)


def decode_activations(
    activations: torch.Tensor, constant: torch.Tensor, decoder: str, fmin: float = FMIN, fmax: float = FMAX
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cents, periodicity)`` of network activations ``(..., frames, bins)``: bins outside
    ``[fmin, fmax]`` excluded, the ``decoder``'s path, the activation at each decoded bin as
    periodicity, and 0 on ``constant`` frames (silence, DC), where the network's output
    means nothing. What :func:`predict`, :class:`~audiolab.pitch.stream.PitchStream` and the
    export calibration all report."""
    act = limit_range(activations.float(), fmin, fmax)
    cents, bins = decode_with_bins(act, decoder)
    return cents, periodicity_at(act, bins).masked_fill(constant, 0.0)


def predict(
    audio: torch.Tensor | np.ndarray,
    sample_rate: int,
    hop_length: int = HOP_LENGTH,
    fmin: float = FMIN,
    fmax: float = FMAX,
    model: str | Path | nn.Module = "tiny",
    decoder: str = "viterbi",
    batch_size: int = 512,
    device: str | torch.device | None = None,
    mix_channels: bool = False,
    silence_db: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pitch (Hz) and periodicity of every frame.

    Args:
        audio: ``(samples,)``, ``(batch, samples)`` or ``(batch, channels, samples)``,
            floating point, any length of at least one sample (see :func:`prepare_audio`).
        sample_rate: of ``audio``, any rate; it is resampled to 16 kHz (torchaudio).
        hop_length: frame hop in samples at 16 kHz, whatever the input rate (160 = 10 ms).
        fmin, fmax: the pitch range in Hz; bins outside it are never chosen.
        model: ``fast`` (audiolab's own), ``tiny``, ``full`` (CREPE), an audiolab pitch
            checkpoint path, or a network.
        decoder: ``viterbi`` (smooth path), ``weighted_argmax`` or ``argmax``.
        batch_size: frames per forward pass (bounds memory).
        device: where the network runs (default: the audio's device).
        mix_channels: a 2-D ``audio`` is ``(channels, samples)`` of one clip, averaged.
        silence_db: when set, periodicity is 0 on frames quieter than this A-weighted
            loudness (:func:`~audiolab.pitch.postprocess.a_weighted_loudness`; -60 is a
            common choice).

    Returns:
        ``(f0, periodicity)``, float32, shape ``(frames,)`` for one clip or ``(batch,
        frames)``, on the audio's device. Periodicity is the network's activation at the
        decoded bin, and exactly 0 on frames whose samples are all equal (digital silence,
        DC). Clips shorter than a frame are zero-padded: every clip gives ``1 + n // hop``
        frames, ``n`` its length at 16 kHz. The f0 of an unvoiced frame is whatever the
        decoder found; threshold the periodicity to decide voicing.
    """
    check_decoder(decoder)
    x, lead = prepare_audio(audio, sample_rate, mix_channels)
    out_device = x.device
    device = torch.device(device) if device is not None else x.device
    net = load_model(model, device)
    act, constant = _run(net, net, x, hop_length, batch_size, device)
    cents, period = decode_activations(act, constant, decoder, fmin, fmax)
    if silence_db is not None:
        loudness = a_weighted_loudness(x.to(device), SAMPLE_RATE, hop_length, FRAME_LENGTH)
        period = silence_gate(period, loudness, silence_db)
    f0 = cents_to_hz(cents)
    return f0.reshape(*lead, -1).to(out_device), period.reshape(*lead, -1).to(out_device)


def embed(
    audio: torch.Tensor | np.ndarray,
    sample_rate: int,
    hop_length: int = HOP_LENGTH,
    model: str | Path | nn.Module = "tiny",
    batch_size: int = 512,
    device: str | torch.device | None = None,
    mix_channels: bool = False,
) -> torch.Tensor:
    """CREPE's pitch embedding (the output of the fifth max-pool, flattened time-major,
    as DDSP uses it) of every frame: shape ``(frames, features)`` or ``(batch, frames,
    features)``. Input handling and framing as in :func:`predict`."""
    x, lead = prepare_audio(audio, sample_rate, mix_channels)
    device = torch.device(device) if device is not None else x.device
    net = load_model(model, device)
    emb, _ = _run(net, net.embed, x, hop_length, batch_size, device)
    return emb.reshape(*lead, *emb.shape[1:]).to(x.device)


# -- files --------------------------------------------------------------------------------


def _predict_file(path: str | Path, kwargs: dict) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]:
    """``(audio, rate, f0, periodicity)`` of one file; any error names the file."""
    audio, rate = read_audio(path)
    try:
        f0, period = predict(audio, rate, **kwargs)
    except PitchInputError as exc:
        raise PitchInputError(f"{path}: {exc}") from None
    return audio, rate, f0, period


def _with_model(kwargs: dict) -> dict:
    """``kwargs`` with the model loaded once, for many files."""
    return {**kwargs, "model": load_model(kwargs.get("model", "tiny"), kwargs.get("device") or "cpu")}


def predict_files(paths: Sequence[str | Path], **kwargs) -> Iterator[tuple[Path, torch.Tensor, torch.Tensor]]:
    """``(path, f0, periodicity)`` for each file, one model load for all; ``kwargs`` as
    :func:`predict` (``model``, ``decoder``, ``hop_length``, ...)."""
    kwargs = _with_model(kwargs)
    for path in paths:
        _, _, f0, period = _predict_file(path, kwargs)
        yield Path(path), f0, period


def write_pitch_files(
    path: str | Path,
    csv: str | Path,
    png: str | Path | None = None,
    voicing_threshold: float = 0.5,
    **kwargs,
) -> None:
    """Track the pitch of one file and write the CSV (``time,f0,periodicity``; time in
    seconds of the frame centre) to ``csv`` and, when ``png`` is given, a PNG of the
    contour over the spectrogram (:func:`~audiolab.utils.plots.pitch_contour_figure`,
    contour drawn where the periodicity reaches ``voicing_threshold``). Exactly these paths
    are written (the caller decides about ``.partial`` files); ``kwargs`` as :func:`predict`."""
    hop_seconds = kwargs.get("hop_length", HOP_LENGTH) / SAMPLE_RATE
    audio, rate, f0, period = _predict_file(path, kwargs)
    table = np.stack([np.arange(len(f0)) * hop_seconds, f0.cpu().numpy(), period.cpu().numpy()], axis=1)
    with open(csv, "w") as handle:
        np.savetxt(handle, table, delimiter=",", header="time,f0,periodicity", comments="", fmt=["%.4f", "%.3f", "%.4f"])
    if png is None:
        return
    import matplotlib.pyplot as plt

    from audiolab.utils.plots import pitch_contour_figure

    fig = pitch_contour_figure(audio, rate, f0, period, hop_seconds, voicing_threshold, title=Path(path).name)
    try:
        with open(png, "wb") as handle:
            fig.savefig(handle, format="png", dpi=100)
    finally:
        plt.close(fig)


def predict_files_to_files(
    paths: Sequence[str | Path],
    outputs: Sequence[str | Path],
    plot: bool = False,
    voicing_threshold: float = 0.5,
    overwrite: bool = True,
    **kwargs,
) -> list[Path]:
    """Pitch of many files written as CSV (``time,f0,periodicity``; time in seconds of the
    frame centre), one model load for all; ``kwargs`` as :func:`predict`.

    With ``plot``, a PNG of the contour over the spectrogram goes beside each CSV (same
    name, ``.png``; see :func:`write_pitch_files`). Without ``overwrite`` a file whose
    outputs all exist is skipped. A file's outputs are written as ``.partial`` files and
    renamed into place together, so an interrupted or failed file leaves no output.
    Returns the outputs written."""
    if len(paths) != len(outputs):
        raise PitchInputError(f"got {len(paths)} input files but {len(outputs)} output paths: pass one output per input")
    kwargs = _with_model(kwargs)
    written = []
    for path, out in zip(paths, outputs, strict=True):
        out = Path(out)
        targets = [out, out.with_suffix(".png")] if plot else [out]
        if not overwrite and all(p.exists() for p in targets):
            continue
        with atomic_write(*targets) as temps:
            write_pitch_files(path, *temps, voicing_threshold=voicing_threshold, **kwargs)
        written += targets
    return written


def embed_files_to_files(
    paths: Sequence[str | Path], outputs: Sequence[str | Path], **kwargs
) -> list[Path]:
    """Embeddings of many files saved as ``.npy`` ``(frames, features)``, one model load
    for all; ``kwargs`` as :func:`embed`."""
    if len(paths) != len(outputs):
        raise PitchInputError(f"got {len(paths)} input files but {len(outputs)} output paths: pass one output per input")
    kwargs = _with_model(kwargs)
    written = []
    for path, out in zip(paths, outputs, strict=True):
        audio, rate = read_audio(path)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, embed(audio, rate, **kwargs).cpu().numpy())
        written.append(out)
    return written
