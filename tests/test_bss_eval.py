"""Parity of ``audiolab.metrics.bss_eval.bss_eval_v4`` with museval's BSSEval v4 (images mode,
whole-track filters): every frame of every metric within 0.01 dB, NaN/inf where museval has
them. museval itself is the reference here, plus a stored museval score file for a real
MUSDB18 track."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from audiolab.metrics.bss_eval import bss_eval_v4

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
