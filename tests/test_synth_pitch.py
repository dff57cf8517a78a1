"""The synthetic pitch data: exact labels, determinism, ranges, and clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audiolab.data.synth_pitch import (
    STREAM_TEST,
    EpochSampler,
    SynthPitchDataModule,
    SynthPitchDataset,
    SynthToneRenderer,
)


def make_dataset(n_frames=101, **renderer_kwargs):
    renderer = SynthToneRenderer(**renderer_kwargs)
    return SynthPitchDataset(renderer, size=64, n_frames=n_frames, seed=3, stream=STREAM_TEST)


def test_batches_are_deterministic_per_seed_and_index():
    a = make_dataset().__getitems__([5, 9, 11])
    b = make_dataset().__getitems__([11, 5])  # another batch composition, same examples
    assert torch.equal(a[0]["frames"], b[1]["frames"])
    assert torch.equal(a[2]["f0"], b[0]["f0"])
    assert torch.equal(a[0]["frames"], make_dataset()[5]["frames"])
    other = SynthPitchDataset(SynthToneRenderer(), size=64, n_frames=101, seed=4, stream=STREAM_TEST)
    assert not torch.equal(a[0]["frames"], other[5]["frames"])


def test_labels_are_the_instantaneous_frequency():
    """A single clean partial: its instantaneous frequency at every frame centre, measured
    from the phase of the analytic signal of the Hann-windowed frame, equals the f0
    label within 1 cent (glides and vibrato included)."""
    sr, n_fft = 16000, 4096
    ds = make_dataset(max_harmonics=1, clean_prob=1.0, unvoiced_fraction=0.0, fmin=100.0, fmax=1500.0)
    analytic_gain = torch.zeros(n_fft, dtype=torch.float64)
    analytic_gain[0] = analytic_gain[n_fft // 2] = 1
    analytic_gain[1 : n_fft // 2] = 2
    for item in ds.__getitems__(list(range(8))):
        frames = item["frames"].double() * torch.hann_window(1024, dtype=torch.float64)
        analytic = torch.fft.ifft(torch.fft.fft(frames, n=n_fft) * analytic_gain)
        phase = torch.angle(analytic)
        step = torch.remainder(phase[:, 513] - phase[:, 511], 2 * math.pi) / 2
        measured = step * sr / (2 * math.pi)
        cents = 1200 * torch.log2(measured / item["f0"].double())
        assert cents.abs().max() < 1.0, cents.abs().max()


def test_f0_stays_in_range_and_gaps_unvoice_frames():
    ds = make_dataset(fmin=80.0, fmax=400.0, unvoiced_fraction=0.3)
    items = ds.__getitems__(list(range(64)))
    f0 = torch.stack([i["f0"] for i in items])
    voiced = torch.stack([i["voiced"] for i in items])
    assert f0.min() >= 80.0 * (1 - 1e-4) and f0.max() <= 400.0 * (1 + 1e-4)
    unvoiced = 1 - voiced.float().mean().item()
    assert 0.1 < unvoiced < 0.5, unvoiced


def test_unvoiced_frames_hold_no_tone():
    ds = make_dataset(clean_prob=1.0, unvoiced_fraction=0.4)
    for item in ds.__getitems__(list(range(16))):
        # a frame whose whole span lies in a gap is digital silence when there is no noise
        silent = item["frames"].abs().amax(dim=-1) == 0
        assert not (silent & item["voiced"]).any()


def test_training_stream_changes_every_epoch():
    sampler = EpochSampler(10)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) == list(range(10, 20)) and first == list(range(10))


def test_datamodule_shapes():
    dm = SynthPitchDataModule(batch_size=16, train_batches_per_epoch=2, val_clips=4, eval_batch_size=2)
    train = next(iter(dm.train_dataloader()))
    assert train["frames"].shape == (16, 1, 1024) and train["f0"].shape == (16, 1)
    val = next(iter(dm.val_dataloader()))
    assert val["frames"].shape == (2, 101, 1024) and val["voiced"].dtype == torch.bool
    assert torch.isfinite(train["frames"]).all() and train["frames"].abs().max() <= 1.0


@pytest.mark.parametrize(
    "fmin,fmax",
    [(500.0, 100.0), (0.0, 1000.0), (-5.0, 100.0), (100.0, 8000.0), (100.0, 12000.0), (300.0, 300.0)],
)
def test_impossible_f0_range_is_a_clear_error(fmin, fmax):
    with pytest.raises(ValueError, match=r"impossible f0 range .*need 0 < fmin < fmax < 8000 Hz.*data\.fmin"):
        SynthPitchDataModule(fmin=fmin, fmax=fmax)


def test_noise_follows_the_requested_snr():
    """Clean and noisy renderings of the same example differ by the requested SNR."""
    renderer = SynthToneRenderer(snr_db=(10.0, 10.0), clean_prob=0.0, unvoiced_fraction=0.0)
    params = renderer.draw(np.random.default_rng(0), 16000)
    clean = dict(params, snr_db=np.float64(np.inf))
    centers = torch.tensor([8000])
    noisy_audio, _, _ = renderer.render([params], 16000, centers)
    clean_audio, _, _ = renderer.render([clean], 16000, centers)
    # undo the random output level (the peak is normalised after the noise is added)
    noisy = noisy_audio[0].double() / noisy_audio[0].abs().max()
    tone = clean_audio[0].double() / clean_audio[0].abs().max()
    scale = (noisy @ tone) / (tone @ tone)
    residual = noisy - scale * tone
    snr = 10 * torch.log10((scale * tone).pow(2).sum() / residual.pow(2).sum())
    assert abs(snr.item() - 10.0) < 0.5


def test_sine_prob_renders_pure_sines_and_keeps_other_streams():
    """sine_prob=1 keeps the first partial only; sine_prob=0 draws exactly what the
    renderer drew before the option existed (values recorded from that version, commit
    fd6068a, seed 5: partial amplitudes, gap starts, SNR, level and noise come after the
    option's draw)."""
    sr, n = 16000, 16000
    pure = SynthToneRenderer(sample_rate=sr, sine_prob=1.0, snr_db=(100.0, 100.0), clean_prob=1.0)
    params = pure.draw(np.random.default_rng(3), n)
    assert np.count_nonzero(params["amps"]) == 1 and params["amps"][0] > 0
    off = SynthToneRenderer(sample_rate=sr, sine_prob=0.0).draw(np.random.default_rng(5), n)
    np.testing.assert_allclose(off["amps"][:3], [0.24314456190532516, 0.34093935249212276, 0.28112810697384033], rtol=1e-12)
    np.testing.assert_allclose(off["gap_start"], [0.520866937971977, 0.9154494224426455], rtol=1e-12)
    np.testing.assert_allclose([off["snr_db"], off["level"]], [7.506997609380752, 0.5358768829638444], rtol=1e-12)
    np.testing.assert_allclose(off["noise"][:2], [0.2650909125804901, -0.4642446041107178], rtol=1e-6)
    with pytest.raises(ValueError, match="sine_prob"):
        SynthToneRenderer(sine_prob=1.5)
