"""Viterbi decoding (against librosa, and on real speech), periodicity, thresholds,
A-weighted loudness and NaN-aware filters."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from helpers import require_shared

from audiolab.audio.pitch_grid import bin_cents, cents_to_hz, gaussian_targets, hz_to_cents
from audiolab.pitch import viterbi as viterbi_module
from audiolab.pitch.decode import (
    decode,
    decode_with_bins,
    limit_range,
    local_average,
    observation_probabilities,
    viterbi_bins,
)
from audiolab.pitch.postprocess import (
    a_weighted_loudness,
    hysteresis,
    hysteresis_voicing,
    nan_mean_filter,
    nan_median_filter,
    periodicity,
    silence_gate,
    threshold,
)
from audiolab.pitch.viterbi import BLOCK, crepe_transition, crepe_viterbi, viterbi


def random_observations(rng: np.random.Generator, shape: tuple[int, ...], sharpness: float = 4.0) -> np.ndarray:
    """Peaky random distributions over the last axis, float32 like network outputs."""
    p = rng.random(shape).astype(np.float32) ** sharpness
    return p / p.sum(axis=-1, keepdims=True)


# -- Viterbi ---------------------------------------------------------------------------


def test_crepe_transition():
    t = crepe_transition()
    assert t.shape == (360, 360)
    assert torch.allclose(t.sum(dim=1), torch.ones(360, dtype=t.dtype))
    i = torch.arange(360)
    dist = (i[:, None] - i[None, :]).abs()
    assert (t[dist >= 12] == 0).all() and (t[dist < 12] > 0).all()
    # interior rows: weights proportional to 12 - |i - j|
    row = t[180, 180 - 11 : 180 + 12]
    assert torch.allclose(row / row[11], (12 - torch.arange(-11, 12).abs()).double() / 12)


def wandering_observations(rng: np.random.Generator, batch: int, n_frames: int) -> np.ndarray:
    """Noisy activations around a random-walk pitch (plus octave slips), normalised per frame."""
    steps = rng.normal(0, 40, (batch, n_frames)) + 1200 * (rng.random((batch, n_frames)) < 0.01)
    cents = torch.from_numpy(np.clip(4500 + np.cumsum(steps, axis=1), 2100, 9000))
    act = gaussian_targets(cents_to_hz(cents), torch.ones(batch, n_frames, dtype=torch.bool)).numpy()
    act = act * rng.random((batch, n_frames, 1)) + 0.1 * rng.random(act.shape) ** 4
    return (act / act.sum(-1, keepdims=True)).astype(np.float32)


def test_viterbi_path_equals_librosa_with_the_crepe_transition():
    rng = np.random.default_rng(0)
    # two sequences in one batch, longer than a block so that the block hand-over counts
    n_frames = BLOCK + 137
    transition = crepe_transition()
    obs = wandering_observations(rng, 2, n_frames)
    ours = viterbi(torch.from_numpy(obs), transition)
    assert ours.shape == (2, n_frames) and ours.dtype == torch.long
    for b in range(2):
        want = librosa.sequence.viterbi(obs[b].T, transition.numpy())
        np.testing.assert_array_equal(ours[b].numpy(), want)
    # the paths are not trivial: they move
    assert len(torch.unique(ours)) > 50
    # uninformative observations make the path stick to the edge bins (whose rows of the
    # transition matrix are normalised over fewer neighbours): the same in both
    flat = random_observations(rng, (1, 300, 360), sharpness=1.0)
    np.testing.assert_array_equal(
        viterbi(torch.from_numpy(flat), transition)[0].numpy(), librosa.sequence.viterbi(flat[0].T, transition.numpy())
    )


def test_crepe_viterbi_is_viterbi_with_the_crepe_transition():
    """The prepared CREPE model decodes the same paths as the general decoder, for every
    state count, call after call (nothing shared is modified), and checks its input."""
    rng = np.random.default_rng(5)
    for n_states in (360, 50, 360):
        obs = torch.from_numpy(random_observations(rng, (3, 70, n_states), sharpness=2.0))
        want = viterbi(obs, crepe_transition(n_states))
        assert len(torch.unique(want)) > 3
        for _ in range(2):
            assert torch.equal(crepe_viterbi(obs), want)
    with pytest.raises(ValueError, match="finite and within"):
        crepe_viterbi(torch.full((5, 360), float("nan")))


@pytest.mark.parametrize(("batch", "n_frames", "seg"), [(1, 50, 7), (1, 43, 7), (6, 40, 2), (2, 300, 9)])
def test_long_inputs_are_decoded_in_segments_to_the_same_path(monkeypatch, batch, n_frames, seg):
    """Past the memory budget, the decoder recomputes segments from saved rows: the path is
    the whole-sequence one (librosa's) for segment lengths that divide the frames or not,
    segments of two frames, and one sequence or a batch (both back-tracking ways)."""
    rng = np.random.default_rng(batch * 1000 + n_frames)
    transition = crepe_transition()
    obs = wandering_observations(rng, batch, n_frames)
    whole = viterbi(torch.from_numpy(obs), transition)
    padded = 360 + 2 * 11
    monkeypatch.setattr(viterbi_module, "_SCORES_BYTES", seg * batch * padded * 8)
    segmented = viterbi(torch.from_numpy(obs), transition)
    assert torch.equal(segmented, whole)
    for b in range(batch):
        np.testing.assert_array_equal(segmented[b].numpy(), librosa.sequence.viterbi(obs[b].T, transition.numpy()))


def test_few_sequences_are_decoded_on_one_thread_and_the_setting_is_restored(monkeypatch, two_threads):
    """A single clip's forward pass is microseconds of work per step: one thread; a batch of
    `_PARALLEL_SEQUENCES` keeps the process's threads; the setting is the same after."""
    seen = []
    forward = viterbi_module._forward

    def recording(*args):
        seen.append(torch.get_num_threads())
        forward(*args)

    monkeypatch.setattr(viterbi_module, "_forward", recording)
    rng = np.random.default_rng(4)
    for batch in (1, viterbi_module._PARALLEL_SEQUENCES - 1, viterbi_module._PARALLEL_SEQUENCES):
        viterbi_module.crepe_viterbi(torch.from_numpy(random_observations(rng, (batch, 30, 360))))
        assert torch.get_num_threads() == 2
    assert seen == [1, 1, 2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_viterbi_path_equals_librosa_with_dense_transitions_and_initial(seed):
    rng = np.random.default_rng(seed)
    n_states, n_frames = 9, 80
    obs = rng.random((n_frames, n_states))  # float64 likelihoods, not normalised
    transition = rng.random((n_states, n_states)) ** 3
    transition /= transition.sum(axis=1, keepdims=True)
    initial = rng.random(n_states)
    initial /= initial.sum()
    ours = viterbi(torch.from_numpy(obs), torch.from_numpy(transition), torch.from_numpy(initial))
    want = librosa.sequence.viterbi(obs.T, transition, p_init=initial)
    np.testing.assert_array_equal(ours.numpy(), want)


def test_viterbi_ties_go_to_the_lowest_state_as_in_librosa():
    obs = np.full((20, 30), 1.0 / 30, dtype=np.float32)  # nothing to choose between
    transition = crepe_transition(30).numpy()
    ours = viterbi(torch.from_numpy(obs), torch.from_numpy(transition))
    np.testing.assert_array_equal(ours.numpy(), librosa.sequence.viterbi(obs.T, transition))


def test_viterbi_batches_over_leading_axes_and_single_frames():
    rng = np.random.default_rng(3)
    obs = torch.from_numpy(random_observations(rng, (2, 3, 40, 50)))
    transition = crepe_transition(50)
    batched = viterbi(obs, transition)
    assert batched.shape == (2, 3, 40)
    assert torch.equal(batched[1, 2], viterbi(obs[1, 2], transition))
    one = viterbi(obs[0, 0, :1], transition)
    assert one.tolist() == [int(obs[0, 0, 0].argmax())]


def test_viterbi_refuses_bad_input():
    t = crepe_transition(10)
    with pytest.raises(ValueError, match=r"transition matrix must be \(10, 10\)"):
        viterbi(torch.rand(5, 10), crepe_transition(12))
    with pytest.raises(ValueError, match="rows that sum to 1"):
        viterbi(torch.rand(5, 10), t * 2)
    with pytest.raises(ValueError, match="finite and within"):
        viterbi(torch.full((5, 10), float("nan")), t)
    with pytest.raises(ValueError, match="floating-point observations of shape"):
        viterbi(torch.ones(5, 10, dtype=torch.long), t)


def test_viterbi_decoder_ignores_a_one_frame_octave_error():
    cents = torch.full((40,), 5000.0)
    act = gaussian_targets(cents_to_hz(cents), torch.ones(40, dtype=torch.bool))
    act[20] = gaussian_targets(cents_to_hz(torch.tensor(6200.0)), torch.tensor(True)) * 1.0
    act[20] += 0.3 * act[19]  # the true pitch is still there, weaker
    assert decode(act, "weighted_argmax")[20] > 6000  # frame-wise decoding jumps
    path = decode(act, "viterbi")
    assert (path - cents).abs().max() < 10.0


def test_observation_model_keeps_the_network_contrast():
    act = torch.tensor([[0.9, 1e-4, 0.5, 0.0]])
    p = observation_probabilities(act)
    assert torch.allclose(p.sum(-1), torch.ones(1))
    assert p[0, 0] / p[0, 1] == pytest.approx(9000, rel=1e-4)
    # softmax of the same sigmoid outputs, torchcrepe's choice, is nearly flat
    soft = torch.softmax(act, -1)
    assert soft[0, 0] / soft[0, 1] < 3
    assert torch.allclose(observation_probabilities(torch.zeros(2, 4)), torch.full((2, 4), 0.25))


def test_decode_with_bins_agrees_with_decode():
    rng = np.random.default_rng(4)
    act = torch.from_numpy(random_observations(rng, (2, 30, 360), sharpness=8.0) * 50).clamp(0, 1)
    for decoder in ("argmax", "weighted_argmax", "viterbi"):
        cents, bins = decode_with_bins(act, decoder)
        assert torch.equal(cents, decode(act, decoder)), decoder
        if decoder == "viterbi":
            assert torch.equal(bins, viterbi_bins(act))
        else:
            assert torch.equal(bins, act.argmax(-1))
        if decoder != "argmax":
            assert torch.equal(cents, local_average(act, bins))


def test_limit_range():
    act = torch.ones(3, 360)
    limited = limit_range(act, 32.7, 1975.5)
    grid = bin_cents()
    kept = limited[0] > 0
    lo, hi = hz_to_cents(torch.tensor([32.7, 1975.5]))
    assert (grid[kept] >= lo - 10).all() and (grid[kept] <= hi + 10).all()
    assert (grid[~kept] < lo - 10).logical_or(grid[~kept] > hi + 10).all()
    assert kept.sum() > 340
    narrow = limit_range(act, 100.0, 200.0)[0] > 0
    assert 55 <= narrow.sum() <= 62  # one octave is 60 bins
    with pytest.raises(ValueError, match="need 0 < fmin < fmax"):
        limit_range(act, 500.0, 100.0)


FSDD_FILES = [f"{digit}_{speaker}_0.wav" for digit in (0, 1) for speaker in ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")]


def test_viterbi_never_scores_below_weighted_argmax_on_fsdd_speech():
    """Pretrained CREPE tiny on real speech, scored against librosa.pyin's f0 on its voiced
    frames. torchcrepe's observation model (softmax of the sigmoid outputs) collapses on
    these clips; ours must be at least as good as frame-wise decoding on every file."""
    from audiolab.pitch.pretrained import pretrained_crepe

    folder = require_shared("fsdd", "recordings")
    net = pretrained_crepe("tiny")
    transition = crepe_transition()
    totals = {"weighted_argmax": 0.0, "viterbi": 0.0, "softmax_viterbi": 0.0}
    for name in FSDD_FILES:
        audio, rate = sf.read(folder / name, dtype="float32")
        # 10-ms hop on both sides: pyin at 8 kHz hop 80, CREPE at 16 kHz hop 160
        f0, voiced, _ = librosa.pyin(audio, fmin=60, fmax=500, sr=rate, frame_length=512, hop_length=rate // 100)
        x = torchaudio.functional.resample(torch.from_numpy(audio), rate, 16000)
        frames = torch.nn.functional.pad(x, (512, 512)).unfold(-1, 1024, 160)
        with torch.no_grad():
            act = net(frames)
        n = min(len(f0), act.shape[0])
        voiced = voiced[:n]
        assert voiced.sum() >= 10, name
        ref = 1200 * np.log2(f0[:n][voiced] / 10)
        estimates = {
            "weighted_argmax": decode(act, "weighted_argmax"),
            "viterbi": decode(act, "viterbi"),
            "softmax_viterbi": local_average(act, viterbi(torch.softmax(act, -1), transition)),
        }
        rpa = {k: float(np.mean(np.abs(v[:n].numpy()[voiced] - ref) < 50)) for k, v in estimates.items()}
        assert rpa["viterbi"] >= rpa["weighted_argmax"], (name, rpa)
        for k in totals:
            totals[k] += rpa[k] / len(FSDD_FILES)
    assert totals["viterbi"] > totals["weighted_argmax"] + 0.05, totals
    assert totals["softmax_viterbi"] < 0.5 * totals["viterbi"], totals


# -- periodicity, thresholds, loudness ---------------------------------------------------


def test_periodicity_is_the_activation_at_the_decoded_bin():
    act = torch.rand(2, 5, 360)
    bins = torch.randint(0, 360, (2, 5))
    p = periodicity(act, bins)
    assert p.shape == (2, 5)
    for b in range(2):
        for t in range(5):
            assert p[b, t] == act[b, t, bins[b, t]]


def test_fixed_threshold():
    pitch = torch.tensor([[100.0, 200.0, 300.0]])
    out = threshold(pitch, torch.tensor([[0.5, 0.1, 0.21]]), 0.21)
    assert out[0, 0] == 100 and torch.isnan(out[0, 1]) and out[0, 2] == 300


def reference_hysteresis(p: np.ndarray, low: float, high: float) -> np.ndarray:
    """Frame-by-frame definition: runs at or above `low` that reach `high` somewhere."""
    out = np.zeros(len(p), dtype=bool)
    t = 0
    while t < len(p):
        if p[t] >= low:
            end = t
            while end < len(p) and p[end] >= low:
                end += 1
            out[t:end] = (p[t:end] >= high).any()
            t = end
        else:
            t += 1
    return out


def test_hysteresis_matches_its_definition():
    p = torch.tensor([0.1, 0.25, 0.35, 0.25, 0.1, 0.25, 0.25, 0.1, 0.4])
    assert hysteresis_voicing(p, 0.19, 0.31).tolist() == [False, True, True, True, False, False, False, False, True]
    rng = np.random.default_rng(5)
    batch = rng.random((3, 4, 200)) ** 2
    ours = hysteresis_voicing(torch.from_numpy(batch), 0.2, 0.6).numpy()
    for idx in np.ndindex(3, 4):
        np.testing.assert_array_equal(ours[idx], reference_hysteresis(batch[idx], 0.2, 0.6))
    pitch = torch.full((9,), 220.0)
    assert torch.isnan(hysteresis(pitch, p)).tolist() == (~hysteresis_voicing(p)).tolist()
    with pytest.raises(ValueError, match="low <= high"):
        hysteresis_voicing(p, 0.5, 0.2)


def reference_loudness(audio: np.ndarray, sample_rate: int, hop: int, n_fft: int) -> np.ndarray:
    """The A-weighted mean square of each Hann-windowed frame, in dB, computed in the
    time domain: the frame filtered by A-weighting through its full (two-sided) FFT."""
    padded = np.pad(audio.astype(np.float64), n_fft // 2)
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann
    freqs = np.abs(np.fft.fftfreq(n_fft, 1 / sample_rate))
    with np.errstate(divide="ignore"):
        gain = 10 ** (librosa.A_weighting(freqs, min_db=None) / 20)
    out = []
    for start in range(0, len(audio) + 1, hop):
        frame = padded[start : start + n_fft] * window
        filtered = np.fft.ifft(np.fft.fft(frame) * gain)
        out.append(np.sum(np.abs(filtered) ** 2) / np.sum(window**2))
    return 10 * np.log10(np.maximum(out, 1e-10))


def test_a_weighted_loudness_matches_its_definition_and_gates_silence():
    rng = np.random.default_rng(6)
    rate, hop = 16000, 160
    t = np.arange(rate) / rate
    tone = 0.5 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(rate)
    quiet = 1e-5 * rng.standard_normal(rate)
    audio = np.stack([np.concatenate([tone, quiet]), np.concatenate([quiet, tone])]).astype(np.float32)
    ours = a_weighted_loudness(torch.from_numpy(audio), rate, hop)
    assert ours.shape == (2, audio.shape[1] // hop + 1)
    for b in range(2):
        np.testing.assert_allclose(ours[b].numpy(), reference_loudness(audio[b], rate, hop, 1024), atol=1e-3)
    # full-scale 1 kHz sine: -3 dB (A-weighting is 0 dB at 1 kHz)
    sine = torch.sin(2 * torch.pi * 1000 * torch.arange(rate) / rate)
    assert a_weighted_loudness(sine, rate, hop)[10:-10].numpy() == pytest.approx(-3.01, abs=0.02)
    assert (a_weighted_loudness(torch.zeros(rate), rate, hop) == -100).all()
    loud, silent = ours[0, 10:90], ours[0, 110:190]
    assert loud.min() > -20 and silent.max() < -60
    gated = silence_gate(torch.ones_like(ours), ours)
    assert (gated[0, 10:90] == 1).all() and (gated[0, 110:190] == 0).all()
    assert (gated[1, 10:90] == 0).all() and (gated[1, 110:190] == 1).all()


# -- NaN-aware filters -------------------------------------------------------------------


def reference_filter(x: np.ndarray, window: int, reduce) -> np.ndarray:
    half = window // 2
    out = np.full_like(x, np.nan)
    for t in range(len(x)):
        values = x[max(0, t - half) : t + half + 1]
        values = np.sort(values[~np.isnan(values)])
        if len(values):
            out[t] = reduce(values)
    return out


@pytest.mark.parametrize("window", [1, 3, 5, 8, 9])
def test_nan_filters_match_their_definition(window):
    rng = np.random.default_rng(window)
    x = rng.normal(200, 30, (2, 3, 60))
    x[rng.random(x.shape) < 0.3] = np.nan
    x[0, 0, 10:25] = np.nan  # a gap wider than the window
    t = torch.from_numpy(x)
    if window % 2 == 0:
        with pytest.raises(ValueError, match="odd number of frames, got 8"):
            nan_median_filter(t, window)
        return
    median = nan_median_filter(t, window, keep_nan=False).numpy()
    mean = nan_mean_filter(t, window, keep_nan=False).numpy()
    for idx in np.ndindex(2, 3):
        np.testing.assert_allclose(median[idx], reference_filter(x[idx], window, lambda v: v[(len(v) - 1) // 2]))
        np.testing.assert_allclose(mean[idx], reference_filter(x[idx], window, np.mean), rtol=1e-12)
    kept = nan_median_filter(t, window).numpy()
    assert np.array_equal(np.isnan(kept), np.isnan(x))
    assert np.array_equal(np.isnan(nan_mean_filter(t, window).numpy()), np.isnan(x))
