"""Melody metrics (RPA, RCA, voicing recall / false alarm, overall accuracy) and the
resampling onto reference time bases against mir_eval.melody, on random and real contours
and across DDP ranks; decoders on known activations."""

from __future__ import annotations

import warnings

import mir_eval
import numpy as np
import pytest
import torch
from helpers import require_shared

from audiolab.audio.pitch_grid import bin_cents, cents_to_hz, gaussian_targets, hz_to_cents
from audiolab.data.pitch_eval import read_f0_csv
from audiolab.metrics.pitch import (
    MELODY_METRICS,
    RawChromaAccuracy,
    RawPitchAccuracy,
    VoicingRecall,
    melody_metrics,
    resample_estimate,
)
from audiolab.pitch.decode import argmax, decode, weighted_argmax

# mir_eval.melody.evaluate's names for our metrics
MIR_EVAL_NAMES = {
    "rpa": "Raw Pitch Accuracy",
    "rca": "Raw Chroma Accuracy",
    "voicing_recall": "Voicing Recall",
    "voicing_false_alarm": "Voicing False Alarm",
    "overall_accuracy": "Overall Accuracy",
}
MDB = ("pitch", "mdb-stem-synth-excerpt")
MDB_NAME = "AClassicEducation_NightOwl_STEM_08.RESYN"


def random_case(seed: int):
    """A reference on a 0-based time base and an estimate on another (different hop, later
    start, shorter or longer, missing frames, octave errors), or on the same time base."""
    rng = np.random.default_rng(seed)
    m = int(rng.integers(50, 400))
    ref_hop = rng.choice([128 / 44100, 0.01, 0.0058])
    ref_t = np.arange(m) * ref_hop
    ref = 440 * 2 ** (np.cumsum(rng.normal(0, 30, m)) / 1200)
    ref[rng.random(m) < 0.25] = 0.0
    if seed % 5 == 0:  # the same time base (to numpy.allclose's tolerance): no resampling
        est_t = ref_t * (1 + 4e-6) if seed % 10 == 0 else ref_t.copy()
    else:
        est_hop = rng.choice([0.01, 128 / 44100, 0.032])
        start = rng.choice([0.0, 0.013, 0.032])
        est_t = start + np.arange(int(rng.integers(5, int(m * ref_hop / est_hop) + 10))) * est_hop
    n = len(est_t)
    # the reference's pitch (or a neighbour's where it is unvoiced), with octave and
    # fifth errors and noise near the 50-cent edge
    base = np.interp(est_t, ref_t, np.where(ref > 0, ref, 300.0))
    est = base * 2 ** ((rng.choice([0, 0, 1200, -700], n) + rng.normal(0, 30, n)) / 1200)
    est[rng.random(n) < 0.1] = 0.0  # missing estimates
    voiced = rng.random(n) < 0.7
    return ref_t, ref, est_t, est, voiced


def est_cents_of(est_hz: np.ndarray) -> torch.Tensor:
    """Hz -> cents with NaN for a missing (0 Hz) estimate."""
    hz = torch.from_numpy(est_hz)
    return torch.where(hz > 0, hz_to_cents(hz.clamp_min(1e-12)), torch.nan)


def ours(ref_t, ref, est_t, est, voiced) -> dict[str, float]:
    cents, v = resample_estimate(
        torch.from_numpy(est_t), est_cents_of(est), torch.from_numpy(voiced), torch.from_numpy(ref_t)
    )
    metrics = melody_metrics()
    ref_hz = torch.from_numpy(ref)
    metrics.update(cents, ref_hz, ref_hz > 0, est_voiced=v)
    return {k: float(v) for k, v in metrics.compute().items()}


def theirs(ref_t, ref, est_t, est, voiced) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mir_eval warns about non-uniform time bases
        scores = mir_eval.melody.evaluate(ref_t, ref, est_t, est.copy(), est_voicing=voiced.astype(float))
    return {ours_name: scores[name] for ours_name, name in MIR_EVAL_NAMES.items()}


