"""RPA / RCA against mir_eval.melody; decoders on known activations."""

from __future__ import annotations

import mir_eval
import numpy as np
import pytest
import torch

from audiolab.metrics.pitch import RawChromaAccuracy, RawPitchAccuracy
from audiolab.pitch.cents import bin_cents, cents_to_hz, gaussian_targets, hz_to_cents
from audiolab.pitch.decode import argmax, decode, weighted_argmax


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
