"""Parity of ``audiolab.metrics.bss_eval.bss_eval_v4`` with museval's BSSEval v4 (images mode,
whole-track filters): every frame of every metric within 0.01 dB, NaN/inf where museval has
them. museval itself is the reference here (on random signals and on real MUSDB18 stems with
estimates of varying quality), plus a stored museval score file for a real MUSDB18 track; the
block Toeplitz solver and the tiled correlations are checked against dense computations."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from scipy import signal

from audiolab.metrics.bss_eval import bss_eval_v4, framing, schur, spectra

museval_metrics = pytest.importorskip("museval.metrics")

SR = 44100
METRICS = ("sdr", "isr", "sir", "sar")
TOL_DB = 0.01


def museval_v4(refs: np.ndarray, ests: np.ndarray, window: float, hop: float) -> dict:
    """The reference: museval's v4 with the settings the SiSEC/MUSDB scores use."""
    sdr, isr, sir, sar, _ = museval_metrics.bss_eval(
        refs, ests, window=window, hop=hop, framewise_filters=False, bsseval_sources_version=False
    )
    return {"sdr": sdr, "isr": isr, "sir": sir, "sar": sar}


def assert_same_scores(ours: dict[str, torch.Tensor], theirs: dict, tol: float = TOL_DB) -> dict:
    """Same shape, NaN and inf at the same places, finite values within ``tol`` dB; returns
    the max |difference| per metric."""
    worst = {}
    for name in METRICS:
        a = ours[name]
        assert a.dtype == torch.float64
        a = a.cpu().numpy()
        b = np.asarray(theirs[name], dtype=np.float64)
        assert a.shape == b.shape, (name, a.shape, b.shape)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{name}: NaN positions")
        np.testing.assert_array_equal(np.isposinf(a), np.isposinf(b), err_msg=f"{name}: +inf")
        np.testing.assert_array_equal(np.isneginf(a), np.isneginf(b), err_msg=f"{name}: -inf")
        finite = np.isfinite(b)
        diff = np.abs(a[finite] - b[finite])
        worst[name] = float(diff.max()) if diff.size else 0.0
        assert worst[name] < tol, f"{name}: max |diff| {worst[name]:.3g} dB\nours {a}\nmuseval {b}"
    return worst


