"""The fast pitch network: its harmonic-stack front end, shapes, folded batch norm, and
training through the pitch LightningModule."""

from __future__ import annotations

import math

import pytest
import torch

from audiolab.audio.pitch_grid import bin_cents
from audiolab.nets.harmonic_pitch import HarmonicPitchNet, conv1d_as_matmul


def tone(f0: float, partials: int = 1, n: int = 1024, rate: int = 16000) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float64) / rate
    return sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, partials + 1)).float()


def nearest_bin(f0: float) -> int:
    cents = 1200 * math.log2(f0 / 10.0)
    return int((bin_cents(dtype=torch.float64) - cents).abs().argmin())


def test_shapes_range_and_embedding():
    net = HarmonicPitchNet(channels=8).eval()
    frames = torch.randn(2, 3, 1024)
    with torch.no_grad():
        act, emb = net(frames), net.embed(frames)
    assert act.shape == (2, 3, 360) and act.min() >= 0 and act.max() <= 1
    assert emb.shape == (2, 3, 8 * 360)


@pytest.mark.parametrize("f0", [110.0, 261.6, 440.0, 1000.0, 1760.0])
def test_each_harmonic_channel_peaks_where_its_multiple_of_the_bin_hits_the_tone(f0):
    """A pure tone at f0: channel h peaks at the bin whose frequency times h is f0, i.e.
    the h = 1 channel at f0's own bin, h = 2 one octave (60 bins) lower."""
    net = HarmonicPitchNet(harmonics=(1, 2, 0.5))
    stack = net.stack(tone(f0)[None])[0]
    target = nearest_bin(f0)
    assert abs(int(stack[0].argmax()) - target) <= 1
    assert abs(int(stack[1].argmax()) - (target - 60)) <= 1 or target - 60 < 0
    if target + 60 < 360:
        assert abs(int(stack[2].argmax()) - (target + 60)) <= 1


def test_a_pitch_shift_is_a_shift_along_the_bins():
    """Harmonic tones a semitone (5 bins) apart give stacks that are shifted copies."""
    net = HarmonicPitchNet()
    low, high = net.stack(torch.stack([tone(200.0, 8), tone(200.0 * 2 ** (1 / 12), 8)]))
    # compare the bins both cover with the partials of interest, away from the edges
    a, b = low[:, 100:250], high[:, 105:255]
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.97


def test_gain_does_not_change_the_output():
    net = HarmonicPitchNet().eval()
    frames = torch.randn(4, 1024)
    with torch.no_grad():
        assert torch.allclose(net(frames), net(5.0 * frames + 0.1), atol=1e-4)


def test_eval_mode_folds_batch_norm_into_the_convolutions():
    net = HarmonicPitchNet(channels=8)
    frames = torch.randn(32, 1024)
    net.train()
    for _ in range(3):  # non-trivial running statistics
        net(frames + torch.randn_like(frames))
    for block in net.body:  # and non-trivial affine parameters
        torch.nn.init.normal_(block.norm.weight, 1.0, 0.2)
        torch.nn.init.normal_(block.norm.bias, 0.0, 0.2)
    net.eval()
    with torch.no_grad():
        fused = net.logits(frames)
        h = net.input_norm(net.stack(frames))
        for block in net.body:
            h = torch.relu(block.norm(block.conv(h)))
        unfused = net.head(h).reshape(32, 360)
    assert torch.allclose(fused, unfused, atol=1e-4), (fused - unfused).abs().max()


@pytest.mark.parametrize(("stride", "dilation", "kernel"), [(1, 1, 5), (2, 1, 5), (1, 4, 5), (2, 8, 5), (1, 1, 1), (3, 2, 3), (2, 3, 7)])
def test_conv1d_as_matmul_is_conv1d(stride, dilation, kernel):
    x, weight, bias = torch.randn(3, 5, 64), torch.randn(7, 5, kernel), torch.randn(7)
    padding = dilation * (kernel // 2)
    expected = torch.nn.functional.conv1d(x, weight, bias, stride=stride, padding=padding, dilation=dilation)
    got = conv1d_as_matmul(x, weight, bias, stride, padding, dilation)
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)


def test_frames_are_normalised_by_their_standard_deviation():
    """The stack's level normalisation is ``std`` (n - 1), computed from the norm."""
    net = HarmonicPitchNet()
    frames = torch.randn(4, 1024) * torch.tensor([[0.01], [1.0], [3.0], [100.0]]) + 0.5
    x = frames - frames.mean(dim=-1, keepdim=True)
    x = x / x.std(dim=-1, keepdim=True)
    spectrum = torch.fft.rfft(x * net.window, n=net.n_fft).abs()
    db = 20.0 * torch.log10(spectrum.clamp_min(1e-8))
    db = torch.maximum(db, db.amax(dim=-1, keepdim=True) - net.floor_db)
    expected = torch.lerp(db[:, net.lower], db[:, net.upper], net.weight).reshape(4, -1, 360)
    assert torch.allclose(net.stack(frames), expected, atol=1e-3)


def test_bin_stride_orders_the_head_outputs_by_bin_and_halves_the_cost():
    """With bin_stride 2 the hidden layers see every second bin and the head gives two
    logits per position: logit 2p + j is output channel j at position p."""
    net = HarmonicPitchNet(channels=8, bin_stride=2).eval()
    frames = torch.randn(3, 1024)
    with torch.no_grad():
        hidden = net._hidden(frames)
        per_position = net.head(hidden)  # (frames, 2, 180)
        logits = net.logits(frames)
    assert hidden.shape == (3, 8, 180) and logits.shape == (3, 360)
    assert torch.equal(logits[:, 0::2], per_position[:, 0]) and torch.equal(logits[:, 1::2], per_position[:, 1])
    full = HarmonicPitchNet(channels=8)
    stack = 2 * len(full.harmonics) * 360
    fft = int(2.5 * full.n_fft * math.log2(full.n_fft))
    convs_full = full.macs_per_frame() - fft - stack
    convs_half = net.macs_per_frame() - fft - stack
    head_full, head_half = 8 * 1 * 360, 8 * 2 * 180  # the head costs the same either way
    assert convs_half - head_half == (convs_full - head_full) // 2
    with pytest.raises(ValueError, match="bin_stride"):
        HarmonicPitchNet(bin_stride=7)


def test_cost_is_a_small_fraction_of_crepe_full():
    # CREPE full: about 1.3 GFLOP (0.65 G multiply-adds) per frame
    assert HarmonicPitchNet().macs_per_frame() < 0.65e9 / 100


def test_bad_arguments_and_input_are_refused():
    with pytest.raises(ValueError, match="odd"):
        HarmonicPitchNet(kernel_size=4)
    with pytest.raises(ValueError, match="n_fft"):
        HarmonicPitchNet(n_fft=512)
    with pytest.raises(ValueError, match="positive"):
        HarmonicPitchNet(harmonics=(0, 1))
    with pytest.raises(ValueError, match="frames of 1024 samples"):
        HarmonicPitchNet()(torch.randn(2, 1000))