def test_resampling_onto_the_reference_matches_mir_eval():
    for seed in range(60):
        ref_t, ref, est_t, est, voiced = random_case(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, _, want_v, want_c = mir_eval.melody.to_cent_voicing(
                ref_t, ref, est_t, est.copy(), voiced.astype(float)
            )
        cents, v = resample_estimate(
            torch.from_numpy(est_t), est_cents_of(est), torch.from_numpy(voiced), torch.from_numpy(ref_t)
        )
        assert cents.shape == v.shape == ref_t.shape
        assert np.array_equal(v.numpy(), want_v > 0), seed
        # mir_eval's 0 cents is our NaN (no estimate)
        assert np.array_equal(torch.isnan(cents).numpy(), want_c == 0), seed
        assert np.allclose(torch.nan_to_num(cents).numpy(), want_c, atol=1e-6, rtol=0), seed


@pytest.mark.parametrize("seed", range(40))
def test_all_metrics_match_mir_eval_on_random_contours(seed):
    case = random_case(seed)
    got, want = ours(*case), theirs(*case)
    for name in MIR_EVAL_NAMES:
        assert got[name] == pytest.approx(want[name], abs=1e-6), name


def test_resampling_is_batched_with_padding():
    cases = [random_case(seed) for seed in (1, 2, 3)]
    n = max(len(c[2]) for c in cases)
    m = max(len(c[0]) for c in cases)
    est_t = torch.full((3, n), torch.inf, dtype=torch.float64)
    est_c = torch.full((3, n), torch.nan, dtype=torch.float64)
    est_v = torch.zeros(3, n, dtype=torch.bool)
    ref_t = torch.full((3, m), torch.nan, dtype=torch.float64)
    for i, (rt, _, et, e, v) in enumerate(cases):
        est_t[i, : len(et)], est_c[i, : len(et)], est_v[i, : len(et)] = torch.from_numpy(et), est_cents_of(e), torch.from_numpy(v)
        ref_t[i, : len(rt)] = torch.from_numpy(rt)
    cents, voiced = resample_estimate(est_t, est_c, est_v, ref_t)
    for i, (rt, _, et, e, v) in enumerate(cases):
        one_c, one_v = resample_estimate(torch.from_numpy(et), est_cents_of(e), torch.from_numpy(v), torch.from_numpy(rt))
        k = len(rt)
        assert torch.equal(voiced[i, :k], one_v) and not voiced[i, k:].any()
        assert torch.allclose(cents[i, :k], one_c, equal_nan=True) and torch.isnan(cents[i, k:]).all()


def mdb_reference():
    root = require_shared(*MDB)
    return read_f0_csv(root / f"{MDB_NAME}.csv"), root / f"{MDB_NAME}.wav"


@pytest.mark.parametrize("decoder", ["weighted_argmax", "viterbi"])
def test_all_metrics_match_mir_eval_on_a_real_contour(decoder):
    """The MDB-stem-synth reference (2.9 ms hop) against pretrained CREPE tiny's estimate
    (10 ms hop, voiced where periodicity >= 0.5)."""
    import audiolab.pitch as pitch
    from audiolab.audio.io import read_audio

    (ref_t, ref), wav = mdb_reference()
    audio, rate = read_audio(wav)
    f0, period = pitch.predict(audio, rate, decoder=decoder)
    est_t = np.arange(len(f0)) * 0.01
    case = (ref_t.numpy(), ref.numpy(), est_t, f0.double().numpy(), (period >= 0.5).numpy())
    got, want = ours(*case), theirs(*case)
    for name in MIR_EVAL_NAMES:
        assert got[name] == pytest.approx(want[name], abs=1e-6), name
    assert got["rpa"] > 0.9  # a real pitch tracker on a clean resynthesised voice
    # the other way round too: the reference as an "estimate" of itself on our frames
    cents = torch.where(ref > 0, hz_to_cents(ref.clamp_min(1e-12)), torch.nan)
    _, v = resample_estimate(ref_t, cents, ref > 0, torch.from_numpy(est_t))
    assert v.double().mean().item() == pytest.approx((ref > 0).double().mean().item(), abs=0.02)


def test_metric_collection_keeps_metrics_apart():
    """After a first batch where RPA and RCA agree, torchmetrics' compute groups would merge
    them (same state names); melody_metrics turns that off."""
    ref = torch.full((100,), 220.0)
    est = hz_to_cents(torch.full((100,), 220.0))
    voiced = torch.ones(100, dtype=torch.bool)
    metrics = melody_metrics()
    metrics.update(est, ref, voiced, est_voiced=voiced)  # all right: RPA = RCA = 1
    metrics.update(est + 1200.0, ref, voiced, est_voiced=voiced)  # octave errors
    out = metrics.compute()
    assert out["rpa"] == pytest.approx(0.5) and out["rca"] == pytest.approx(1.0)
    assert set(out) == set(MELODY_METRICS)


def test_voicing_metrics_need_the_estimated_voicing():
    with pytest.raises(ValueError, match="needs the estimated voicing: pass est_voiced"):
        VoicingRecall().update(torch.zeros(3), torch.ones(3), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least 0 s"):
        resample_estimate(torch.zeros(2), torch.zeros(2), torch.ones(2, dtype=torch.bool), torch.tensor([-0.1]))


@pytest.mark.slow
def test_metrics_reduce_across_ddp_ranks(tmp_path):
    """Two gloo processes with different clips: both ranks report the metrics of all clips,
    frame-weighted, as mir_eval gives them on the concatenated frames."""
    import socket

    import torch.multiprocessing as mp
    from ddp_metrics_worker import update_and_compute

    cases = [random_case(seed) for seed in (11, 12, 13, 14, 15)]
    clips = [
        (torch.from_numpy(et), est_cents_of(e), torch.from_numpy(v), torch.from_numpy(rt), torch.from_numpy(r))
        for rt, r, et, e, v in cases
    ]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(update_and_compute, args=(2, port, [clips[:2], clips[2:]], str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]

    concatenated = [[], [], [], []]
    for ref_t, ref, est_t, est, voiced in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arrays = mir_eval.melody.to_cent_voicing(ref_t, ref, est_t, est.copy(), voiced.astype(float))
        for whole, part in zip(concatenated, arrays, strict=True):
            whole.append(part)
    ref_v, ref_c, est_v, est_c = (np.concatenate(a) for a in concatenated)
    want = {
        "rpa": mir_eval.melody.raw_pitch_accuracy(ref_v, ref_c, est_v, est_c),
        "rca": mir_eval.melody.raw_chroma_accuracy(ref_v, ref_c, est_v, est_c),
        "voicing_recall": mir_eval.melody.voicing_recall(ref_v, est_v),
        "voicing_false_alarm": mir_eval.melody.voicing_false_alarm(ref_v, est_v),
        "overall_accuracy": mir_eval.melody.overall_accuracy(ref_v, ref_c, est_v, est_c),
    }
    for rank in (0, 1):
        for name, value in want.items():
            assert results[rank][name] == pytest.approx(value, abs=1e-6), (rank, name)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rpa_rca_match_mir_eval(seed):
    rng = np.random.default_rng(seed)
    n = 2000
    ref = 10 ** rng.uniform(np.log10(40), np.log10(1500), n)
    ref[rng.random(n) < 0.2] = 0.0  # unvoiced reference frames
    # estimates: some exact-ish, some off by octaves, some far off, some near the 50-cent edge
    err = rng.choice([0.0, 1200.0, -2400.0, 700.0], n) + rng.normal(0, 40, n)
    est = ref * 2 ** (err / 1200)
    est[ref == 0] = 220.0
    ref_v, ref_c, est_v, est_c = mir_eval.melody.to_cent_voicing(
        np.arange(n) * 0.01, ref, np.arange(n) * 0.01, est
    )
    want_rpa = mir_eval.melody.raw_pitch_accuracy(ref_v, ref_c, est_v, est_c)
    want_rca = mir_eval.melody.raw_chroma_accuracy(ref_v, ref_c, est_v, est_c)

    est_cents = hz_to_cents(torch.from_numpy(est))
    ref_t = torch.from_numpy(ref)
    voiced = ref_t > 0
    rpa, rca = RawPitchAccuracy(), RawChromaAccuracy()
    # two updates: accumulation across batches
    for part in (slice(0, 700), slice(700, n)):
        rpa.update(est_cents[part], ref_t[part], voiced[part])
        rca.update(est_cents[part], ref_t[part], voiced[part])
    assert rpa.compute().item() == pytest.approx(want_rpa, abs=1e-6)
    assert rca.compute().item() == pytest.approx(want_rca, abs=1e-6)


def test_weighted_argmax_recovers_off_grid_pitch():
    true_cents = torch.tensor([2500.0, 5003.3, 7777.7, 9000.0])
    act = gaussian_targets(cents_to_hz(true_cents), torch.ones(4, dtype=torch.bool), blur_cents=25.0)
    assert (weighted_argmax(act) - true_cents).abs().max() < 1.0
    # argmax is only good to half a bin
    assert (argmax(act) - true_cents).abs().max() <= 10.0 + 1e-3


def test_weighted_argmax_at_the_grid_edges_and_on_zeros():
    grid = bin_cents()
    act = torch.zeros(3, 360)
    act[0, 0] = 1.0
    act[1, 359] = 1.0
    assert torch.allclose(weighted_argmax(act)[:2], grid[[0, 359]])
    assert weighted_argmax(act)[2] == grid[0]  # no information: argmax of zeros
    with pytest.raises(ValueError, match="unknown pitch decoder 'viterbo'"):
        decode(act, "viterbo")


def test_cents_round_trip():
    f = torch.tensor([32.70, 440.0, 1975.5], dtype=torch.float64)
    assert torch.allclose(cents_to_hz(hz_to_cents(f)), f)
    # CREPE's grid starts at 1997.3794 cents above 10 Hz, which is 31.70 Hz, and steps 20 cents
    grid_hz = cents_to_hz(bin_cents(dtype=torch.float64))
    assert grid_hz[0].item() == pytest.approx(31.70, abs=0.01)
    assert grid_hz[-1].item() == pytest.approx(2005.5, abs=0.5)