def random_case(case: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """2 stereo sources of 4 s; estimates at several noise levels, or unrelated noise."""
    rng = np.random.default_rng(seed)
    refs = rng.standard_normal((2, 4 * SR, 2))
    noise = rng.standard_normal(refs.shape)
    if case == "random":
        return refs, noise
    levels = {"noisy": [0.01, 1.0], "very_noisy": [3.0, 10.0], "mixed": [0.1, 0.5]}[case]
    ests = refs + noise * np.asarray(levels)[:, None, None]
    if case == "mixed":  # leak some of the other source in, so SIR is finite and moderate
        ests = ests + 0.2 * refs[::-1]
    return refs, ests


def test_degenerate_channels_match_museval() -> None:
    """A left-only source and an exactly mono one (common in real stems) make the Gram matrix
    singular but for museval's eps loading; the scores must still agree."""
    refs, ests = random_case("mixed", seed=5)
    refs[0, :, 1] = 0.0
    refs[1, :, 1] = refs[1, :, 0]
    assert_same_scores(bss_eval_v4(refs, ests), museval_v4(refs, ests, SR, SR))


@pytest.mark.parametrize("case", ["noisy", "very_noisy", "mixed", "random"])
def test_random_signals_match_museval(case: str) -> None:
    refs, ests = random_case(case)
    assert_same_scores(bss_eval_v4(refs, ests), museval_v4(refs, ests, SR, SR))


def test_silent_frames_are_nan_like_museval() -> None:
    refs, ests = random_case("noisy", seed=1)
    refs[0, SR : 2 * SR] = 0.0  # a silent reference frame: NaN for every source there
    ests[1, 3 * SR : 4 * SR, 0] = -ests[1, 3 * SR : 4 * SR, 1]  # channel sum 0: "silent" too
    ours = bss_eval_v4(refs, ests)
    assert_same_scores(ours, museval_v4(refs, ests, SR, SR))
    assert torch.isnan(ours["sdr"][:, 1]).all() and torch.isnan(ours["sar"][:, 3]).all()
    assert torch.isfinite(ours["sdr"][:, [0, 2]]).all()


@pytest.mark.parametrize(
    ("window", "hop", "n_frames"),
    [(2 * SR, 1.5 * SR, 2), (SR // 2, SR // 4, 14), (10 * SR, 10 * SR, 1)],
)
def test_other_framings_match_museval(window: float, hop: float, n_frames: int) -> None:
    """Overlapping frames, a float hop (museval's default 1.5 s), a window longer than the
    track (one whole-track frame); the trailing partial frame is dropped like museval."""
    refs, ests = random_case("mixed", seed=2)
    refs, ests = refs[:, : 4 * SR - 1000], ests[:, : 4 * SR - 1000]
    ours = bss_eval_v4(refs, ests, window=window, hop=hop)
    assert ours["sdr"].shape == (2, n_frames)
    assert_same_scores(ours, museval_v4(refs, ests, window, hop))


def test_single_mono_source_and_torch_input() -> None:
    """One source: SIR is +inf (no interference), as in museval; 2-D input is read like
    ``np.atleast_3d``; torch input gives the same numbers."""
    rng = np.random.default_rng(3)
    refs = rng.standard_normal((1, 3 * SR))
    ests = refs + 0.3 * rng.standard_normal(refs.shape)
    ours = bss_eval_v4(torch.from_numpy(refs).float(), torch.from_numpy(ests).float())
    theirs = museval_v4(
        refs.astype(np.float32).astype(np.float64),
        ests.astype(np.float32).astype(np.float64),
        SR,
        SR,
    )
    assert_same_scores(ours, theirs)
    assert torch.isposinf(ours["sir"]).all()


def test_rejects_bad_input() -> None:
    refs, ests = random_case("noisy")
    with pytest.raises(ValueError, match="shape"):
        bss_eval_v4(refs, ests[:, :-1])
    ests[1] = 0.0
    with pytest.raises(ValueError, match="silent"):
        bss_eval_v4(refs, ests)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    refs, ests = random_case("mixed", seed=4)
    cpu = bss_eval_v4(refs, ests)
    gpu = bss_eval_v4(torch.from_numpy(refs).cuda(), torch.from_numpy(ests).cuda())
    assert gpu["sdr"].is_cuda
    assert_same_scores(gpu, {k: v.numpy() for k, v in cpu.items()}, tol=1e-6)


def test_musdb_track_matches_stored_museval_scores() -> None:
    """The stored museval v4 scores of a real MUSDB18 track with uniform-noise estimates."""
    from helpers import require_shared

    root = require_shared("musdb18-sample")
    musdb = pytest.importorskip("musdb")
    track = next(t for t in musdb.DB(root=str(root), subsets="train") if "80s Rock" in t.name)
    np.random.seed(0)
    noise_vocals = np.random.random(track.audio.shape)
    noise_accompaniment = np.random.random(track.audio.shape)
    refs = np.stack([track.targets["vocals"].audio, track.targets["accompaniment"].audio])
    ests = np.stack([noise_vocals, noise_accompaniment])

    stored = json.loads((root / "Music Delta - 80s Rock.museval.json").read_text())
    by_target = {t["name"]: t["frames"] for t in stored["targets"]}
    theirs = {
        name: np.array(
            [
                [
                    float("nan")
                    if f["metrics"][name.upper()] is None
                    else f["metrics"][name.upper()]
                    for f in by_target[target]
                ]
                for target in ("vocals", "accompaniment")
            ]
        )
        for name in METRICS
    }
    assert theirs["sdr"].shape == (2, 6)  # 1 s frames; the partial last second is dropped
    assert_same_scores(bss_eval_v4(refs, ests), theirs)


@pytest.fixture(scope="module")
def real_stems() -> np.ndarray:
    """The real MUSDB18 preview track's stems ``(4, T, 2)`` (drums, bass, other, vocals):
    AAC-decoded 16-bit audio, with its noise floor, a nearly dual-mono bass and silences."""
    from helpers import require_shared

    root = require_shared("musdb18-sample")
    musdb = pytest.importorskip("musdb")
    track = next(t for t in musdb.DB(root=str(root), subsets="train") if "80s Rock" in t.name)
    return np.stack([track.targets[n].audio for n in ("drums", "bass", "other", "vocals")])


def leaky_estimates(refs: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """A model's estimates at a given quality: each reference plus a filtered (delayed,
    low-passed) leak of the other sources and white noise, both ``snr_db`` below it."""
    rng = np.random.default_rng(seed)
    sos = signal.butter(4, 3000, fs=SR, output="sos")
    ests = np.empty_like(refs)
    for j, ref in enumerate(refs):
        others = refs.sum(axis=0) - ref
        leak = np.roll(signal.sosfilt(sos, others, axis=0), 37, axis=0)
        noise = rng.standard_normal(ref.shape)
        gain = 10 ** (-snr_db / 20) * np.sqrt((ref**2).mean())
        ests[j] = ref + gain * (leak / np.sqrt((leak**2).mean()) + noise)
    return ests


def masked_estimates(refs: np.ndarray, binary: bool) -> np.ndarray:
    """Estimates a simple masking separator would give: STFT masks from the references'
    magnitudes, smoothed over time, applied to the mixture (soft ratio or binary masks)."""
    mix = torch.from_numpy(refs.sum(axis=0).T)  # (C, T)
    window = torch.hann_window(2048, dtype=torch.float64)

    def spec(x: torch.Tensor) -> torch.Tensor:
        return torch.stft(x, 2048, 512, window=window, return_complex=True)

    mags = torch.stack([spec(torch.from_numpy(r.T)).abs() for r in refs])  # (S, C, F, frames)
    mags = torch.nn.functional.avg_pool1d(mags.flatten(0, 2), 5, 1, 2).reshape(mags.shape)
    if binary:
        masks = torch.nn.functional.one_hot(mags.argmax(0), len(refs)).movedim(-1, 0).double()
    else:
        masks = mags / mags.sum(0).clamp_min(1e-12)
    est = torch.istft(
        (masks * spec(mix)).flatten(0, 1), 2048, 512, window=window, length=mix.shape[-1]
    )
    est = est.reshape(*masks.shape[:2], -1)  # (S, C, T)
    return est.permute(0, 2, 1).numpy()


@pytest.mark.parametrize("snr_db", [25.0, 10.0, 0.0, -5.0])
def test_real_stems_with_leaky_estimates_match_museval(real_stems, snr_db: float) -> None:
    """Vocals and accompaniment of a real track (museval's usual MUSDB mode), 3 s, estimates
    from good to bad."""
    stems = real_stems[:, SR : 4 * SR]
    refs = np.stack([stems[3], stems[:3].sum(axis=0)])
    ests = leaky_estimates(refs, snr_db)
    ours = bss_eval_v4(refs, ests)
    assert_same_scores(ours, museval_v4(refs, ests, SR, SR))
    median_sdr = np.median(ours["sdr"].numpy(), axis=1)
    assert (abs(median_sdr - snr_db) < 8).all(), median_sdr  # the quality asked for


@pytest.mark.parametrize("binary", [False, True])
def test_real_stems_with_masking_estimates_match_museval(real_stems, binary: bool) -> None:
    stems = real_stems[:, 2 * SR : 5 * SR]
    refs = np.stack([stems[3], stems[:3].sum(axis=0)])
    ests = masked_estimates(refs, binary)
    assert_same_scores(bss_eval_v4(refs, ests), museval_v4(refs, ests, SR, SR))


@pytest.mark.slow
def test_four_real_stems_match_museval(real_stems) -> None:
    """All four stems (an 8 x 8-channel Gram matrix: museval needs ~15 s for these 2 s)."""
    refs = real_stems[:, 3 * SR : 5 * SR]
    ests = masked_estimates(refs, binary=False)
    assert_same_scores(bss_eval_v4(refs, ests), museval_v4(refs, ests, SR, SR))


def tone_case() -> tuple[np.ndarray, np.ndarray]:
    """2 stereo sources of a few sinusoids each, and estimates with cross-talk and noise."""
    t = np.arange(2 * SR) / SR

    def tones(*freqs: float) -> np.ndarray:
        return sum(np.sin(2 * np.pi * f * t + f) for f in freqs)

    refs = np.stack(
        [np.stack([tones(110, 220), tones(110, 330)], 1), np.stack([tones(440, 660)] * 2, 1)]
    )
    return refs, refs + 0.3 * refs[::-1] + 0.01 * np.random.default_rng(0).standard_normal(
        refs.shape
    )


def test_ill_conditioned_references_get_a_stable_projection() -> None:
    """References without a noise floor (a few sinusoids each: the delayed copies span a
    handful of dimensions) make museval's solve return rounding noise. audiolab warns, keeps
    SDR exactly (it needs no projection), and gives ISR/SIR/SAR that a one-ulp change of the
    references does not move."""
    refs, ests = tone_case()
    with pytest.warns(RuntimeWarning, match="singular to working precision"):
        ours = bss_eval_v4(refs, ests)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        nudged = bss_eval_v4(np.nextafter(refs, np.inf), ests)
    for name in METRICS:
        assert torch.isfinite(ours[name]).all()
        assert (ours[name] - nudged[name]).abs().max() < TOL_DB, name
    theirs = museval_v4(refs, ests, SR, SR)
    np.testing.assert_allclose(ours["sdr"].numpy(), theirs["sdr"], atol=1e-9)


@pytest.mark.parametrize(
    ("n_lag", "lags_per_block"), [(24, None), (24, 1), (24, 2), (24, 3), (23, None)]
)
def test_block_toeplitz_cholesky_matches_dense(n_lag: int, lags_per_block: int | None) -> None:
    """The Schur recursion's factor of a block Toeplitz Gram matrix (from real-looking
    correlated, coloured signals) against the dense Cholesky factor, with lags grouped into
    blocks (by default, 8 for 24 lags of 3 channels; 23 lags run one lag a step)."""
    gen = torch.Generator().manual_seed(0)
    p = 3
    x = torch.randn(p, 4000, generator=gen, dtype=torch.float64)
    x = torch.cumsum(x, dim=1) * 0.1 + x  # coloured
    x[1] += 0.8 * x[0]  # correlated channels
    gamma = torch.stack(
        [x[:, k:] @ x[:, : x.shape[1] - k].T for k in range(n_lag)]
    )  # gamma[k][i, j] = <x_i advanced by k, x_j>
    dense = torch.empty(n_lag, p, n_lag, p, dtype=torch.float64)
    for a in range(n_lag):
        for b in range(n_lag):
            dense[a, :, b] = gamma[b - a] if b >= a else gamma[a - b].T
    dense = dense.reshape(n_lag * p, n_lag * p)
    chol, ok = schur.block_toeplitz_cholesky(
        torch.stack([gamma, gamma * 0.5]), lags_per_block=lags_per_block
    )
    assert ok.all()
    expected = torch.linalg.cholesky(dense, upper=True)
    for factor, scale in zip(chol, (1.0, 0.5), strict=True):
        factor = torch.triu(factor)
        # unique up to the signs of its rows
        factor = factor * torch.sign(torch.diagonal(factor))[:, None]
        torch.testing.assert_close(factor, expected * scale**0.5, rtol=1e-9, atol=1e-9)
    not_pd = gamma.clone()
    not_pd[0] -= 2 * torch.linalg.eigvalsh(dense)[-1] * torch.eye(p, dtype=torch.float64)
    assert not schur.block_toeplitz_cholesky(not_pd[None])[1].any()


@pytest.mark.parametrize("fft_elems", [None, 1])
@pytest.mark.parametrize(("window", "n_samples"), [(SR, 2 * SR + 700), (2000, 9000)])
def test_tiled_correlations_match_direct(
    monkeypatch, window: int, n_samples: int, fft_elems
) -> None:
    """Per-tile spectra plus the boundary correction give the whole-signal correlations at
    lags -lag..lag (tiles as long as a frame, a trailing partial tile, short tiles), with
    the default FFT batches and with one frame, boundary or column per FFT."""
    if fft_elems is not None:
        monkeypatch.setattr(spectra, "FFT_ELEMS", fft_elems)
    rng = np.random.default_rng(1)
    refs = torch.from_numpy(rng.standard_normal((2, n_samples, 2)))
    ests = torch.from_numpy(rng.standard_normal((2, n_samples, 2)))
    lag = 300
    signals = [refs.transpose(1, 2), ests.transpose(1, 2)]
    tiles = list(range(0, n_samples, window))
    n_fft = framing.next_fast_len(window + lag)
    spec = spectra.frame_spectra(signals, tiles, window, n_fft)
    acc = spectra.cross_spectra(spec, 4)
    torch.testing.assert_close(acc, spec[..., :4].mH @ spec)
    r = torch.fft.irfft(acc.conj(), n=n_fft, dim=0)
    r = torch.cat([r[n_fft - lag :], r[: lag + 1]])
    torch.testing.assert_close(spectra.lags(acc, n_fft, lag), r)
    r += spectra.boundary_correlations(signals, 4, tiles[1:], lag)
    y = torch.cat([s.reshape(4, -1) for s in signals]).numpy()
    for i in (0, 3):
        # r[m] = sum_n y_i[n + m] y_j[n]: row m of the shifted copies of y_i, dotted with y_j
        shifted = np.lib.stride_tricks.sliding_window_view(np.pad(y[i], lag), n_samples)
        for j in (0, 5):
            np.testing.assert_allclose(r[:, i, j].numpy(), shifted @ y[j], rtol=1e-9, atol=1e-8)


def test_tiling_holds_frame_spectra_only_where_the_frames_tile_the_track(monkeypatch) -> None:
    """The frames' own spectra serve the correlations only where the frames tile the track
    (hop == window) and all fit at once; overlapping frames as long as the correlation tile
    get tiles of their own."""
    n = 10 * SR
    starts, width = framing.frame_starts(n, SR, SR)
    n_fft = framing.next_fast_len(width + 511)
    tiling = spectra.tiling(n, starts, width, n_fft, 511, 4)
    assert tiling.held and tiling.starts == starts and tiling.length == width
    tile = spectra.CORR_TILE
    starts, width = framing.frame_starts(n, tile, tile // 2)
    tiling = spectra.tiling(n, starts, width, framing.next_fast_len(width + 511), 511, 4)
    assert not tiling.held and tiling.length == tile
    monkeypatch.setattr(spectra, "MAX_SPEC_ELEMS", 3 * 8 * (n_fft // 2 + 1))
    starts, width = framing.frame_starts(n, SR, SR)
    tiling = spectra.tiling(n, starts, width, n_fft, 511, 4)
    assert not tiling.held and tiling.per_group == 3


def test_chunked_long_track_path_gives_the_same_scores(monkeypatch) -> None:
    """Spectra taken group by group, twice (what long tracks do to bound memory), and small
    FFT batches and chunks give the same numbers as one pass."""
    refs, ests = random_case("mixed", seed=6)
    whole = bss_eval_v4(refs, ests)
    # 3 frames a group (2 sources of 2 channels: 8 spectra a frame, 22401 bins)
    monkeypatch.setattr(spectra, "MAX_SPEC_ELEMS", 3 * 8 * 22401)
    monkeypatch.setattr(spectra, "FFT_ELEMS", 16 * 22501)
    monkeypatch.setattr(spectra, "CHUNK_ELEMS", 1000)
    chunked = bss_eval_v4(refs, ests)
    for name in METRICS:
        torch.testing.assert_close(chunked[name], whole[name], rtol=0, atol=1e-9)


def test_threads_setting_is_restored() -> None:
    refs, ests = random_case("noisy")
    before = torch.get_num_threads()
    bss_eval_v4(refs[:, :SR], ests[:, :SR], num_threads=1)
    assert torch.get_num_threads() == before


def test_two_threads_give_the_same_scores(monkeypatch) -> None:
    """On 2 threads: the same numbers as on one, torch's thread setting restored, the ridge
    warning raised to the caller, and the ridge error too."""
    refs, ests = random_case("mixed", seed=3)
    before = torch.get_num_threads()
    one = bss_eval_v4(refs, ests, num_threads=1)
    two = bss_eval_v4(refs, ests, num_threads=2)
    assert torch.get_num_threads() == before
    for name in METRICS:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-9)
    refs, ests = tone_case()
    with pytest.warns(RuntimeWarning, match="singular to working precision"):
        bss_eval_v4(refs, ests, num_threads=2)
    monkeypatch.setattr(schur, "RIDGES", (1e-30,))
    with pytest.raises(ValueError, match="stays singular"):
        bss_eval_v4(refs, ests, num_threads=2)
    assert torch.get_num_threads() == before
