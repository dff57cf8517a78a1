"""Pitch tracking: audiolab against librosa and torchcrepe. One run, one table.

1. Viterbi decoding of one minute of frames (6000 frames of 10 ms x 360 bins): our
   batched torch decoder against ``librosa.sequence.viterbi``, same observation
   probabilities (pretrained CREPE tiny's normalised activations on one minute of the
   benchmark audio) and CREPE transition matrix; wall time of each, ratio, and how many
   frames of the two paths agree. They differ only where librosa's path takes a
   transition that the matrix gives probability zero (librosa adds the smallest float to
   the matrix, so such a jump costs about -87 nats instead of being impossible); those
   jumps are counted.
2. The whole pipeline (framing, network, decoding), pretrained weights on both sides
   and the same decoder: CPU seconds (all threads) per second of audio for CREPE tiny and
   full, and the median difference of the two f0 tracks in cents (all frames, and the
   frames our periodicity calls voiced). torchcrepe's decoders keep their own quirks
   (dither, second sigmoid in weighted_argmax, softmax observations in viterbi).
3. Accuracy against speed: RPA and RCA (50 cents, over the reference's voiced frames, on
   its time base, as ``mir_eval.melody``) on the real-f0 MDB-stem-synth excerpt and on
   ``--synth-clips`` clips of the synthetic test set (``data=synth_pitch``, test stream),
   and CPU seconds per second of audio over both, for audiolab's pretrained CREPE tiny/full
   and every ``--ckpt`` (a pitch checkpoint trained with audiolab), each with weighted
   argmax and Viterbi; torchcrepe tiny/full with its two decoders; ``librosa.pyin``
   (``fill_na=None``: its best guess on unvoiced frames too, since RPA scores every
   reference-voiced frame) and torchaudio's ``detect_pitch_frequency``. Every method runs
   at a 10 ms hop on 16 kHz audio.

Everything runs on ``--threads`` torch threads (default 1, as librosa's Viterbi): CPU
time is then well defined, and a shared machine's scheduling does not swamp the figures.

The audio is real: the MDB-stem-synth excerpt followed by FSDD recordings (from
``../shared/data`` or ``$AUDIOLAB_SHARED_DATA``), at 16 kHz, cut to ``--seconds``.

    .venv/bin/python scripts/bench_pitch.py [--seconds 10] [--decoder weighted_argmax] [--repeats 5] \
        [--ckpt outputs/<pitch run>/checkpoints/last.ckpt ...] [--synth-clips 16]
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from pathlib import Path

import librosa
import numpy as np
import torch
import torchaudio

from audiolab.audio.io import read_audio
from audiolab.audio.pitch_grid import hz_to_cents
from audiolab.data.pitch_eval import find_f0_pairs, read_f0_csv
from audiolab.data.synth_pitch import STREAM_TEST, SynthPitchDataModule
from audiolab.metrics.pitch import RawChromaAccuracy, RawPitchAccuracy, resample_estimate
from audiolab.pitch.decode import observation_probabilities
from audiolab.pitch.inference import load_model, predict
from audiolab.pitch.viterbi import crepe_transition, viterbi

FMIN, FMAX, HOP, RATE = 32.7, 1975.5, 160, 16000


def shared_data() -> Path:
    env = os.environ.get("AUDIOLAB_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        raise SystemExit(f"shared data not found at {path}: set AUDIOLAB_SHARED_DATA")
    return path


def benchmark_audio(seconds: float) -> torch.Tensor:
    data = shared_data()
    files = sorted((data / "pitch" / "mdb-stem-synth-excerpt").glob("*.wav"))
    files += sorted((data / "fsdd" / "recordings").glob("*.wav"))
    parts, total = [], 0
    for path in files:
        audio, rate = read_audio(path)
        audio = torchaudio.functional.resample(audio, rate, RATE)
        parts.append(audio)
        total += audio.numel()
        if total >= seconds * RATE:
            break
    return torch.cat(parts)[: int(seconds * RATE)]


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def cpu_time(fn) -> tuple[float, object]:
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def evaluation_sets(n_synth: int) -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(name, audio (16 kHz), ref times, ref f0 Hz, ref voiced)`` per clip: the MDB-stem-synth
    excerpt (real f0) and ``n_synth`` clips of the synthetic test set."""
    clips = []
    folder = shared_data() / "pitch" / "mdb-stem-synth-excerpt"
    for wav, csv in find_f0_pairs(folder):
        audio, rate = read_audio(wav)
        audio = torchaudio.functional.resample(audio.mean(0) if audio.dim() > 1 else audio, rate, RATE)
        times, f0 = read_f0_csv(csv)
        clips.append(("mdb", audio, times.double(), f0.double(), f0 > 0))
    test = SynthPitchDataModule().test_set  # the defaults of conf/data/synth_pitch.yaml
    params = [test.renderer.draw(np.random.default_rng([test.seed, STREAM_TEST, i]), test.n_samples) for i in range(n_synth)]
    audio, f0, voiced = test.renderer.render(params, test.n_samples, test.centers)
    times = test.centers.double() / RATE
    clips += [("synth", a, times, f.double(), v) for a, f, v in zip(audio, f0, voiced, strict=True)]
    return clips


