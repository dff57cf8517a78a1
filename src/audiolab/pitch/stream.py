"""Pitch of audio that arrives in chunks (a microphone, a socket), frame by frame as soon
as each frame is final, with the same frames and values as :func:`~audiolab.pitch.predict`
on the whole recording.

Two stages keep a few frames of history each and nothing more:

* :class:`StreamingResampler` turns the input rate into 16 kHz. It applies torchaudio's
  own polyphase sinc kernel block by block, so its output is that of
  ``torchaudio.functional.resample`` on the whole signal, zero padding at both ends
  included.
* :class:`PitchStream` cuts CREPE's centred frames from the 16-kHz samples, runs the
  network on every frame whose 1024 samples have all arrived and decodes it with a
  per-frame decoder.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchaudio.functional.functional import _get_sinc_resample_kernel

from audiolab.audio.pitch_grid import FRAME_LENGTH, HOP_LENGTH, N_BINS, SAMPLE_RATE, cents_to_hz
from audiolab.pitch.decode import check_decoder, limit_range
from audiolab.pitch.inference import (
    FMAX,
    FMIN,
    PitchInputError,
    decode_activations,
    load_model,
    threads_for,
)
from audiolab.pitch.postprocess import a_weighted_loudness, silence_gate

PER_FRAME_DECODERS = ("weighted_argmax", "argmax")


class StreamingResampler:
    """``torchaudio.functional.resample(x, orig_freq, new_freq)`` (its defaults: Hann
    windowed sinc, 6 zero crossings, rolloff 0.99) computed chunk by chunk.

    torchaudio pads the signal with ``width`` zeros on the left and ``width + orig`` on
    the right (rates reduced by their gcd) and convolves it with ``new`` kernels of
    ``2 * width + orig`` taps at a stride of ``orig``: each step of the convolution, a
    *block*, gives ``new`` output samples from one window of input. Here a block is
    computed as soon as its whole window has arrived, from the same kernel, so the output
    is the offline one; only the samples that the next block's window needs are kept.
    """

    def __init__(self, orig_freq: int, new_freq: int, device: str | torch.device = "cpu") -> None:
        gcd = math.gcd(orig_freq, new_freq)
        self.orig, self.new = orig_freq // gcd, new_freq // gcd
        # float32, as torchaudio builds it for float32 audio (the dtype changes the taps)
        kernel, self.width = _get_sinc_resample_kernel(
            orig_freq, new_freq, gcd, device=torch.device(device), dtype=torch.float32
        )
        self.kernel = kernel
        self.device = torch.device(device)
        self.reset()

    @property
    def span(self) -> int:
        """Input samples in one block's window."""
        return 2 * self.width + self.orig

    def reset(self) -> None:
        """Forget all input: the next sample is the first of a new signal."""
        self._history = torch.zeros(self.width, device=self.device)  # the left zero padding
        self._received = 0
        self._emitted = 0

    def input_needed(self, n_out: int) -> int:
        """Input samples that must have arrived before the first ``n_out`` output samples
        are all out: up to the end of the window of the block that holds the last one."""
        if n_out <= 0:
            return 0
        block = (n_out - 1) // self.new
        return block * self.orig + self.width + self.orig

    def push(self, x: torch.Tensor) -> torch.Tensor:
        """Output samples made final by the input samples ``x`` ``(samples,)``."""
        self._history = torch.cat([self._history, x])
        self._received += x.numel()
        return self._blocks()

    def flush(self) -> torch.Tensor:
        """The rest of the output, as if the signal ended here (zero padding as offline,
        and exactly as many output samples in all as torchaudio gives); then resets."""
        self._history = torch.cat([self._history, self._history.new_zeros(self.width + self.orig)])
        out = self._blocks()
        # torchaudio's own expression: a float32 ceil, so that long signals round alike
        target = int(torch.ceil(torch.as_tensor(self.new * self._received / self.orig)))
        out = out[: target - (self._emitted - out.numel())]
        self.reset()
        return out

    def _blocks(self) -> torch.Tensor:
        """Every block whose window lies in the history, in order; their input is dropped."""
        n_blocks = (self._history.numel() - self.span) // self.orig + 1
        if n_blocks <= 0:
            return self._history.new_zeros(0)
        window = self._history[: (n_blocks - 1) * self.orig + self.span]
        out = F.conv1d(window[None, None], self.kernel, stride=self.orig)  # (1, new, blocks)
        self._history = self._history[n_blocks * self.orig :]
        out = out[0].T.reshape(-1)
        self._emitted += out.numel()
        return out


