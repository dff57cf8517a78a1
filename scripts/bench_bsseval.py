"""museval vs audiolab's BSSEval v4 on the same inputs, one run:

    .venv/bin/python scripts/bench_bsseval.py [--seconds 60] [--sources 4] [--device cpu|cuda]
        [--threads 1] [--repeats 5] [--no-policy-rows] [--float-stems] [--museval-ulp] [--profile]

Both score the same estimates of the same references (a synthetic track from the built-in
generator, estimates = references plus noise and cross-talk of varying strength) with
BSSEval v4 (images mode, whole-track filters, 1-s frames). Prints the seconds of each, the
ratio, and the largest |difference| per metric (NaN positions must match).

Threads: museval runs with its numpy/scipy BLAS on its default thread count (printed).
audiolab runs on one torch thread (its default, meant for one track per process), and also
on ``--threads`` where that is not 1; each time is the best of ``--repeats`` calls (their
median is printed too), as calls on a shared VM swing from run to run. The load average
is printed before and after.

First call: one call in a fresh Python process (torch and audiolab imported, the track
loaded, then one call timed): what scoring a single track costs, as a one-track eval.py
does, where every large buffer is mapped and faulted in for the first time.

Memory: the last rows switch this process to ``audiolab.utils.memory.keep_freed_memory``
(what the museval callback's worker processes run with: later calls reuse the pages of
earlier ones) and time audiolab again, then museval again under the same policy
(``--no-policy-rows`` skips them).

The references are quantised to 16 bits, as the synthetic dataset stores them (and as every
real stem is); ``--float-stems`` keeps the raw float renders, whose band-limited sources
without a noise floor make the Gram matrix singular to working precision: there museval's
ISR/SIR/SAR are rounding noise, which ``--museval-ulp`` shows by running museval again on
references changed by one ulp. ``--profile`` adds where audiolab's time goes, by stage.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from audiolab.data.synth_musdb import SOURCES, render_track
from audiolab.metrics.bss_eval import bss_eval_v4
from audiolab.utils.memory import keep_freed_memory

METRICS = ("sdr", "isr", "sir", "sar")


def make_case(
    seconds: float, n_sources: int, seed: int = 0, quantise: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """References ``(S, T, 2)`` from a synthetic track and estimates of graded quality."""
    stems = render_track(seed=seed, duration=seconds, sample_rate=44100)
    refs = np.stack([stems[name].T for name in SOURCES[:n_sources]]).astype(np.float64)
    if quantise:
        refs = np.round(refs * 32767) / 32767
    rng = np.random.default_rng(seed)
    mix = refs.sum(0)
    ests = np.empty_like(refs)
    for i in range(n_sources):
        leak = 0.05 * (i + 1)  # more cross-talk for later sources
        noise = rng.standard_normal(refs[i].shape) * 0.01 * (i + 1)
        ests[i] = (1 - leak) * refs[i] + leak * mix + noise
    return refs, ests


def blas_threads() -> str:
    """numpy/scipy's BLAS thread counts (threadpoolctl, where installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    found = {
        f"{i['internal_api']} {i['num_threads']}"
        for i in threadpool_info()
        if i["user_api"] == "blas"
    }
    return ", ".join(sorted(found)) or "none found"


def museval_scores(refs: np.ndarray, ests: np.ndarray) -> dict[str, np.ndarray]:
    import museval

    scores = museval.metrics.bss_eval(
        refs, ests, window=44100, hop=44100, framewise_filters=False, bsseval_sources_version=False
    )
    return dict(zip(METRICS, scores[:4], strict=True))


def largest_difference(a: dict, b: dict) -> dict[str, tuple[float, bool]]:
    """Per metric: max |a - b| where both are finite, and whether NaNs sit at the same places."""
    out = {}
    for name in METRICS:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        finite = np.isfinite(x) & np.isfinite(y)
        diff = float(np.abs(x - y)[finite].max()) if finite.any() else float("nan")
        out[name] = (diff, bool(np.array_equal(np.isnan(x), np.isnan(y))))
    return out


FIRST_CALL = """
import sys, time
import numpy as np
import torch

refs, ests = (torch.from_numpy(np.load(f)) for f in sys.argv[1:3])
from audiolab.metrics.bss_eval import bss_eval_v4

start = time.perf_counter()
bss_eval_v4(refs, ests, num_threads=1)
print(time.perf_counter() - start)
"""