def accuracy_rows(methods: dict, clips) -> list[tuple[str, str, str, str]]:
    """RPA / RCA per evaluation set and CPU seconds per second of audio of each method;
    a method maps 16 kHz audio ``(samples,)`` to ``(frame times, f0 Hz)``."""
    seconds = sum(c[1].numel() for c in clips) / RATE
    rows = []
    for name, method in methods.items():
        method(clips[0][1][:RATE])  # warm-up: model loading, compilation
        scores = {s: (RawPitchAccuracy(), RawChromaAccuracy()) for s in ("mdb", "synth")}
        cpu = 0.0
        for subset, audio, ref_t, ref_f0, ref_v in clips:
            spent, (t, f0) = cpu_time(functools.partial(method, audio))
            cpu += spent
            f0 = torch.as_tensor(np.asarray(f0, dtype=np.float64)).reshape(-1)
            cents = torch.where(f0 > 0, hz_to_cents(f0.clamp_min(1e-9)), torch.nan)
            est, _ = resample_estimate(torch.as_tensor(t, dtype=torch.float64), cents, torch.isfinite(cents), ref_t)
            for metric in scores[subset]:
                metric.update(est, ref_f0, ref_v)
        (mdb_rpa, mdb_rca), (syn_rpa, syn_rca) = ([float(m.compute()) for m in scores[s]] for s in ("mdb", "synth"))
        rows.append((name, f"{mdb_rpa:.4f} / {mdb_rca:.4f}", f"{syn_rpa:.4f} / {syn_rca:.4f}", f"{cpu / seconds:.4f}"))
    return rows