class PitchStream:
    """Pitch tracking of a stream: push chunks of audio as they arrive, get back the
    frames that became final. The frames, and their pitch and periodicity, are those of
    :func:`~audiolab.pitch.predict` on the concatenated audio (with ``mix_channels`` for
    multichannel chunks), for any chunking.

    Args:
        sample_rate: of every chunk; resampled to 16 kHz exactly as ``predict`` does.
        model: ``tiny``, ``full``, an audiolab pitch checkpoint path, or a network;
            loaded once, here.
        decoder: a per-frame decoder, ``weighted_argmax`` or ``argmax``. ``viterbi``
            chooses each frame's bin from the whole sequence, so no frame would ever be
            final before the end; it is refused.
        hop_length, fmin, fmax, silence_db: as in ``predict``.
        device: where the network runs and the stream's buffers and outputs live
            (default CPU).
        channels: the channel count of the chunks; by default fixed by the first chunk.
        batch_size: most frames per forward pass when a large chunk makes many final.

    ``push(chunk)`` returns ``(f0, periodicity, times)`` of the frames that became final,
    each frame exactly once and in order; ``times`` are frame centres in seconds from the
    start of the stream (float64). ``flush()`` returns the remaining frames as if the
    audio ended there, and resets the stream: the next chunk starts a new recording at
    time 0 (the rate stays, the channel count is free again unless ``channels`` was given).
    """

    def __init__(
        self,
        sample_rate: int,
        model: str | Path | nn.Module = "tiny",
        decoder: str = "weighted_argmax",
        hop_length: int = HOP_LENGTH,
        fmin: float = FMIN,
        fmax: float = FMAX,
        device: str | torch.device | None = None,
        silence_db: float | None = None,
        channels: int | None = None,
        batch_size: int = 512,
    ) -> None:
        if not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
            raise PitchInputError(
                f"sample_rate must be a positive integer in Hz, got {sample_rate!r}"
            )
        if not isinstance(hop_length, int | np.integer) or hop_length < 1:
            raise PitchInputError(
                f"hop_length must be a positive number of samples at 16 kHz, got {hop_length!r}"
            )
        if channels is not None and channels < 1:
            raise PitchInputError(
                f"channels must be a positive count or None (fixed by the first chunk), got {channels!r}"
            )
        check_decoder(decoder)
        if decoder not in PER_FRAME_DECODERS:
            raise ValueError(
                f"decoder {decoder!r} decodes the whole sequence at once, so no frame is final before the audio "
                f"ends: stream with a per-frame decoder ({' or '.join(map(repr, PER_FRAME_DECODERS))}), or run "
                f"audiolab.pitch.predict(..., decoder={decoder!r}) on the whole recording"
            )
        # checks the range now rather than at the first frame
        limit_range(torch.zeros(N_BINS), fmin, fmax)
        self.sample_rate = int(sample_rate)
        self.decoder, self.hop_length, self.fmin, self.fmax = decoder, int(hop_length), fmin, fmax
        self.silence_db, self.batch_size = silence_db, batch_size
        self.device = torch.device(device if device is not None else "cpu")
        self.net = load_model(model, self.device)
        self._fixed_channels = channels
        self._resampler = (
            StreamingResampler(self.sample_rate, SAMPLE_RATE, self.device)
            if self.sample_rate != SAMPLE_RATE
            else None
        )
        # The silence gate reuses a_weighted_loudness, whose frames are centred on its own
        # input: a frame is whole only once it is at least half a frame from the start,
        # so `lead` more samples are kept before the next frame to start that far back.
        self._lead = -(-FRAME_LENGTH // 2 // self.hop_length) * self.hop_length - FRAME_LENGTH // 2
        self._reset()

    @property
    def latency_seconds(self) -> float:
        """Audio needed after a frame's centre before that frame is final: the second half
        of its 1024-sample window (32 ms) and, at other rates than 16 kHz, the input that
        the resampler's block holding the window's last sample needs (the sinc's
        ``width`` taps and the rest of the block). The largest value over all frames
        (frames repeat their position relative to the resampler's blocks); every frame is
        returned by the ``push`` that brings the input up to its centre plus at most this."""
        half = FRAME_LENGTH // 2
        if self._resampler is None:
            return half / SAMPLE_RATE
        new = self._resampler.new
        period = new // math.gcd(self.hop_length, new)
        return max(
            self._resampler.input_needed(i * self.hop_length + half) / self.sample_rate
            - i * self.hop_length / SAMPLE_RATE
            for i in range(period)
        )

    def push(
        self, chunk: torch.Tensor | np.ndarray, sample_rate: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Take the next ``chunk`` of audio, ``(samples,)`` or ``(channels, samples)``
        (channels are averaged), floating point, at the stream's rate (``sample_rate``,
        when given, is checked against it). Returns ``(f0, periodicity, times)`` of the
        frames that became final, possibly none."""
        if sample_rate is not None and sample_rate != self.sample_rate:
            raise PitchInputError(
                f"this PitchStream started at {self.sample_rate} Hz, got a chunk at {sample_rate} Hz: "
                "start a new PitchStream for audio at another rate"
            )
        x = self._mono(chunk)
        self._received += x.numel()
        self._append(self._resampler.push(x) if self._resampler is not None else x)
        return self._final_frames()

    def flush(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The remaining frames, as if the audio ended here (zero-padded like ``predict``),
        then a reset: the next chunk starts a new recording at time 0. A stream that got no
        samples gives no frames (``predict`` refuses empty audio)."""
        if self._received == 0:
            return self._empty()
        if self._resampler is not None:
            self._append(self._resampler.flush())
        self._append(self._audio.new_zeros(FRAME_LENGTH // 2))  # the right padding of the frames
        out = self._final_frames()
        self._reset()
        return out

    # -- internals ------------------------------------------------------------------------

    def _reset(self) -> None:
        self._channels = self._fixed_channels
        self._received = 0  # input samples, for error messages
        self._next_frame = 0
        # 16-kHz audio in the frames' padded coordinates from `lead` samples before the
        # next frame's first sample; it starts with the left padding of the frames
        self._audio = torch.zeros(self._lead + FRAME_LENGTH // 2, device=self.device)
        if self._resampler is not None:
            self._resampler.reset()

    def _mono(self, chunk: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The chunk checked and mixed to mono float32 on the stream's device, as
        ``predict`` mixes and checks the whole recording."""
        x = torch.as_tensor(chunk)
        if not x.is_floating_point():
            raise PitchInputError(
                f"audio must hold floating-point samples (in [-1, 1]), got {x.dtype}: convert it with audio / 32768 or similar"
            )
        if x.dim() not in (1, 2):
            raise PitchInputError(
                f"a chunk must be (samples,) or (channels, samples), got shape {tuple(x.shape)}"
            )
        channels = 1 if x.dim() == 1 else x.shape[0]
        if self._channels is None:
            self._channels = channels
        elif channels != self._channels:
            raise PitchInputError(
                f"this PitchStream takes {self._channels}-channel chunks, got a chunk of shape {tuple(x.shape)} "
                f"({channels} channels): keep the channel layout, or flush and start a new PitchStream for the new one"
            )
        if x.dim() == 2:
            x = x.mean(dim=0)
        bad = ~torch.isfinite(x)
        if bad.any():
            where = self._received + int(bad.nonzero()[0])
            raise PitchInputError(
                f"audio contains NaN or infinite samples (the first at sample {where} of the stream, "
                f"{where / self.sample_rate:.3f} s): replace them (e.g. torch.nan_to_num) before pitch tracking"
            )
        return x.float().to(self.device)

    def _append(self, samples: torch.Tensor) -> None:
        self._audio = torch.cat([self._audio, samples])

    def _empty(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        empty = torch.zeros(0, device=self.device)
        return empty, empty.clone(), torch.zeros(0, dtype=torch.float64, device=self.device)

    def _final_frames(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Analyse every frame whose window lies in the buffer, then drop the samples that
        no later frame needs."""
        hop, lead = self.hop_length, self._lead
        n_frames = (self._audio.numel() - lead - FRAME_LENGTH) // hop + 1
        if n_frames <= 0:
            return self._empty()
        frames = self._audio[lead:].unfold(0, FRAME_LENGTH, hop)[:n_frames]
        act, constant = [], []
        with torch.inference_mode(), threads_for(self.net, n_frames, self.device):
            for batch in frames.split(self.batch_size):
                act.append(self.net(batch))
                constant.append(batch.amax(dim=-1) == batch.amin(dim=-1))
        cents, period = decode_activations(torch.cat(act), torch.cat(constant), self.decoder, self.fmin, self.fmax)
        if self.silence_db is not None:
            # a_weighted_loudness frame m of this span is frame `next_frame + m - first`
            first = (lead + FRAME_LENGTH // 2) // hop
            span = self._audio[: lead + (n_frames - 1) * hop + FRAME_LENGTH]
            loudness = a_weighted_loudness(span, SAMPLE_RATE, hop, FRAME_LENGTH)[
                first : first + n_frames
            ]
            period = silence_gate(period, loudness, self.silence_db)
        times = (
            (self._next_frame + torch.arange(n_frames, dtype=torch.float64, device=self.device))
            * hop
            / SAMPLE_RATE
        )
        self._next_frame += n_frames
        self._audio = self._audio[n_frames * hop :]
        return cents_to_hz(cents), period, times
