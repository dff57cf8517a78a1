"""Speech-like synthesis with exact labels (audiolab.data.speech_synth): the labels are checked
against independent pitch estimates (librosa's YIN plus a normalised cross-correlation), not
against the synthesiser's own bookkeeping."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
from helpers import require_shared

from audiolab.audio.pitch_grid import HOP_LENGTH, SAMPLE_RATE
from audiolab.data import speech_synth as ss

FMIN, FMAX = 40.0, 600.0
CENTS_TOLERANCE = 50.0  # a quarter tone: far outside jitter, far inside an octave error
CONFIDENT = 0.5  # normalised cross-correlation above which an estimate counts as confident


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: threads only add overhead


def periodicity(audio: torch.Tensor, frames: torch.Tensor, win: int = 1024) -> torch.Tensor:
    """Peak normalised cross-correlation of the 1024-sample window centred on each frame with
    itself shifted by one period of 35-600 Hz: near 1 for periodic signals, ~0.3 for noise."""
    min_lag, max_lag = int(SAMPLE_RATE / FMAX), int(SAMPLE_RATE / 35.0)
    x = torch.nn.functional.pad(audio, (win // 2, win // 2 + max_lag))
    windows = x[frames[:, None] * HOP_LENGTH + torch.arange(win + max_lag)]
    head = windows[:, :win]
    shifted = windows.unfold(1, win, 1)[:, min_lag : max_lag + 1]
    num = (head[:, None] * shifted).sum(-1)
    den = (head.pow(2).sum(-1, keepdim=True) * shifted.pow(2).sum(-1)).sqrt().clamp_min(1e-12)
    return (num / den).max(dim=1).values


def yin_f0(audio: torch.Tensor, n_frames: int) -> np.ndarray:
    """librosa's YIN on the pitch grid (1024-sample frames centred on ``i * 160``)."""
    f0 = librosa.yin(
        audio.numpy(),
        fmin=35.0,
        fmax=700.0,
        sr=SAMPLE_RATE,
        frame_length=1024,
        hop_length=HOP_LENGTH,
    )
    return f0[:n_frames]


def cents_error(estimate: np.ndarray, label: np.ndarray) -> np.ndarray:
    return 1200.0 * np.abs(np.log2(estimate / label))


def render(seed: int, seconds: float = 3.0, creak: bool | None = False):
    rng = np.random.default_rng(seed)
    voice = ss.draw_voice(rng)
    if creak is not None:
        voice["creak"] = creak
    utterance = ss.draw_utterance(rng, seconds, FMIN, FMAX, formant_scale=voice["formant_scale"])
    return ss.render_utterance(utterance, rng, voice)


def test_render_shapes_and_determinism():
    audio, f0, voiced = render(3)
    again, f0_again, voiced_again = render(3)
    assert (
        torch.equal(audio, again)
        and torch.equal(f0, f0_again)
        and torch.equal(voiced, voiced_again)
    )
    assert not torch.equal(audio, render(4)[0])
    assert audio.dtype == torch.float32 and f0.dtype == torch.float32 and voiced.dtype == torch.bool
    assert len(audio) == (len(f0) - 1) * HOP_LENGTH + 1 and 1 + len(audio) // HOP_LENGTH == len(f0)
    assert len(f0) == 301  # 3 s of 10-ms frames, plus the frame centred on the last sample
    assert torch.isfinite(audio).all() and 0 < audio.abs().max() <= 1


def test_draw_utterance_labels():
    lows = highs = 0
    for seed in range(20):
        utt = ss.draw_utterance(np.random.default_rng(seed), 4.0, FMIN, FMAX)
        f0, voiced = utt["f0"], utt["voiced"]
        assert torch.isfinite(f0).all() and (f0 >= FMIN).all() and (f0 <= FMAX).all()
        assert voiced.any() and (~voiced).any()
        # Unvoiced frames hold the nearest voiced frame's f0.
        on = torch.nonzero(voiced).squeeze(1)
        for i in torch.nonzero(~voiced).squeeze(1).tolist():
            distance = (on - i).abs()
            assert f0[i] in f0[on[distance == distance.min()]]
        # Inside voiced runs the contour moves at most MAX_GLIDE octaves per second: no jumps.
        both = voiced[1:] & voiced[:-1]
        rate = torch.log2(f0[1:] / f0[:-1]).abs()[both] * (SAMPLE_RATE / HOP_LENGTH)
        assert rate.max() <= ss.MAX_GLIDE + 1e-3
        formants = utt["formants"]
        assert formants.shape == (len(f0), 4) and (formants.diff(dim=1) > 0).all()
        assert (utt["bandwidths"] >= 50).all() and (utt["bandwidths"] <= 250).all()
        lows += int(f0.median() < 100)
        highs += int(f0.median() > 300)
    assert lows and highs, "the base f0 should reach both low male and high voices"


