"""museval vs audiolab's BSSEval v4 on the same inputs, one run:

    .venv/bin/python scripts/bench_bsseval.py [--seconds 60] [--sources 4] [--device cpu|cuda]

Both score the same estimates of the same references (a synthetic track from the
built-in generator, estimates = references plus noise and cross-talk of varying
strength) with BSSEval v4 (images mode, whole-track filters, 1-s frames). Prints the
seconds of each, the ratio, and the largest |difference| per metric (NaN positions
must match).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from audiolab.data.synth_musdb import SOURCES, render_track
from audiolab.metrics.bss_eval import bss_eval_v4


def make_case(seconds: float, n_sources: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """References ``(S, T, 2)`` from a synthetic track and estimates of graded quality."""
    stems = render_track(seed=seed, duration=seconds, sample_rate=44100)
    refs = np.stack([stems[name].T for name in SOURCES[:n_sources]]).astype(np.float64)
    rng = np.random.default_rng(seed)
    mix = refs.sum(0)
    ests = np.empty_like(refs)
    for i in range(n_sources):
        leak = 0.05 * (i + 1)  # more cross-talk for later sources
        noise = rng.standard_normal(refs[i].shape) * 0.01 * (i + 1)
        ests[i] = (1 - leak) * refs[i] + leak * mix + noise
    return refs, ests


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--sources", type=int, default=4, choices=range(1, 5))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import museval

    refs, ests = make_case(args.seconds, args.sources)
    print(
        f"{args.sources} sources, stereo, {args.seconds:g} s at 44.1 kHz; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )

    start = time.perf_counter()
    sdr, isr, sir, sar, _ = museval.metrics.bss_eval(
        refs, ests, window=44100, hop=44100, framewise_filters=False, bsseval_sources_version=False
    )
    t_museval = time.perf_counter() - start

    device = torch.device(args.device)
    refs_t, ests_t = torch.from_numpy(refs).to(device), torch.from_numpy(ests).to(device)
    bss_eval_v4(refs_t[:, :44100], ests_t[:, :44100])  # warm-up (kernels, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    ours = bss_eval_v4(refs_t, ests_t)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_ours = time.perf_counter() - start

    print("| | museval | audiolab | ratio |")
    print("|---|---:|---:|---:|")
    print(
        f"| seconds ({args.device}) | {t_museval:.2f} | {t_ours:.3f} | {t_museval / t_ours:.1f}x |"
    )
    for name, theirs in (("sdr", sdr), ("isr", isr), ("sir", sir), ("sar", sar)):
        mine = ours[name].cpu().numpy()
        same_nan = np.array_equal(np.isnan(mine), np.isnan(theirs))
        finite = np.isfinite(mine) & np.isfinite(theirs)
        diff = np.abs(mine[finite] - theirs[finite]).max() if finite.any() else float("nan")
        print(
            f"| max abs diff {name.upper()} (dB) | | {diff:.2e} | NaN positions {'equal' if same_nan else 'DIFFER'} |"
        )
    print(f"median SDR per source (museval): {np.round(np.nanmedian(sdr, axis=1), 2).tolist()}")


if __name__ == "__main__":
    main()
