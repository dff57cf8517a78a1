"""audiolab.pitch.PitchStream: for any chunking and rate, the frames of predict() on the
whole recording, each once and as soon as it is final; the streaming resampler against
torchaudio; bad input."""

from __future__ import annotations

import pytest
import soundfile as sf
import torch
import torchaudio
from helpers import require_shared

from audiolab.pitch import PitchStream, predict
from audiolab.pitch.inference import PitchInputError
from audiolab.pitch.stream import StreamingResampler

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: threads only add overhead


def voice(rate: int, seconds: float = 1.2, channels: int | None = None) -> torch.Tensor:
    """A harmonic tone gliding from 180 to 300 Hz, with a little noise and a silent gap in
    the middle (exact zeros, so some frames are constant): voiced, noisy and silent frames."""
    g = torch.Generator().manual_seed(rate)
    n = int(seconds * rate)
    t = torch.arange(n, dtype=torch.float64) / rate
    phase = 2 * torch.pi * (180 * t + 50 * t**2)
    x = 0.4 * sum(torch.sin(k * phase) / k for k in (1, 2, 3)) + 0.01 * torch.randn(
        n, generator=g, dtype=torch.float64
    )
    gap = slice(int(0.45 * n), int(0.45 * n) + int(0.25 * rate))
    x[gap] = 0.0
    if channels is not None:  # channels of different gains and noise, so the mix matters
        x = torch.stack(
            [
                x * (1 - 0.3 * c) + 0.005 * torch.randn(n, generator=g, dtype=torch.float64)
                for c in range(channels)
            ]
        )
        x[..., gap] = 0.0
    return x.float()