def test_voicing_ramps_meet_frame_centres():
    voiced = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1], dtype=torch.bool)
    f0 = torch.tensor([0, 100, 200, 0, 300, 0, 0, 50.0])
    n = (len(f0) - 1) * HOP_LENGTH + 1
    f0_s, voicing = ss.frames_to_samples(f0, voiced, n)
    centres = torch.arange(len(f0)) * HOP_LENGTH
    assert torch.equal(voicing[centres], voiced.float())
    assert torch.allclose(f0_s[centres][voiced], f0[voiced])
    assert (f0_s > 0).all()


def test_labels_match_an_independent_estimate():
    errors, confident_share, voiced_r, unvoiced_r = [], [], [], []
    for seed in (0, 7, 11):  # a low, a mid and a high voice
        audio, f0, voiced = render(seed)
        frames = torch.arange(len(f0))
        r = periodicity(audio, frames)
        confident = voiced & (r > CONFIDENT)
        confident_share.append(float(confident.sum() / voiced.sum()))
        errors.append(cents_error(yin_f0(audio, len(f0))[confident.numpy()], f0[confident].numpy()))
        # Unvoiced frames far enough from voicing that their window holds no pulses.
        on = torch.nonzero(voiced).squeeze(1)
        far = (frames[:, None] - on[None]).abs().min(dim=1).values >= 5
        voiced_r.append(r[voiced])
        unvoiced_r.append(r[far])
    errors = np.concatenate(errors)
    assert min(confident_share) > 0.8, confident_share
    assert (errors < CENTS_TOLERANCE).mean() >= 0.95, np.percentile(errors, [50, 90, 99])
    voiced_r, unvoiced_r = torch.cat(voiced_r), torch.cat(unvoiced_r)
    assert len(unvoiced_r) > 50
    assert voiced_r.median() > 0.75 and unvoiced_r.median() < voiced_r.median() - 0.3


