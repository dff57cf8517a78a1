"""Overlap-add separation of audio of any length: the one function behind validation,
evaluation and the ``separate.py`` command line, so the score you validate is the score
users get.

A separation network maps a waveform batch ``(B, C, T)`` to estimates ``(B, S, C, T)``
and has ``sample_rate`` and ``targets`` attributes. The mixture is cut into chunks of
``chunk_seconds`` that overlap by ``overlap`` (a fraction), chunks run through the
network ``batch_size`` at a time, and the outputs are cross-faded with a window and
normalised by the summed window weight (so any window and overlap reconstruct exactly
where the network is the identity). The signal is zero-padded by one chunk-minus-hop at
the start, so the first samples are not at a chunk's faded edge, and to a whole number of
chunks at the end.

Memory: :func:`iter_separate` consumes the mixture in blocks and yields finished output
blocks, holding only about ``batch_size`` chunks of audio at a time, so files of any
length are separated in flat memory (the command line streams file to file).
:func:`separate` is the in-memory convenience on top of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
import torchaudio
from torch import nn

from audiolab.utils.errors import AudiolabError

WINDOWS = ("hann", "triangular", "rectangular")


class SeparationInputError(AudiolabError):
    """A mixture that cannot be separated as given (shape, channels, values, rate)."""


def overlap_window(kind: str, length: int, device=None) -> torch.Tensor:
    """A cross-fade window that is positive everywhere: the summed weight we divide by
    never vanishes, even where only one chunk covers a sample."""
    if kind == "hann":
        # float64: in float32 the end values of a long window (1 - cos of a tiny angle)
        # round to exactly 0, and a track ending on a chunk end got 0 / 0 = NaN samples
        window = torch.hann_window(length + 2, periodic=False, dtype=torch.float64, device=device)
        return window[1:-1].float()
    if kind == "triangular":
        ramp = torch.arange(1, length + 1, device=device, dtype=torch.float32)
        return torch.minimum(ramp, ramp.flip(0)) / math.ceil(length / 2)
    if kind == "rectangular":
        return torch.ones(length, device=device)
    raise ValueError(f"unknown overlap-add window {kind!r}; choose one of {WINDOWS}")


def network_of(model: nn.Module) -> nn.Module:
    """The separation network of a network or of a :class:`SeparationModule`."""
    net = getattr(model, "net", model)
    for attr in ("targets", "sample_rate"):
        if not hasattr(net, attr):
            raise TypeError(
                f"{type(net).__name__} is not a separation network: it has no `{attr}` attribute"
            )
    return net


def prepare_mixture(mixture, channels: int) -> torch.Tensor:
    """Check a mixture and bring it to ``(channels, T)`` float32: mono is up-mixed by
    repetition; anything else that does not match the network is refused."""
    mixture = torch.as_tensor(mixture)
    if mixture.ndim == 1:
        mixture = mixture.unsqueeze(0)
    if mixture.ndim != 2:
        raise SeparationInputError(
            f"a mixture must be (samples,) or (channels, samples), got shape {tuple(mixture.shape)}"
        )
    if mixture.shape[-1] == 0:
        raise SeparationInputError("the mixture is empty (zero samples)")
    if mixture.shape[0] > 8 and mixture.shape[1] <= 8:
        raise SeparationInputError(
            f"the mixture has shape {tuple(mixture.shape)}: that looks like (samples, channels); pass (channels, samples)"
        )
    if not mixture.is_floating_point():
        raise SeparationInputError(
            f"the mixture must be floating point audio in [-1, 1], got {mixture.dtype}"
        )
    if not torch.isfinite(mixture).all():
        raise SeparationInputError(
            "the mixture contains NaN or infinite samples; clean the audio before separating it"
        )
    if mixture.shape[0] == 1 and channels > 1:
        mixture = mixture.expand(channels, -1)
    if mixture.shape[0] != channels:
        raise SeparationInputError(
            f"the network separates {channels}-channel audio but the mixture has {mixture.shape[0]} channels; "
            f"down-mix it first (e.g. `ffmpeg -i in.wav -ac {channels} out.wav`)"
        )
    return mixture.float()


@torch.no_grad()
def iter_separate(
    model: nn.Module,
    blocks: Iterable[torch.Tensor],
    chunk_seconds: float = 6.0,
    overlap: float = 0.25,
    window: str = "hann",
    batch_size: int = 4,
    device: str | torch.device | None = None,
    progress=None,
) -> Iterator[torch.Tensor]:
    """Separate a stream of mixture blocks ``(C, n)`` at the network's rate and channel
    count; yields finished estimate blocks ``(S, C, m)`` on the CPU, in order, whose
    lengths add up to the mixture's. ``progress`` is called with the number of samples
    each yielded block holds (for progress bars)."""
    net = network_of(model)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunk = round(chunk_seconds * net.sample_rate)
    if chunk < 1:
        raise ValueError(f"chunk_seconds={chunk_seconds} is shorter than one sample")
    hop = max(1, round(chunk * (1.0 - overlap)))
    lead = chunk - hop
    device = torch.device(device) if device is not None else next(net.parameters()).device
    weights = overlap_window(window, chunk, device)

    pending: torch.Tensor | None = None  # input from padded position `pending_at` on
    pending_at = 0
    acc: torch.Tensor | None = None  # weighted output sum from padded position `acc_at` on
    wsum = torch.zeros(0, device=device)
    acc_at = 0
    emitted = lead  # padded position where the next output block starts
    n_chunks = 0  # chunks processed so far; the next one starts at n_chunks * hop
    received = 0

    def emit(final: int) -> Iterator[torch.Tensor]:
        nonlocal emitted
        if final > emitted:
            a, b = emitted - acc_at, final - acc_at
            yield (acc[..., a:b] / wsum[a:b]).cpu()
            if progress is not None:
                progress(final - emitted)
            emitted = final

    def run(n: int) -> Iterator[torch.Tensor]:
        nonlocal pending, pending_at, acc, wsum, acc_at, n_chunks
        starts = [(n_chunks + i) * hop - pending_at for i in range(n)]
        batch = torch.stack([pending[:, s : s + chunk] for s in starts]).to(device)
        out = net(batch).float() * weights  # (n, S, C, chunk)
        span = (n - 1) * hop + chunk
        first = n_chunks * hop
        if acc is None:
            acc = out.new_zeros(out.shape[1], out.shape[2], 0)
        grow = first + span - (acc_at + acc.shape[-1])
        if grow > 0:
            acc = torch.cat([acc, acc.new_zeros(*acc.shape[:2], grow)], dim=-1)
            wsum = torch.cat([wsum, wsum.new_zeros(grow)])
        for i in range(n):
            s = first + i * hop - acc_at
            acc[..., s : s + chunk] += out[i]
            wsum[s : s + chunk] += weights
        n_chunks += n
        # Positions before the next chunk's start receive no more contributions.
        yield from emit(min(n_chunks * hop, lead + received))
        keep = n_chunks * hop - acc_at
        acc, wsum, acc_at = acc[..., keep:], wsum[keep:], acc_at + keep
        drop = n_chunks * hop - pending_at
        pending, pending_at = pending[:, drop:], pending_at + drop

    for block in blocks:
        block = torch.as_tensor(block, dtype=torch.float32)
        if pending is None:
            pending = block.new_zeros(block.shape[0], lead)
        pending = torch.cat([pending, block], dim=-1)
        received += block.shape[-1]
        while (
            available := (pending.shape[-1] - chunk) // hop + 1 if pending.shape[-1] >= chunk else 0
        ) >= batch_size:
            yield from run(min(available, batch_size))
    if pending is None or received == 0:
        raise SeparationInputError("the mixture is empty (zero samples)")
    # Zero-pad the tail to whole chunks covering every received sample.
    end = lead + received
    total_chunks = max(1, math.ceil((end - chunk) / hop) + 1) if end > chunk else 1
    needed = (total_chunks - 1) * hop + chunk - pending_at
    if needed > pending.shape[-1]:
        pending = torch.cat(
            [pending, pending.new_zeros(pending.shape[0], needed - pending.shape[-1])], dim=-1
        )
    while n_chunks < total_chunks:
        yield from run(min(batch_size, total_chunks - n_chunks))
    yield from emit(end)


def separate(
    model: nn.Module,
    mixture,
    sample_rate: int | None = None,
    chunk_seconds: float = 6.0,
    overlap: float = 0.25,
    window: str = "hann",
    batch_size: int = 4,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Separate one mixture ``(T,)`` / ``(C, T)`` (or a batch ``(B, C, T)``) into the
    network's targets: returns ``(S, C, T)`` (``(B, S, C, T)``) at the mixture's own
    sample rate and length, on the CPU. ``sample_rate`` defaults to the network's; other
    rates are resampled in and back out. Mono is up-mixed to the network's channels.

    Args:
        model: a separation network or a ``SeparationModule``.
        chunk_seconds: length of the chunks the network sees (its training length is a
            good choice).
        overlap: fraction of a chunk shared with the next one.
        window: cross-fade window, one of ``hann``, ``triangular``, ``rectangular``.
        batch_size: chunks per network call: bounds memory.
        device: where the network runs (default: where its parameters are).
        progress: show a progress bar.
    """
    net = network_of(model)
    mixture = torch.as_tensor(mixture)
    if mixture.ndim == 3:
        return torch.stack(
            [
                separate(
                    net,
                    m,
                    sample_rate,
                    chunk_seconds,
                    overlap,
                    window,
                    batch_size,
                    device,
                    progress,
                )
                for m in mixture
            ]
        )
    channels = getattr(net, "audio_channels", 2)
    mixture = prepare_mixture(mixture, channels)
    rate = net.sample_rate if sample_rate is None else int(sample_rate)
    length = mixture.shape[-1]
    if rate != net.sample_rate:
        mixture = torchaudio.functional.resample(mixture, rate, net.sample_rate)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=mixture.shape[-1], unit="sample", unit_scale=True, desc="separating")
    try:
        # One block: the whole mixture is in memory anyway, and one block lets every
        # batch be full.
        out = torch.cat(
            list(
                iter_separate(
                    net,
                    [mixture],
                    chunk_seconds,
                    overlap,
                    window,
                    batch_size,
                    device,
                    progress=None if bar is None else bar.update,
                )
            ),
            dim=-1,
        )
    finally:
        if bar is not None:
            bar.close()
    if rate != net.sample_rate:
        out = torchaudio.functional.resample(out, net.sample_rate, rate)
        out = torch.nn.functional.pad(out, (0, max(0, length - out.shape[-1])))[..., :length]
    return out