def chunks(audio: torch.Tensor, kind: str, rate: int):
    """``audio`` cut along its last axis: one sample at a time, 20 ms, random sizes from
    one sample to a quarter second, or all at once."""
    n = audio.shape[-1]
    if kind == "whole":
        bounds = [0, n]
    elif kind == "1":
        bounds = list(range(n + 1))
    elif kind == "20ms":
        bounds = [*range(0, n, rate // 50), n]
    else:
        g = torch.Generator().manual_seed(n)
        sizes = torch.randint(1, rate // 4, (n,), generator=g).cumsum(0)
        bounds = [0, *sizes[sizes < n].tolist(), n]
    return [audio[..., a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def stream_all(stream: PitchStream, pieces) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every output of pushing ``pieces`` and flushing, concatenated."""
    outs = [stream.push(piece) for piece in pieces] + [stream.flush()]
    return tuple(torch.cat([out[i] for out in outs]) for i in range(3))


def assert_like_predict(streamed, audio, rate, **kwargs):
    f0, period, times = streamed
    want_f0, want_period = predict(audio, rate, **kwargs)
    assert f0.shape == period.shape == times.shape == want_f0.shape
    torch.testing.assert_close(f0, want_f0, rtol=1e-4, atol=0.0)
    torch.testing.assert_close(period, want_period, rtol=0.0, atol=1e-5)
    hop_seconds = kwargs.get("hop_length", 160) / 16000
    torch.testing.assert_close(times, torch.arange(len(times), dtype=torch.float64) * hop_seconds)


@pytest.mark.parametrize(
    ("rate", "kind"),
    [
        (16000, "20ms"),
        (16000, "random"),
        (16000, "whole"),
        (8000, "20ms"),
        (8000, "random"),
        (44100, "20ms"),
        (44100, "random"),
        (44100, "whole"),
        (22050, "random"),
    ],
)
def test_stream_gives_the_frames_of_predict(rate, kind):
    audio = voice(rate)
    streamed = stream_all(PitchStream(rate), chunks(audio, kind, rate))
    assert_like_predict(streamed, audio, rate, decoder="weighted_argmax")
    assert streamed[1].max() > 0.5  # the glide is voiced
    assert (streamed[1] == 0).any()  # and the gap is not


def test_the_shipped_fast_model_streams_like_predict():
    audio = voice(22050)
    streamed = stream_all(PitchStream(22050, model="fast"), chunks(audio, "20ms", 22050))
    assert_like_predict(streamed, audio, 22050, model="fast", decoder="weighted_argmax")


@pytest.mark.parametrize("rate", [16000, 44100])
def test_one_sample_chunks(rate):
    audio = voice(rate, seconds=0.15)
    assert_like_predict(
        stream_all(PitchStream(rate), chunks(audio, "1", rate)),
        audio,
        rate,
        decoder="weighted_argmax",
    )


def test_channels_argmax_range_and_silence_gate_match_predict():
    rate = 22050
    audio = voice(rate, seconds=0.8, channels=2)
    audio[..., : rate // 10] *= 1e-4  # quiet enough for the gate
    options = dict(decoder="argmax", fmin=100.0, fmax=1000.0, silence_db=-50.0, hop_length=128)
    streamed = stream_all(PitchStream(rate, **options), chunks(audio, "random", rate))
    assert_like_predict(streamed, audio, rate, mix_channels=True, **options)
    loud, _ = predict(audio, rate, mix_channels=True, **{**options, "silence_db": None})
    assert (streamed[1] == 0).sum() > (loud == 0).sum()  # the gate did close some frames


def test_short_recordings_and_empty_chunks():
    for n in (1, 100, 700):
        audio = voice(44100, seconds=1.0)[:n]
        stream = PitchStream(44100)
        assert stream.push(audio[:0])[0].numel() == 0
        assert_like_predict(
            stream_all(stream, [audio, audio[:0]]), audio, 44100, decoder="weighted_argmax"
        )
    f0, period, times = PitchStream(16000).flush()
    assert f0.numel() == period.numel() == times.numel() == 0


def test_frames_come_back_once_final_and_no_later_than_the_latency():
    stream = PitchStream(16000)
    assert stream.latency_seconds == pytest.approx(0.032)
    audio = voice(16000, seconds=0.1)
    assert stream.push(audio[:511])[0].numel() == 0  # frame 0 still lacks its last sample
    f0, _, times = stream.push(audio[511:512])
    assert times.tolist() == [0.0]
    for rate in (44100, 22050, 8000):
        stream = PitchStream(rate)
        late = []  # seconds of audio past each frame's centre when it came back
        for n, piece in enumerate(chunks(voice(rate, seconds=0.2), "1", rate), start=1):
            late += [n / rate - t for t in stream.push(piece)[2].tolist()]
        assert len(late) > 10
        assert max(late) == pytest.approx(stream.latency_seconds, abs=1e-9)
        assert stream.latency_seconds < 0.032 + 0.025


def test_flush_resets_the_stream():
    audio = voice(8000, seconds=0.5)
    stream = PitchStream(8000)
    first = stream_all(stream, chunks(audio, "20ms", 8000))
    again = stream_all(stream, chunks(audio, "random", 8000))
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b)
    stream.push(voice(8000, channels=2)[:, :100])  # the channel count is free again after a flush


def test_history_stays_bounded():
    stream = PitchStream(44100)
    for piece in chunks(voice(44100, seconds=1.0), "20ms", 44100):
        stream.push(piece)
        assert stream._audio.numel() < 1024 + 2 * 160
        assert stream._resampler._history.numel() < 2 * stream._resampler.span


@pytest.mark.parametrize(
    ("orig", "new"), [(44100, 16000), (8000, 16000), (48000, 16000), (16000, 22050)]
)
def test_streaming_resampler_is_torchaudio(orig, new):
    x = voice(orig, seconds=0.3)
    resampler = StreamingResampler(orig, new)
    out = torch.cat(
        [resampler.push(piece) for piece in chunks(x, "random", orig)] + [resampler.flush()]
    )
    want = torchaudio.functional.resample(x, orig, new)
    assert out.shape == want.shape
    torch.testing.assert_close(out, want, rtol=0.0, atol=1e-6)


def test_silence_has_no_periodicity():
    _, period, _ = stream_all(PitchStream(44100), chunks(torch.zeros(44100 // 2), "20ms", 44100))
    assert period.numel() == 51 and (period == 0).all()


def test_bad_streams_are_refused_with_the_fix():
    stream = PitchStream(44100)
    stream.push(torch.zeros(2, 100))
    with pytest.raises(
        PitchInputError,
        match="started at 44100 Hz, got a chunk at 48000 Hz: start a new PitchStream",
    ):
        stream.push(torch.zeros(2, 100), sample_rate=48000)
    with pytest.raises(
        PitchInputError, match=r"takes 2-channel chunks, got a chunk of shape \(100,\)"
    ):
        stream.push(torch.zeros(100))
    bad = torch.zeros(2, 100)
    bad[1, 30] = torch.nan
    with pytest.raises(
        PitchInputError, match="NaN or infinite samples .the first at sample 130 of the stream"
    ):
        stream.push(bad)
    with pytest.raises(PitchInputError, match="floating-point"):
        stream.push(torch.zeros(2, 100, dtype=torch.int16))
    with pytest.raises(ValueError, match="'weighted_argmax' or 'argmax'"):
        PitchStream(16000, decoder="viterbi")
    with pytest.raises(PitchInputError, match="positive integer"):
        PitchStream(44100.0)
    with pytest.raises(ValueError, match="fmin < fmax"):
        PitchStream(16000, fmin=500.0, fmax=100.0)


def test_fsdd_recording_at_its_own_rate():
    recordings = require_shared("fsdd", "recordings")
    audio, rate = sf.read(recordings / "0_george_0.wav", dtype="float32")
    assert rate == 8000
    audio = torch.from_numpy(audio)
    streamed = stream_all(PitchStream(rate), chunks(audio, "20ms", rate))
    assert_like_predict(streamed, audio, rate, decoder="weighted_argmax")
    assert streamed[1].max() > 0.5