def test_excitation_is_band_limited_at_600_hz():
    """600 Hz does not divide 16 kHz, so aliased pulse energy would land between harmonics."""
    rng = np.random.default_rng(0)
    voice = ss.draw_voice(rng) | {
        "jitter": 0.0,
        "shimmer": 0.0,
        "breath": 0.0,
        "tilt_db": 0.0,
        "creak": False,
    }
    n = SAMPLE_RATE
    x = ss.glottal_excitation(torch.full((n,), 600.0), torch.ones(n), rng, voice)
    power = torch.fft.rfft(x * torch.hann_window(n, periodic=False)).abs().pow(2)
    harmonic_bins = torch.arange(600, SAMPLE_RATE // 2, 600)  # 1-Hz bins
    near = (harmonic_bins[:, None] + torch.arange(-3, 4)).flatten()
    assert power[near].sum() / power.sum() > 0.999


def test_unvoiced_excitation_has_no_pulses():
    rng = np.random.default_rng(1)
    n = SAMPLE_RATE
    x = ss.glottal_excitation(torch.full((n,), 120.0), torch.zeros(n), rng)
    r = periodicity(x, torch.arange(10, 90, 10))
    assert r.max() < CONFIDENT


def test_glottal_excitation_rejects_bad_f0():
    with pytest.raises(ValueError, match="fill_unvoiced"):
        ss.glottal_excitation(torch.zeros(100), torch.zeros(100), np.random.default_rng(0))
    with pytest.raises(KeyError, match="draw_voice"):
        ss.glottal_excitation(
            torch.full((100,), 100.0), torch.ones(100), np.random.default_rng(0), {"jitter": 0.0}
        )


def fsdd_speech(n_files: int = 8) -> torch.Tensor:
    import torchaudio

    from audiolab.audio.io import read_audio

    folder = require_shared("fsdd", "recordings")
    paths = sorted(folder.glob("*.wav"))[:: max(1, len(list(folder.glob("*.wav"))) // n_files)][
        :n_files
    ]
    clips = []
    for path in paths:
        audio, rate = read_audio(path)
        clips.append(torchaudio.functional.resample(audio, rate, SAMPLE_RATE))
    return torch.cat(clips)


def test_resynthesize_keeps_labels_and_envelope():
    from audiolab.pitch import predict

    audio = fsdd_speech()
    f0, period = predict(audio, SAMPLE_RATE, model="tiny", decoder="viterbi")
    voiced = period >= 0.5
    assert voiced.sum() > 50
    out = ss.resynthesize(audio, f0, voiced, np.random.default_rng(0))
    again = ss.resynthesize(audio, f0, voiced, np.random.default_rng(0))
    assert torch.equal(out, again) and out.shape == audio.shape
    assert torch.isfinite(out).all() and out.abs().max() <= 1

    r = periodicity(out, torch.arange(len(f0)))
    confident = voiced & (r > CONFIDENT)
    assert confident.sum() > 0.8 * voiced.sum()
    errors = cents_error(yin_f0(out, len(f0))[confident.numpy()], f0[confident].numpy())
    assert (errors < CENTS_TOLERANCE).mean() >= 0.9, np.percentile(errors, [50, 90])

    def frame_db(x):
        return 10 * torch.log10(x.unfold(0, 512, HOP_LENGTH).pow(2).mean(1) + 1e-10)

    correlation = np.corrcoef(frame_db(audio).numpy(), frame_db(out).numpy())[0, 1]
    assert correlation > 0.9
    # 8-kHz recordings: the band above 4 kHz stays (nearly) empty.
    spec = ss._stft(out).abs().pow(2)
    upper = spec[:, int(4500 / (SAMPLE_RATE / ss.N_FFT)) :].sum() / spec.sum()
    assert upper < 0.01


def test_resynthesize_checks_label_length():
    with pytest.raises(ValueError, match="1 \\+ N // 160"):
        ss.resynthesize(
            torch.zeros(1600),
            torch.zeros(5),
            torch.zeros(5, dtype=torch.bool),
            np.random.default_rng(0),
        )


def test_degrade_noise_snr():
    clean = render(5, seconds=5.0)[0]
    for seed in range(8):  # enough draws to meet every noise colour
        for snr in (-5.0, 10.0, 30.0):
            noisy = ss.degrade(
                clean, np.random.default_rng([seed, int(snr) + 10]), noise_snr_db=snr
            )
            noise = noisy - clean
            achieved = 10 * torch.log10(clean.pow(2).mean() / noise.pow(2).mean())
            assert abs(float(achieved) - snr) < 0.5


def test_degrade_reverb_band_gain_clip():
    rng = np.random.default_rng(1)
    clean = render(6)[0]
    wet = ss.degrade(clean, rng, reverb_rt60=0.6)
    assert wet.shape == clean.shape and torch.isfinite(wet).all()
    # The direct path is not delayed: the clip's onset stays where it was.
    assert torch.argmax((wet.abs() > 1e-3 * wet.abs().max()).int()) <= torch.argmax(
        (clean.abs() > 1e-3 * clean.abs().max()).int()
    )

    phone = ss.degrade(clean, rng, band="telephone")
    power = torch.fft.rfft(phone).abs().pow(2)
    freqs = torch.fft.rfftfreq(len(phone), 1 / SAMPLE_RATE)
    assert power[freqs < 300].sum() < 1e-6 * power.sum()
    assert power[freqs > 3400].sum() < 1e-6 * power.sum()

    louder = ss.degrade(clean, rng, gain_db=6.0)
    assert torch.allclose(louder, clean * 10 ** (6 / 20))
    clipped = ss.degrade(clean, rng, clip=0.3)
    assert clipped.abs().max() <= 0.3 * clean.abs().max() + 1e-7
    with pytest.raises(ValueError, match="telephone"):
        ss.degrade(clean, rng, band="radio")


def test_draw_degradation():
    rng = np.random.default_rng(2)
    for _ in range(20):
        recipe = ss.draw_degradation(rng, "eval")
        assert set(recipe) == {"noise_snr_db", "reverb_rt60"}
        assert 0 <= recipe["noise_snr_db"] <= 20 and 0.2 <= recipe["reverb_rt60"] <= 0.8
    clean = render(8, seconds=1.0)[0]
    for _ in range(10):
        out = ss.degrade(clean, rng, **ss.draw_degradation(rng, "train"))
        assert out.shape == clean.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="eval"):
        ss.draw_degradation(rng, "hard")


def test_augment_frames():
    audio = render(9)[0]
    frames = audio.unfold(0, 1024, 400)[:64].contiguous()
    assert torch.equal(ss.augment_frames(frames, np.random.default_rng(0), p=0.0), frames)
    out = ss.augment_frames(frames, np.random.default_rng(0), p=1.0)
    assert out.shape == frames.shape and torch.isfinite(out).all()
    assert torch.equal(out, ss.augment_frames(frames, np.random.default_rng(0), p=1.0))
    changed = (out != frames).any(dim=1).float().mean()
    assert changed > 0.8  # each of 5 augmentations is drawn with 50 %: all skipped 1/32 of the time
    half = ss.augment_frames(frames, np.random.default_rng(1), p=0.5)
    untouched = (half == frames).all(dim=1)
    assert 0 < untouched.sum() < len(frames)