def compared_methods(ckpts: list[str]) -> dict:
    import torchcrepe

    def frame_times(n: int) -> np.ndarray:
        return np.arange(n) * HOP / RATE

    def ours(model, decoder):
        def run(audio):
            f0, _ = predict(audio, RATE, HOP, FMIN, FMAX, model=model, decoder=decoder)
            return frame_times(f0.numel()), f0
        return run

    def theirs(capacity, decoder):
        def run(audio):
            f0 = torchcrepe.predict(audio[None], RATE, HOP, FMIN, FMAX, capacity, decoder, batch_size=512, device="cpu")[0]
            return frame_times(f0.numel()), f0
        return run

    def pyin(audio):
        f0, _, _ = librosa.pyin(audio.numpy(), fmin=FMIN, fmax=FMAX, sr=RATE, frame_length=1024, hop_length=HOP, fill_na=None)
        return frame_times(len(f0)), f0

    def detect_pitch(audio):
        # torchaudio's NCCF tracker: frame i spans samples [i * HOP, (i + 1) * HOP) plus the lags
        f0 = torchaudio.functional.detect_pitch_frequency(audio[None], RATE, frame_time=HOP / RATE, freq_low=50, freq_high=FMAX)[0]
        return (np.arange(f0.numel()) + 0.5) * HOP / RATE, f0

    methods = {}
    for model in ["tiny", "full", *ckpts]:
        # a checkpoint: its task name (outputs/<task>/<run>/checkpoints/<file>)
        label = model if model in ("tiny", "full") else f"{Path(model).parents[2].name} ({Path(model).name})"
        for decoder in ("weighted_argmax", "viterbi"):
            methods[f"audiolab {label}, {decoder}"] = ours(model, decoder)
    for capacity in ("tiny", "full"):
        for decoder in ("weighted_argmax", "viterbi"):
            methods[f"torchcrepe {capacity}, {decoder}"] = theirs(capacity, getattr(torchcrepe.decode, decoder))
    methods["librosa.pyin"] = pyin
    methods["torchaudio detect_pitch_frequency"] = detect_pitch
    return methods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="audio for the pipeline comparison")
    parser.add_argument("--decoder", default="weighted_argmax", choices=["argmax", "weighted_argmax", "viterbi"])
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats of each Viterbi (best kept)")
    parser.add_argument("--frames", type=int, default=6000, help="frames for the Viterbi comparison")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ckpt", nargs="*", default=[], help="audiolab pitch checkpoints for the accuracy table")
    parser.add_argument("--synth-clips", type=int, default=16, help="1-s clips of the synthetic test set")
    parser.add_argument("--skip-accuracy", action="store_true", help="only the Viterbi and pipeline rows")
    args = parser.parse_args()
    import torchcrepe

    torch.set_num_threads(args.threads)
    audio = benchmark_audio(max(args.seconds, (args.frames - 1) * HOP / RATE))
    rows = []

    # 1. Viterbi: same probabilities, same transition matrix
    viterbi_audio = audio[: (args.frames - 1) * HOP]
    with torch.inference_mode():
        frames = torch.nn.functional.pad(viterbi_audio, (512, 512)).unfold(-1, 1024, HOP)
        act = torch.cat([load_model("tiny")(chunk) for chunk in frames.split(512)])
    obs = observation_probabilities(act)
    transition = crepe_transition()
    ours_s, ours_path = best_time(lambda: viterbi(obs, transition), args.repeats)
    obs_np, transition_np = obs.numpy().T.copy(), transition.numpy()
    librosa.sequence.viterbi(obs_np[:, :10], transition_np)  # numba compilation, not timed
    theirs_s, theirs_path = best_time(lambda: librosa.sequence.viterbi(obs_np, transition_np), args.repeats)
    agree = float(np.mean(ours_path.numpy() == theirs_path))
    forbidden = int((np.abs(np.diff(theirs_path.astype(int))) > 11).sum())
    rows.append((
        f"viterbi, {obs.shape[0]} x {obs.shape[1]} (s)", f"{ours_s:.3f}", f"{theirs_s:.3f}",
        f"{theirs_s / ours_s:.1f}x faster; paths agree on {100 * agree:.1f} % of frames; "
        f"librosa's path makes {forbidden} zero-probability jumps",
    ))

    audio = audio[: int(args.seconds * RATE)]
    duration = audio.numel() / RATE

    # 2. Pipelines, pretrained weights on both sides
    their_decoder = getattr(torchcrepe.decode, args.decoder)
    for capacity in ("tiny", "full"):
        def ours(capacity=capacity):
            return predict(audio, RATE, HOP, FMIN, FMAX, model=capacity, decoder=args.decoder)

        def theirs(capacity=capacity):
            return torchcrepe.predict(
                audio[None], RATE, HOP, FMIN, FMAX, capacity, their_decoder,
                return_periodicity=True, batch_size=512, device="cpu",
            )

        # warm-up on one second: loads both models, so that only inference is timed
        predict(audio[:RATE], RATE, model=capacity, decoder=args.decoder)
        torchcrepe.predict(audio[None, :RATE], RATE, HOP, FMIN, FMAX, capacity, their_decoder, batch_size=512)
        ours_cpu, (f0, period) = cpu_time(ours)
        theirs_cpu, (their_f0, _) = cpu_time(theirs)
        cents = (1200 * torch.log2(f0 / their_f0[0])).abs()
        voiced = period >= 0.5
        rows.append((
            f"{capacity}: CPU s per s of audio",
            f"{ours_cpu / duration:.3f}",
            f"{theirs_cpu / duration:.3f}",
            f"{theirs_cpu / ours_cpu:.2f}x; median |f0 diff| {cents.median():.1f} cents "
            f"(voiced frames: {cents[voiced].median():.1f}, {int(voiced.sum())} of {len(f0)})",
        ))

    print(f"\n{duration:.1f} s of audio, decoder {args.decoder}, torch threads {torch.get_num_threads()}")
    print_table(("measure", "audiolab", "librosa / torchcrepe", ""), rows)
    if args.skip_accuracy:
        return

    # 3. Accuracy against speed
    clips = evaluation_sets(args.synth_clips)
    rows = accuracy_rows(compared_methods(args.ckpt), clips)
    n_mdb = sum(int(c[4].sum()) for c in clips if c[0] == "mdb")
    n_syn = sum(int(c[4].sum()) for c in clips if c[0] == "synth")
    seconds = sum(c[1].numel() for c in clips) / RATE
    print(
        f"\nAccuracy (RPA / RCA, 50 cents) on the MDB-stem-synth excerpt ({n_mdb} voiced reference frames) and "
        f"{args.synth_clips} synthetic test clips ({n_syn} voiced frames); CPU s per s over all {seconds:.1f} s"
    )
    print_table(("method", "MDB excerpt RPA / RCA", "synthetic RPA / RCA", "CPU s per s of audio"), rows)


if __name__ == "__main__":
    main()