def first_call(refs: np.ndarray, ests: np.ndarray) -> float:
    """Seconds of one audiolab call (one thread) in a fresh Python process."""
    with tempfile.TemporaryDirectory() as tmp:
        files = [str(Path(tmp) / f"{name}.npy") for name in ("refs", "ests")]
        for f, x in zip(files, (refs, ests), strict=True):
            np.save(f, x)
        cmd = [sys.executable, "-c", FIRST_CALL, *files]
        run = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(run.stdout.split()[-1])


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def profile_stages(refs: torch.Tensor, ests: torch.Tensor) -> None:
    """Seconds per stage of one audiolab call (torch profiler, the bss_eval.* labels)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        bss_eval_v4(refs, ests)
        total = time.perf_counter() - start
    stages = {
        e.key: e.cpu_time_total / 1e6 for e in prof.key_averages() if e.key.startswith("bss_eval.")
    }
    print(f"\naudiolab stages (one call, {total:.2f} s under the profiler):")
    print("| stage | seconds | share |")
    print("|---|---:|---:|")
    for key, seconds in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"| {key.removeprefix('bss_eval.')} | {seconds:.3f} | {seconds / total:.0%} |")
    rest = total - sum(stages.values())
    print(f"| other (input checks, framing, glue) | {rest:.3f} | {rest / total:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--sources", type=int, default=4, choices=range(1, 5))
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="audiolab's second timing, torch threads"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="audiolab calls per timing (best kept)"
    )
    parser.add_argument(
        "--no-policy-rows", action="store_true", help="skip the keep_freed_memory rows"
    )
    parser.add_argument("--float-stems", action="store_true", help="do not quantise to 16 bits")
    parser.add_argument("--museval-ulp", action="store_true", help="museval again, refs + 1 ulp")
    parser.add_argument("--profile", action="store_true", help="audiolab's time by stage")
    args = parser.parse_args()

    refs, ests = make_case(args.seconds, args.sources, quantise=not args.float_stems)
    print(
        f"{args.sources} sources, stereo, {args.seconds:g} s at 44.1 kHz, "
        f"{'float' if args.float_stems else '16-bit'} references; torch {torch.__version__}; "
        f"{os.cpu_count()} CPUs, load average {load()}"
    )

    start = time.perf_counter()
    theirs = museval_scores(refs, ests)
    t_museval = time.perf_counter() - start

    device = torch.device(args.device)
    refs_t, ests_t = torch.from_numpy(refs).to(device), torch.from_numpy(ests).to(device)

    def timed(threads: int) -> tuple[tuple[float, float], dict]:
        """(best, median) seconds of ``--repeats`` calls, and the scores."""
        seconds, out = [], None
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = bss_eval_v4(refs_t, ests_t, num_threads=threads)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        return (min(seconds), float(np.median(seconds))), out

    def label(threads: int) -> str:
        return f"audiolab on {threads} thread{'s' * (threads > 1)}"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cpu":
            once = first_call(refs, ests)
        bss_eval_v4(refs_t[:, :44100], ests_t[:, :44100])  # warm-up (kernels, allocator)
        timings = [(1, *timed(1))]
        if args.threads != 1:
            timings.append((args.threads, *timed(args.threads)))
        rows = [(label(threads), t_museval, seconds) for threads, seconds, _ in timings]
        if device.type == "cpu":
            rows.append((f"{label(1)}, first call in a fresh process", t_museval, (once, once)))
        if device.type == "cpu" and not args.no_policy_rows:
            if keep_freed_memory():
                seconds = timed(1)[0]
                start = time.perf_counter()
                museval_scores(refs, ests)
                t_policy = time.perf_counter() - start
                rows.append((f"both keeping freed memory, {label(1)}", t_policy, seconds))
            else:
                print("keep_freed_memory is not available here (needs Linux with glibc)")
    for warning in {str(w.message) for w in caught}:
        print(f"audiolab warned: {warning}")
    ours = {k: v.cpu().numpy() for k, v in timings[0][2].items()}

    print(f"museval's BLAS threads: {blas_threads()}; load average after: {load()}")
    print(
        f"| seconds | museval | audiolab, best of {args.repeats} | ratio | audiolab, median | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, theirs_s, (best, median) in rows:
        print(
            f"| {args.device}, {name} | {theirs_s:.2f} | {best:.3f} | {theirs_s / best:.1f}x "
            f"| {median:.3f} | {theirs_s / median:.1f}x |"
        )
    for name, (diff, same_nan) in largest_difference(ours, theirs).items():
        nan = "NaN positions equal" if same_nan else "NaN positions DIFFER"
        print(f"| max abs diff {name.upper()} (dB) | | {diff:.2e} | {nan} | | |")
    print(
        f"median SDR per source (museval): {np.round(np.nanmedian(theirs['sdr'], axis=1), 2).tolist()}"
    )

    if args.museval_ulp:
        again = museval_scores(np.nextafter(refs, np.inf), ests)
        print("\nmuseval on references changed by one ulp, vs museval:")
        for name, (diff, _) in largest_difference(again, theirs).items():
            print(f"  max abs diff {name.upper()}: {diff:.2e} dB")
    if args.profile:
        profile_stages(refs_t, ests_t)


if __name__ == "__main__":
    main()
