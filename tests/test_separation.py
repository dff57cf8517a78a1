"""Overlap-add separation, file separation, separation losses and metrics, schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import require_shared
from torch import nn

from audiolab.audio.io import AudioFileError, find_audio_files, track_name
from audiolab.audio.stft import Stft
from audiolab.losses.separation import (
    MultiResolutionStftLoss,
    SeparationLoss,
    SpectrogramLoss,
    WaveformL1,
)
from audiolab.metrics.separation import MeanUsdr, usdr
from audiolab.optim import warmup_cosine
from audiolab.separation import SeparationInputError, iter_separate, overlap_window, separate
from audiolab.separation.files import separate_file


class Gains(nn.Module):
    """A 'separator' with known output: target i = gain_i x mixture."""

    def __init__(
        self, sample_rate: int = 8000, gains=(0.25, 0.75), targets=("vocals", "drums")
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.targets = list(targets)
        self.audio_channels = 2
        self.gains = nn.Parameter(torch.tensor(gains), requires_grad=False)
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return x.unsqueeze(1) * self.gains.view(1, -1, 1, 1)


class Causal(nn.Module):
    """Output depends on the position inside the chunk: shows where chunks are cut."""

    sample_rate = 100
    targets = ["a"]
    audio_channels = 1

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x, dim=-1).unsqueeze(1)


@pytest.mark.parametrize("length", [1, 7, 800, 801, 4000, 12345])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
@pytest.mark.parametrize("window", ["hann", "triangular", "rectangular"])
def test_overlap_add_reconstructs_a_linear_network(length, overlap, window):
    net = Gains()
    x = torch.randn(2, length)
    y = separate(net, x, chunk_seconds=0.1, overlap=overlap, window=window, batch_size=3)
    assert y.shape == (2, 2, length)
    torch.testing.assert_close(y[0], 0.25 * x, atol=1e-5, rtol=0)
    torch.testing.assert_close(y[1], 0.75 * x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("block", [1, 333, 800, 5000])
def test_streaming_equals_in_memory(block):
    net = Causal()
    x = torch.randn(1, 2345)
    whole = separate(net, x, chunk_seconds=1.0, overlap=0.5, batch_size=2)
    pieces = list(
        iter_separate(
            net, [x[:, i : i + block] for i in range(0, 2345, block)], 1.0, 0.5, "hann", 2
        )
    )
    torch.testing.assert_close(torch.cat(pieces, dim=-1), whole, atol=1e-5, rtol=0)


def test_chunks_are_cross_faded_not_concatenated():
    # A cumulative sum restarts at every chunk: with overlap the cross-fade blends
    # neighbouring chunks, so the output is continuous where hard cuts would jump.
    net = Causal()
    x = torch.ones(1, 1000)
    hard = separate(net, x, chunk_seconds=1.0, overlap=0.0, window="rectangular")[0, 0]
    soft = separate(net, x, chunk_seconds=1.0, overlap=0.5, window="hann")[0, 0]
    assert hard.diff().abs().max() > 50  # the restart of the cumsum at a chunk boundary
    assert soft.diff().abs().max() < hard.diff().abs().max() / 5


def test_batching_bounds_the_network_batch():
    net = Gains()
    separate(net, torch.randn(2, 8000 * 5), chunk_seconds=0.5, overlap=0.5, batch_size=3)
    assert max(net.calls) <= 3 and sum(net.calls) >= 19


def test_memory_of_streaming_is_bounded():
    # The stream never holds more than a few chunks of audio, however long the input.
    net = Gains()
    chunk = 800
    sizes = []
    stream = iter_separate(net, (torch.randn(2, 1000) for _ in range(200)), 0.1, 0.25, "hann", 4)
    for out in stream:
        sizes.append(out.shape[-1])
    assert sum(sizes) == 200_000
    assert max(sizes) <= 4 * chunk


def test_mono_is_upmixed_and_rates_are_resampled():
    net = Gains()
    mono = torch.randn(4000)
    y = separate(net, mono, chunk_seconds=0.1)
    assert y.shape == (2, 2, 4000)
    torch.testing.assert_close(y[0, 0], y[0, 1])
    t = torch.arange(16000) / 16000
    tone = torch.sin(2 * math.pi * 440 * t).expand(2, -1)
    y16 = separate(net, tone, sample_rate=16000, chunk_seconds=0.1)
    assert y16.shape == (2, 2, 16000)
    # the gain survives the round trip through 8 kHz (440 Hz is well inside the band)
    err = (y16[1, :, 200:-200] - 0.75 * tone[:, 200:-200]).abs().max()
    assert err < 0.02


def test_batched_input_and_defaults():
    net = Gains()
    x = torch.randn(3, 2, 900)
    y = separate(net, x)
    assert y.shape == (3, 2, 2, 900)
    torch.testing.assert_close(y[:, 1], 0.75 * x, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("mixture", "message"),
    [
        (torch.zeros(2, 0), "empty"),
        (torch.full((2, 100), float("nan")), "NaN"),
        (torch.zeros(6, 100), "6 channels"),
        (torch.zeros(1000, 2), "(channels, samples)"),
        (torch.zeros(2, 2, 2, 2), "shape"),
        (torch.zeros(2, 100, dtype=torch.int16), "floating point"),
    ],
)
def test_bad_mixtures_are_refused(mixture, message):
    with pytest.raises(SeparationInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        separate(Gains(), mixture)


@pytest.mark.parametrize("length", [101, 44100, 6 * 44100])
def test_windows_are_positive(length):
    # long chunks too: a float32 Hann window had exact zeros at its ends
    for kind in ("hann", "triangular", "rectangular"):
        w = overlap_window(kind, length)
        assert w.shape == (length,) and (w > 0).all() and w.max() <= 1
    with pytest.raises(ValueError, match="unknown overlap-add window"):
        overlap_window("kaiser", 10)


def test_silent_mixture_gives_silent_estimates():
    y = separate(Gains(), torch.zeros(2, 3000), chunk_seconds=0.1)
    assert torch.count_nonzero(y) == 0


# --- files


def _write(path, audio: np.ndarray, rate: int, **kw):
    sf.write(str(path), audio.T, rate, **kw)
    return path


def test_separate_file_writes_targets_and_exact_accompaniment(tmp_path):
    rng = np.random.default_rng(0)
    mix = (0.3 * rng.standard_normal((2, 8000 * 3))).astype(np.float32)
    src = _write(tmp_path / "song.wav", mix, 8000, subtype="FLOAT")
    out = tmp_path / "out"
    written = separate_file(Gains(), src, out, chunk_seconds=0.25, overlap=0.5)
    assert sorted(p.name for p in written) == ["accompaniment.wav", "drums.wav", "vocals.wav"]
    vocals, rate = sf.read(out / "song" / "vocals.wav", dtype="float32", always_2d=True)
    acc, _ = sf.read(out / "song" / "accompaniment.wav", dtype="float32", always_2d=True)
    assert rate == 8000 and vocals.shape == (8000 * 3, 2)
    np.testing.assert_allclose(vocals.T, 0.25 * mix, atol=1e-5)
    np.testing.assert_allclose(acc.T + vocals.T, mix, atol=1e-5)
    assert not list(out.rglob("*.partial"))


def test_existing_outputs_are_kept_and_failures_leave_no_partial_files(tmp_path):
    src = _write(tmp_path / "a.wav", np.zeros((2, 4000), np.float32), 8000)
    out = tmp_path / "out"
    separate_file(Gains(), src, out, chunk_seconds=0.1)
    stamp = (out / "a" / "vocals.wav").stat().st_mtime_ns
    assert separate_file(Gains(), src, out, chunk_seconds=0.1) == []
    assert (out / "a" / "vocals.wav").stat().st_mtime_ns == stamp

    class Broken(Gains):
        def forward(self, x):
            if len(self.calls) > 1:
                raise RuntimeError("boom")
            return super().forward(x)

    long = _write(tmp_path / "b.wav", np.zeros((2, 8000 * 4), np.float32), 8000)
    with pytest.raises(RuntimeError, match="boom"):
        separate_file(Broken(), long, out, chunk_seconds=0.1, batch_size=2)
    assert not list((out / "b").glob("*"))
    assert (out / "a" / "vocals.wav").exists()


def test_other_rates_and_channel_layouts_go_through_ffmpeg(tmp_path):
    t = np.arange(16000 * 2) / 16000
    tone = np.sin(2 * np.pi * 300 * t).astype(np.float32)
    surround = np.stack([tone, tone, tone * 0, tone * 0, tone * 0, tone * 0]) * 0.5
    src = _write(tmp_path / "s51.flac", surround, 16000)
    written = separate_file(Gains(), src, tmp_path / "o", chunk_seconds=0.2)
    vocals, rate = sf.read(written[0], always_2d=True)
    assert rate == 8000 and vocals.shape[1] == 2
    assert abs(vocals.shape[0] - 16000) <= 16
    assert vocals[1000:-1000].std() > 0.01


def test_real_stem_mp4_mixture_is_separated(tmp_path):
    stem = require_shared("musdb18-sample", "train", "Music Delta - 80s Rock.stem.mp4")
    net = Gains(sample_rate=44100, gains=(1.0, 0.0))
    written = separate_file(net, stem, tmp_path, chunk_seconds=2.0, targets=["vocals"])
    assert track_name(stem) == "Music Delta - 80s Rock"
    vocals, rate = sf.read(written[0], always_2d=True)
    # gain 1: "vocals" is the decoded mixture stream (7 s at 44.1 kHz stereo)
    assert rate == 44100 and vocals.shape[1] == 2 and abs(vocals.shape[0] / 44100 - 7.0) < 0.2
    assert vocals.std() > 0.01
    acc, _ = sf.read(tmp_path / "Music Delta - 80s Rock" / "accompaniment.wav", always_2d=True)
    assert np.abs(acc).max() < 1e-6


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "cannot read"), (b"RIFF\x00\x00\x00\x00WAVEjunkjunk", "cannot read")],
)
def test_unreadable_files_name_the_file(tmp_path, content, message):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(content)
    with pytest.raises(AudioFileError, match=message) as info:
        separate_file(Gains(), bad, tmp_path / "o")
    assert "bad.wav" in str(info.value)


def test_nan_and_empty_files_are_refused(tmp_path):
    nan = _write(tmp_path / "nan.wav", np.full((2, 800), np.nan, np.float32), 8000, subtype="FLOAT")
    with pytest.raises(AudioFileError, match="NaN"):
        separate_file(Gains(), nan, tmp_path / "o", chunk_seconds=0.1)
    empty = _write(tmp_path / "empty.wav", np.zeros((2, 0), np.float32), 8000)
    with pytest.raises(AudioFileError, match="no audio"):
        separate_file(Gains(), empty, tmp_path / "o", chunk_seconds=0.1)
    assert not list((tmp_path / "o").rglob("*.wav*"))


def test_find_audio_files(tmp_path):
    with pytest.raises(AudioFileError, match="input not found"):
        find_audio_files(tmp_path / "nope")
    with pytest.raises(AudioFileError, match="no audio files"):
        find_audio_files(tmp_path)
    (tmp_path / "x").mkdir()
    _write(tmp_path / "x" / "b.flac", np.zeros((1, 10), np.float32), 8000)
    _write(tmp_path / "a.wav", np.zeros((1, 10), np.float32), 8000)
    (tmp_path / "notes.txt").write_text("hi")
    assert [p.name for p in find_audio_files(tmp_path)] == ["a.wav", "b.flac"]


# --- losses and metrics


def test_losses_are_zero_for_perfect_estimates_and_per_target():
    ref = torch.randn(2, 3, 2, 4096)
    est = ref.clone()
    est[:, 1] += 0.1 * torch.randn_like(est[:, 1])
    for term in (
        WaveformL1(),
        SpectrogramLoss(512, 128),
        MultiResolutionStftLoss((256, 512)),
    ):
        values = term(est, ref)
        assert values.shape == (3,)
        assert values[0] < 1e-4 and values[2] < 1e-4 and values[1] > 1e-2
    mse = SpectrogramLoss(512, 128, norm="mse", max_bin=64)(est, ref)
    assert mse[1] > 0 and mse[0] < 1e-8
    # magnitudes ignore phase: a polarity flip costs nothing there, everything in complex
    flipped = ref.clone()
    flipped[:, 0] *= -1
    assert SpectrogramLoss(512, 128, kind="magnitude")(flipped, ref)[0] < 1e-4
    assert SpectrogramLoss(512, 128, kind="complex")(flipped, ref)[0] > 0.1
    total, parts = SeparationLoss(
        {"wave": WaveformL1(), "spec": SpectrogramLoss(512, 128)}, {"spec": 2.0}
    )(est, ref)
    torch.testing.assert_close(total, parts["wave"] + 2 * parts["spec"])
    with pytest.raises(ValueError, match="unknown terms"):
        SeparationLoss({"wave": WaveformL1()}, {"spec": 1.0})


def test_complex_spectrogram_loss_is_the_difference_of_two_transforms():
    # the loss takes one STFT of est - ref; the definition compares the two spectrograms
    ref, est = torch.randn(2, 3, 2, 4096), torch.randn(2, 3, 2, 4096)
    stft = Stft(512, 128)
    for norm, max_bin in (("l1", None), ("mse", 100)):
        diff = torch.view_as_real(stft(est)[..., :max_bin, :] - stft(ref)[..., :max_bin, :])
        diff = diff.abs() if norm == "l1" else diff.square()
        expected = diff.transpose(0, 1).reshape(3, -1).mean(1)
        got = SpectrogramLoss(512, 128, norm=norm, max_bin=max_bin)(est, ref)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_losses_have_gradients():
    est = torch.randn(1, 1, 1, 2048, requires_grad=True)
    MultiResolutionStftLoss((256,))(est, torch.randn(1, 1, 1, 2048)).sum().backward()
    assert est.grad is not None and torch.isfinite(est.grad).all() and est.grad.abs().sum() > 0


def test_usdr_known_values():
    ref = torch.randn(4, 2, 1000)
    torch.testing.assert_close(
        usdr(0.9 * ref, ref), torch.full((4,), 20.0, dtype=torch.float64), atol=1e-3, rtol=0
    )
    assert usdr(torch.zeros(2, 10), torch.zeros(2, 10)).item() == pytest.approx(0.0)
    assert usdr(torch.zeros(2, 10), ref[0, :, :10]).item() == pytest.approx(0.0, abs=1e-4)
    metric = MeanUsdr(["vocals", "drums"])
    refs = torch.randn(3, 2, 2, 500)
    metric.update(torch.stack([0.9 * refs[:, 0], 0.0 * refs[:, 1]], 1), refs)
    metric.update(torch.stack([0.99 * refs[:, 0], 0.0 * refs[:, 1]], 1), refs)
    scores = metric.compute()
    assert scores["vocals"].item() == pytest.approx(30.0, abs=1e-3)  # mean of 20 and 40 dB
    assert scores["drums"].item() == pytest.approx(0.0, abs=1e-3)
    assert scores["mean"].item() == pytest.approx(15.0, abs=1e-3)
    with pytest.raises(ValueError, match="targets"):
        metric.update(torch.zeros(1, 3, 2, 10), torch.zeros(1, 3, 2, 10))


def test_warmup_cosine_schedule():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    lrs = []
    for _ in range(130):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-6)
    assert lrs[110] == pytest.approx(0.1) and lrs[129] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    with pytest.raises(ValueError):
        warmup_cosine(opt, 10, 10)


def test_oracles():
    from audiolab.separation.oracle import oracle_separation

    g = torch.Generator().manual_seed(0)
    t = torch.arange(44100 * 2) / 44100
    tone = 0.5 * torch.sin(2 * math.pi * 220 * t).expand(2, -1)
    noise = 0.05 * torch.randn(2, t.numel(), generator=g)
    sources = torch.stack([tone, noise])
    mixture = sources.sum(0)
    scores = {
        k: usdr(oracle_separation(k, mixture, sources), sources)
        for k in ("irm1", "irm2", "ibm", "mix")
    }
    # disjoint-ish spectra: the masks recover the tone far better than doing nothing
    assert scores["irm1"][0] > scores["mix"][0] + 15
    assert scores["irm2"][0] > scores["irm1"][0] - 1
    assert scores["ibm"][0] > scores["mix"][0] + 10
    torch.testing.assert_close(
        oracle_separation("irm1", mixture, sources).sum(0), mixture, atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError, match="unknown oracle"):
        oracle_separation("wiener", mixture, sources)


def test_very_short_and_clipped_files(tmp_path, caplog):
    short = _write(tmp_path / "short.wav", np.full((2, 10), 0.1, np.float32), 8000, subtype="FLOAT")
    written = separate_file(Gains(), short, tmp_path / "o", chunk_seconds=0.5)
    vocals, _ = sf.read(written[0], always_2d=True)
    assert vocals.shape == (10, 2)
    np.testing.assert_allclose(vocals, 0.025, atol=1e-6)
    loud = _write(tmp_path / "loud.wav", np.ones((2, 800), np.float32), 8000, subtype="FLOAT")
    with caplog.at_level("WARNING", logger="audiolab"):
        separate_file(Gains(), loud, tmp_path / "o", chunk_seconds=0.05)
    assert "clipped" in caplog.text


def test_mp3_input(tmp_path):
    t = np.arange(8000 * 2) / 8000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    src = tmp_path / "song.mp3"
    sf.write(str(src), np.stack([tone, tone]).T, 8000, format="MP3")
    written = separate_file(Gains(), src, tmp_path / "o", chunk_seconds=0.25)
    vocals, rate = sf.read(written[0], always_2d=True)
    assert rate == 8000 and vocals.shape[1] == 2
    assert abs(len(vocals) - 16000) < 2000  # mp3 frames pad the ends a little
    assert 0.25 * 0.3 * 0.6 < np.abs(vocals).max() < 0.25 * 0.3 * 1.4
