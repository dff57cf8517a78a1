"""Pitch tracking: audiolab against librosa, torchcrepe and the peer trackers. One run, printed tables.

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
   ``--skip-pipeline`` leaves 1 and 2 out.
3. Accuracy against speed, every method on the same clips. Evaluation sets (``--sets``):

   synth         ``--synth-clips`` clips of the synthetic test set (``data=synth_pitch``,
                 test stream; exact f0 and voicing);
   mdb           the real-f0 MDB-stem-synth excerpt (3 s of one voice);
   speech        ``--speech-clips`` FSDD test-split recordings (spread over speakers and
                 digits), upsampled to 16 kHz, labelled by a teacher (audiolab CREPE
                 ``--teacher``, Viterbi, silence gate -60 dB, voiced = periodicity >= 0.5;
                 labels cached in outputs/bench_pitch_cache) and resynthesised on those
                 labels (``audiolab.data.speech_synth.resynthesize``), so the labels are exact;
   speech_noisy  the same clips through ``speech_synth.degrade`` with an "eval"-strength
                 draw of noise and reverberation.

   Per set: RPA and RCA (50 cents, over every reference-voiced frame, whatever the method's
   voicing: its pitch guess counts there, as mir_eval scores a negative f0; a method with
   no guess on a frame misses it), voicing recall, voicing false alarm and overall accuracy
   (``mir_eval.melody`` definitions, ``audiolab.metrics.pitch``), on the reference's time
   base (an estimate on another one is resampled as mir_eval does). Per method: CPU seconds
   of the process (all threads, ``time.process_time``) and wall seconds per second of
   audio over all sets, a warm-up call excluded.

   Methods, each with its own voicing decision:
   audiolab <model>, <decoder>   ``--models`` (pretrained names or anything
                                 ``audiolab.pitch.load_model`` loads) and ``--ckpt`` paths,
                                 each with every ``--decoders``; voiced: periodicity >= 0.5
   torchcrepe tiny/full          each with every ``--decoders``; voiced: periodicity >= 0.5
   SwiftF0                       ``swift_f0`` (ONNX, its fixed 16-ms hop, 46.9-2093.8 Hz);
                                 voiced: confidence >= 0.5 (its calibrated threshold)
   FCPE                          ``torchfcpe`` bundled model, local argmax; voiced: its
                                 own mask (peak activation > 0.006, f0 >= 32.7 Hz)
   PESTO                         ``pesto`` model ``--pesto-model`` (2.0.1 ships mir-1k and
                                 mir-1k_g7); voiced: confidence >=
                                 ``--pesto-threshold`` (0.5)
   librosa.pyin                  voiced_flag; ``fill_na=None`` keeps its guess on unvoiced frames

   ``--speed-rounds N`` then times the first audiolab method that ran and SwiftF0 N more
   times over the same clips, alternating which goes first, and prints every round, its
   ratio and the median ratio: on a shared machine one pass over short clips can differ
   from the next by a fifth or more.

   The peers come with ``make install-bench`` (``pip install -e .[bench]``); a missing one,
   or an audiolab model that does not load, is a row saying why, never a crash.

Every method runs on 16 kHz audio at a 10 ms hop where it lets us choose, with the
widest pitch range it allows within CREPE's 32.7-1975.5 Hz, on ``--threads`` threads: torch
(intra- and inter-op), OMP/MKL/OpenBLAS (environment, set before numpy and torch load) and
SwiftF0's ONNX Runtime session (``SwiftF0(threads=..., spin=False)``), with no busy-waiting for
anyone (``OMP_WAIT_POLICY=PASSIVE`` for OpenMP), which would count as CPU time.

    .venv/bin/python scripts/bench_pitch.py [--threads 2] [--sets synth mdb speech speech_noisy] \\
        [--models fast tiny full] [--ckpt outputs/<pitch run>/checkpoints/last.ckpt ...] \\
        [--synth-clips 16] [--speech-clips 300] [--speed-rounds N] [--skip-pipeline] \\
        [--json outputs/bench_pitch.json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import io
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def _early_threads() -> int:
    """``--threads`` read before numpy and torch load, so that their thread pools obey it."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--threads", type=int, default=2)
    return max(1, pre.parse_known_args()[0].threads)


for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = str(_early_threads())
# OpenMP threads sleep when idle instead of spinning, as SwiftF0's ONNX Runtime does (spin=False):
# spinning would count as CPU time for torch's small per-clip operations
os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchaudio  # noqa: E402
from shared_data import shared_data  # noqa: E402 (scripts/shared_data.py)

from audiolab.audio.io import read_audio  # noqa: E402
from audiolab.audio.pitch_grid import hz_to_cents  # noqa: E402
from audiolab.data.pitch_eval import find_f0_pairs, read_f0_csv  # noqa: E402
from audiolab.data.synth_pitch import STREAM_TEST, SynthPitchDataModule  # noqa: E402
from audiolab.metrics.pitch import melody_metrics, resample_estimate  # noqa: E402
from audiolab.pitch.decode import observation_probabilities  # noqa: E402
from audiolab.pitch.inference import load_model, predict  # noqa: E402
from audiolab.pitch.viterbi import crepe_transition, viterbi  # noqa: E402

FMIN, FMAX, HOP, RATE = 32.7, 1975.5, 160, 16000
SETS = ("synth", "mdb", "speech", "speech_noisy")
METRICS = ("rpa", "rca", "voicing_recall", "voicing_false_alarm", "overall_accuracy")
METRIC_HEADERS = ("RPA", "RCA", "VR", "VFA", "OA")
CACHE = Path(__file__).resolve().parents[1] / "outputs" / "bench_pitch_cache"
INSTALL_HINT = "pip install -e .[bench] / make install-bench"


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
    """Left-aligned columns. A row shorter than the header is a note: its last cell runs on
    unpadded and does not widen the columns."""
    full = [r for r in rows if len(r) == len(header)]
    widths = [max(len(r[i]) for r in [header, *full]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=False)] + [row[-1]]
        print("  ".join(cells).rstrip())


# -- 1 and 2: Viterbi and pipeline against librosa and torchcrepe ---------------------------


def viterbi_and_pipeline(args) -> None:
    import torchcrepe

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


# -- 3: evaluation sets --------------------------------------------------------------------


@dataclass
class Clip:
    """One evaluation clip: 16 kHz mono audio and its reference (f0 Hz, 0 = unvoiced)."""

    name: str
    audio: torch.Tensor  # (N,) float32
    ref_times: torch.Tensor  # (T,) float64, s
    ref_f0: torch.Tensor  # (T,) float64, Hz


def to_16k(audio: torch.Tensor, rate: int) -> torch.Tensor:
    audio = audio.mean(0) if audio.dim() > 1 else audio
    return torchaudio.functional.resample(audio.float(), rate, RATE) if rate != RATE else audio.float()


def synth_set(n_clips: int) -> list[Clip]:
    test = SynthPitchDataModule().test_set  # the defaults of conf/data/synth_pitch.yaml
    rngs = [np.random.default_rng([test.seed, STREAM_TEST, i]) for i in range(n_clips)]
    params = [test.renderer.draw(rng, test.n_samples) for rng in rngs]
    audio, f0, voiced = test.renderer.render(params, test.n_samples, test.centers)
    times = test.centers.double() / RATE
    return [
        Clip(f"synth {i}", a, times, torch.where(v, f.double(), 0.0))
        for i, (a, f, v) in enumerate(zip(audio, f0, voiced, strict=True))
    ]


def mdb_set() -> list[Clip]:
    clips = []
    for wav, csv in find_f0_pairs(shared_data() / "pitch" / "mdb-stem-synth-excerpt"):
        audio, rate = read_audio(wav)
        times, f0 = read_f0_csv(csv)
        clips.append(Clip(wav.stem, to_16k(audio, rate), times.double(), f0.double()))
    return clips


def spread_fsdd(clips: list, n: int) -> list:
    """``n`` FSDD clips spread over speakers and digits, the same ones every run: take by
    take, (speaker, digit) pairs diagonal by diagonal (speaker s with digit s + k), so that
    every run of consecutive picks varies both."""
    speakers = sorted({c.name.split("_")[1] for c in clips})

    def key(clip):
        digit, speaker, take = clip.name.removesuffix(".wav").split("_")
        s = speakers.index(speaker)
        return (int(take), (int(digit) - s) % 10, s)

    return sorted(clips, key=key)[:n]


def teacher_labels(clip_name: str, audio: torch.Tensor, teacher: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's ``(f0 Hz, voiced)`` on 16 kHz ``audio`` (frame i at i * 10 ms), cached
    under outputs/bench_pitch_cache by file name and teacher."""
    tag = teacher if teacher.isidentifier() else hashlib.sha1(teacher.encode()).hexdigest()[:12]
    path = CACHE / f"teacher-{tag}-viterbi-60dB" / f"{Path(clip_name).stem}.npz"
    if path.is_file():
        with np.load(path) as saved:
            return torch.from_numpy(saved["f0"]), torch.from_numpy(saved["voiced"])
    f0, period = predict(audio, RATE, HOP, FMIN, FMAX, model=teacher, decoder="viterbi", silence_db=-60)
    voiced = period >= 0.5
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, f0=f0.numpy(), voiced=voiced.numpy())
    os.replace(partial, path)
    return f0, voiced


def import_speech_synth():
    """``audiolab.data.speech_synth``, or a clear error: the speech sets cannot be built without it."""
    try:
        from audiolab.data import speech_synth
    except ImportError as exc:
        raise SystemExit(
            "the speech sets need audiolab.data.speech_synth (resynthesize, degrade, draw_degradation), "
            f"which does not import here ({exc}); leave them out with --sets synth mdb"
        ) from None
    return speech_synth


def speech_sets(n_clips: int, teacher: str, seed: int, wanted: set[str]) -> dict[str, list[Clip]]:
    """The ``speech`` and ``speech_noisy`` sets (those in ``wanted``): FSDD test recordings
    resynthesised on their teacher labels, clean and degraded."""
    from audiolab.data.fsdd import FsddDataModule

    speech_synth = import_speech_synth()

    recordings = FsddDataModule(root=str(shared_data() / "fsdd")).audio_clips("test")
    clean, noisy = [], []
    for index, clip in enumerate(spread_fsdd(recordings, n_clips)):
        read = clip.read()
        if read is None:
            continue
        audio = to_16k(*read)
        f0, voiced = teacher_labels(clip.name, audio, teacher)
        times = torch.arange(f0.numel(), dtype=torch.float64) * HOP / RATE
        ref_f0 = torch.where(voiced, f0.double(), 0.0)
        rng = np.random.default_rng([seed, index])
        speech = speech_synth.resynthesize(audio, f0, voiced, rng).float()
        clean.append(Clip(clip.name, speech, times, ref_f0))
        if "speech_noisy" in wanted:
            degraded = speech_synth.degrade(speech, rng, **speech_synth.draw_degradation(rng, strength="eval")).float()
            degraded = torch.nn.functional.pad(degraded[: speech.numel()], (0, max(0, speech.numel() - degraded.numel())))
            noisy.append(Clip(clip.name, degraded, times, ref_f0))
    return {name: clips for name, clips in (("speech", clean), ("speech_noisy", noisy)) if name in wanted}


# -- 3: the methods ------------------------------------------------------------------------
# Each factory loads its model (not timed) and returns ``track(audio (N,) float32 tensor at
# 16 kHz) -> (times s, f0 Hz with 0 = unvoiced, voiced bool, f0 guess Hz on every frame)``,
# numpy arrays; 0 in the guess means no pitch at all. It raises Unavailable when it cannot run.

Estimate = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
Tracker = Callable[[torch.Tensor], Estimate]


class Unavailable(Exception):
    """A method that cannot run here (package missing, model not loadable)."""


def estimate(times, guess, voiced) -> Estimate:
    times = np.asarray(times, dtype=np.float64)
    guess = np.nan_to_num(np.asarray(guess, dtype=np.float64).reshape(-1), nan=0.0)
    voiced = np.asarray(voiced, dtype=bool).reshape(-1) & (guess > 0)
    return times, np.where(voiced, guess, 0.0), voiced, guess


def frame_times(n: int, offset: float = 0.0) -> np.ndarray:
    return (np.arange(n) * HOP + offset) / RATE


def audiolab_tracker(model: str, decoder: str) -> Tracker:
    try:
        load_model(model)
    except Exception as exc:  # noqa: BLE001 - any reason a model does not load is reported
        raise Unavailable(f"not available: {type(exc).__name__}: {exc}") from None

    def track(audio):
        f0, period = predict(audio, RATE, HOP, FMIN, FMAX, model=model, decoder=decoder)
        return estimate(frame_times(f0.numel()), f0.numpy(), (period >= 0.5).numpy())
    return track


def torchcrepe_tracker(capacity: str, decoder: str) -> Tracker:
    import torchcrepe

    decode = getattr(torchcrepe.decode, decoder)

    def track(audio):
        f0, period = torchcrepe.predict(
            audio[None], RATE, HOP, FMIN, FMAX, capacity, decode, return_periodicity=True, batch_size=512, device="cpu"
        )
        return estimate(frame_times(f0.shape[-1]), f0[0].numpy(), (period[0] >= 0.5).numpy())
    return track


def swift_f0_tracker(threads: int) -> Tracker:
    try:
        import swift_f0
    except ImportError as exc:
        raise Unavailable(f"not installed ({exc.name}): {INSTALL_HINT}") from None
    detector = swift_f0.SwiftF0(threads=threads, spin=False)

    def track(audio):
        # fixed 256-sample hop (16 ms), frame i centred on i * 16 ms; fmin/fmax None: the model's whole range
        result = detector.detect(audio.numpy(), RATE)
        return estimate(result.timestamps, result.pitch_hz, result.confidence >= 0.5)
    return track


def fcpe_tracker() -> Tracker:
    try:
        import torchfcpe
    except ImportError as exc:
        raise Unavailable(f"not installed ({exc.name}): {INSTALL_HINT}") from None
    with contextlib.redirect_stdout(io.StringIO()):  # its loader prints INFO/WARN lines to stdout
        infer = torchfcpe.spawn_bundled_infer_model(device="cpu")
    if infer.get_model_sr() != RATE or infer.get_hop_size() != HOP:
        raise Unavailable(f"not available: bundled FCPE runs at {infer.get_model_sr()} Hz, hop {infer.get_hop_size()}")
    net, f0_min = infer.model, infer.get_model_f0_range()["f0_min"]
    threshold = 0.006  # InferCFNaiveMelPE.infer's default
    # its window: 1024 samples, left-padded by (1024 - 160) // 2, so frame i is centred on i * 160 + 80
    centre = infer.get_mel_config()["win_size"] // 2 - (infer.get_mel_config()["win_size"] - HOP) // 2

    def track(audio):
        # InferCFNaiveMelPE.infer in one pass, with its guess kept on the frames it masks:
        # mel, network, local argmax unmasked; voiced where infer would keep the frame
        with torch.no_grad():
            latent = net(infer.wav2mel(audio[None, :, None], RATE))
            guess = net.cent_to_f0(net.latent2cents_local_decoder(latent, threshold=threshold, mask=False))[0, :, 0]
            voiced = (latent[0].amax(dim=-1) > threshold) & (guess >= f0_min)
        return estimate(frame_times(guess.numel(), centre), guess.numpy(), voiced.numpy())
    return track


def pesto_tracker(model_name: str, threshold: float) -> Tracker:
    try:
        import pesto
    except ImportError as exc:
        raise Unavailable(f"not installed ({exc.name}): {INSTALL_HINT}") from None
    try:
        model = pesto.load_model(model_name, step_size=1000 * HOP / RATE, sampling_rate=RATE)
    except FileNotFoundError as exc:
        raise Unavailable(f"not available: {exc}") from None
    model.reduction = "alwa"  # pesto.predict's default

    def track(audio):
        # pesto.predict without reloading the checkpoint on every call; centred CQT frames
        with torch.inference_mode():
            f0, confidence, _, _ = model(audio, sr=RATE, convert_to_freq=True, return_activations=True)
        return estimate(frame_times(f0.numel()), f0.numpy(), (confidence >= threshold).numpy())
    return track


def pyin_tracker() -> Tracker:
    def track(audio):
        f0, voiced, _ = librosa.pyin(
            audio.numpy(), fmin=FMIN, fmax=FMAX, sr=RATE, frame_length=1024, hop_length=HOP, fill_na=None
        )
        return estimate(frame_times(len(f0)), f0, voiced)
    return track


@dataclass
class Method:
    name: str
    make: Callable[[], Tracker]
    settings: str


def methods(args) -> list[Method]:
    out = []
    for model in [*args.models, *args.ckpt]:
        path = Path(model)
        label = f"{path.parents[2].name} ({path.name})" if len(path.parents) > 3 else model
        for decoder in args.decoders:
            out.append(Method(
                f"audiolab {label}, {decoder}", lambda m=model, d=decoder: audiolab_tracker(m, d),
                f"{FMIN}-{FMAX} Hz, 10 ms; voiced: periodicity >= 0.5",
            ))
    for capacity in args.torchcrepe:
        for decoder in args.decoders:
            out.append(Method(
                f"torchcrepe {capacity}, {decoder}", lambda c=capacity, d=decoder: torchcrepe_tracker(c, d),
                f"{FMIN}-{FMAX} Hz, 10 ms, batch 512; voiced: periodicity >= 0.5",
            ))
    out += [
        Method("SwiftF0", lambda: swift_f0_tracker(args.threads),
               f"46.875-2093.75 Hz (its range), its 16 ms hop resampled; ONNX Runtime {args.threads} threads, "
               "no spinning; voiced: confidence >= 0.5"),
        Method("FCPE", fcpe_tracker,
               "32.7-1975.5 Hz (its range), 10 ms, local argmax; voiced: peak activation > 0.006 (its mask)"),
        Method(f"PESTO {args.pesto_model}", lambda: pesto_tracker(args.pesto_model, args.pesto_threshold),
               f"its range, 10 ms, alwa reduction; voiced: confidence >= {args.pesto_threshold}"),
        Method("librosa.pyin", pyin_tracker,
               f"{FMIN}-{FMAX} Hz, 10 ms, frame 1024, fill_na=None; voiced: voiced_flag"),
    ]
    return out


# -- 3: scoring ----------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    settings: str
    reason: str | None = None
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    seconds: float = 0.0


def score(est: Estimate, clip: Clip, metrics) -> None:
    times, _, voiced, guess = est
    guess = torch.from_numpy(guess)
    cents = torch.where(guess > 0, hz_to_cents(guess.clamp_min(1e-9)), torch.nan)
    est_cents, est_voiced = resample_estimate(torch.from_numpy(times), cents, torch.from_numpy(voiced), clip.ref_times)
    metrics.update(est_cents, clip.ref_f0, clip.ref_f0 > 0, est_voiced=est_voiced)


def run_method(method: Method, sets: dict[str, list[Clip]], seed: int) -> Result:
    result = Result(method.name, method.settings)
    try:
        track = method.make()
    except Unavailable as exc:
        result.reason = str(exc)
        return result
    except ImportError as exc:
        result.reason = f"not installed ({exc.name}): {INSTALL_HINT}"
        return result
    first = next(clip for clips in sets.values() for clip in clips)
    track(first.audio[:RATE])  # warm-up: lazy loading, allocation, compilation; not timed
    torch.manual_seed(seed)  # torchcrepe's decoders dither
    for set_name, clips in sets.items():
        metrics = melody_metrics()
        for clip in clips:
            cpu, wall = time.process_time(), time.perf_counter()
            est = track(clip.audio)
            result.cpu_s += time.process_time() - cpu
            result.wall_s += time.perf_counter() - wall
            result.seconds += clip.audio.numel() / RATE
            score(est, clip, metrics)
        result.scores[set_name] = {k: float(v) for k, v in metrics.compute().items()}
    return result


def round_order(r: int) -> tuple[int, int]:
    """The order in which the two methods of a speed round run: they take turns first."""
    return (0, 1) if r % 2 == 0 else (1, 0)


def speed_rounds(pair: list[Method], clips: list[Clip], rounds: int) -> list[list[float]]:
    """CPU seconds per second of audio of the two methods of ``pair`` over ``clips``, once
    per round, in :func:`round_order` (both have run once already, so neither can fail to
    load here). The rounds show how much one pass varies and give the ratio its median."""
    tracks = [method.make() for method in pair]
    seconds = sum(c.audio.numel() for c in clips) / RATE
    for track in tracks:
        track(clips[0].audio[:RATE])  # warm-up, not timed
    out = []
    for r in range(rounds):
        cpu = [0.0, 0.0]
        for i in round_order(r):
            cpu[i] = cpu_time(lambda t=tracks[i]: [t(clip.audio) for clip in clips])[0] / seconds
        out.append(cpu)
    return out


def report_speed_rounds(args, results: list[Result], sets: dict[str, list[Clip]], total: float) -> dict | None:
    """``--speed-rounds``: the first audiolab method that ran against SwiftF0, printed and
    returned for the JSON (``None``, with the reason printed, when either did not run)."""
    ran = {r.name for r in results if r.reason is None}
    every = methods(args)
    ours = next((m for m in every if m.name.startswith("audiolab ") and m.name in ran), None)
    peer = next((m for m in every if m.name == "SwiftF0" and m.name in ran), None)
    if ours is None or peer is None:
        missing = " and ".join(what for what, m in (("an audiolab model (--models, --ckpt)", ours), ("SwiftF0", peer)) if m is None)
        print(f"\nSpeed rounds left out: {missing} did not run")
        return None
    pair = [ours, peer]
    rounds = speed_rounds(pair, [c for group in sets.values() for c in group], args.speed_rounds)
    ratios = [a / b for a, b in rounds]
    median = statistics.median(ratios)
    first = [pair[round_order(r)[0]].name for r in range(len(rounds))]
    print(f"\nCPU s / s over the same {total:.1f} s in {len(rounds)} rounds, order swapped every round "
          "(ratios from the unrounded times)")
    rows = [(str(r), name, f"{a:.4f}", f"{b:.4f}", f"{q:.2f}")
            for r, (name, (a, b), q) in enumerate(zip(first, rounds, ratios, strict=True))]
    rows.append(("median", "", "", "", f"{median:.2f}"))
    print_table(("round", "first", ours.name, peer.name, "ratio"), rows)
    return {"methods": [m.name for m in pair], "cpu_s_per_s": rounds, "ratios": ratios, "median_ratio": median,
            "first": first}


def git_commit() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" (uncommitted changes)" if dirty else "")


def accuracy(args) -> None:
    wanted = list(dict.fromkeys(args.sets))
    sets: dict[str, list[Clip]] = {}
    speech = {}
    if {"speech", "speech_noisy"} & set(wanted):
        speech = speech_sets(args.speech_clips, args.teacher, args.seed, set(wanted))
    for name in wanted:
        sets[name] = synth_set(args.synth_clips) if name == "synth" else mdb_set() if name == "mdb" else speech[name]
    sets = {name: clips for name, clips in sets.items() if clips}
    print("\nEvaluation sets:")
    for name, clips in sets.items():
        seconds = sum(c.audio.numel() for c in clips) / RATE
        voiced = sum(int((c.ref_f0 > 0).sum()) for c in clips)
        frames = sum(c.ref_f0.numel() for c in clips)
        print(f"  {name}: {len(clips)} clips, {seconds:.1f} s, {voiced} of {frames} reference frames voiced")

    results = []
    for method in methods(args):
        print(f"  running {method.name} ...", file=sys.stderr, flush=True)
        results.append(run_method(method, sets, args.seed))

    for name in sets:
        print(f"\n{name}: RPA, RCA (50 cents), voicing recall, voicing false alarm, overall accuracy")
        rows = [
            (r.name, *(f"{r.scores[name][k]:.4f}" for k in METRICS)) if r.reason is None else (r.name, r.reason)
            for r in results
        ]
        print_table(("method", *METRIC_HEADERS), rows)
    total = sum(c.audio.numel() for clips in sets.values() for c in clips) / RATE
    print(f"\nSpeed over all {total:.1f} s of audio ({', '.join(sets)}), {args.threads} thread(s); warm-up excluded")
    rows = [
        (r.name, f"{r.cpu_s / r.seconds:.4f}", f"{r.wall_s / r.seconds:.4f}", r.settings) if r.reason is None else (r.name, r.reason)
        for r in results
    ]
    print_table(("method", "CPU s / s", "wall s / s", "settings"), rows)
    rounds = report_speed_rounds(args, results, sets, total) if args.speed_rounds > 0 else None
    stream_row = streaming(sets, args.stream_model)
    if stream_row:
        print(f"\nStreaming ({args.stream_model}, weighted argmax, 20-ms chunks) over the same audio")
        print_table(("", "CPU s / s", "times real time (CPU)", "largest |f0 diff| to offline predict, cents"), [stream_row])

    if args.json:
        figures = {
            "sets": {
                name: {"clips": len(clips), "seconds": sum(c.audio.numel() for c in clips) / RATE,
                       "voiced_frames": sum(int((c.ref_f0 > 0).sum()) for c in clips),
                       "frames": sum(c.ref_f0.numel() for c in clips)}
                for name, clips in sets.items()
            },
            "methods": [
                {"name": r.name, "settings": r.settings, "available": r.reason is None, "reason": r.reason,
                 "scores": r.scores, "cpu_s_per_s": r.cpu_s / r.seconds if r.seconds else None,
                 "wall_s_per_s": r.wall_s / r.seconds if r.seconds else None, "audio_s": r.seconds}
                for r in results
            ],
        }
        if rounds:
            figures["speed_rounds"] = rounds
        if stream_row:
            figures["streaming"] = dict(zip(("name", "cpu_s_per_s", "times_real_time", "max_cents_to_offline"), stream_row, strict=True))
        args.header["accuracy"] = figures
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(args.header, indent=1))
        print(f"\nfigures written to {args.json}")


def streaming(sets: dict, model: str) -> tuple[str, str, str, str] | None:
    """``PitchStream`` on every clip in 20-ms chunks: CPU seconds per second of audio, how
    many times faster than real time, and the largest f0 difference to offline ``predict``."""
    from audiolab.pitch import PitchStream

    try:
        load_model(model)
    except Exception as exc:  # noqa: BLE001 - reported, as for the other rows
        print(f"\nStreaming: {model} not available ({type(exc).__name__}: {exc})")
        return None
    clips = [c.audio for group in sets.values() for c in group]
    chunk = RATE // 50
    stream = PitchStream(RATE, model=model, decoder="weighted_argmax")
    stream.push(clips[0][:RATE])  # warm-up
    stream.flush()
    cpu, worst, seconds = 0.0, 0.0, 0.0
    for audio in clips:
        start = time.process_time()
        outs = [stream.push(audio[i : i + chunk]) for i in range(0, audio.numel(), chunk)] + [stream.flush()]
        cpu += time.process_time() - start
        seconds += audio.numel() / RATE
        f0 = torch.cat([o[0] for o in outs])
        offline, _ = predict(audio, RATE, model=model, decoder="weighted_argmax")
        worst = max(worst, float((1200 * torch.log2(f0 / offline)).abs().max()))
    return f"PitchStream {model}", f"{cpu / seconds:.4f}", f"{seconds / cpu:.0f}x", f"{worst:.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch, OMP/MKL/OpenBLAS and ONNX Runtime threads (default 2)")
    parser.add_argument("--skip-pipeline", action="store_true", help="leave out 1 and 2 (Viterbi and pipeline)")
    parser.add_argument("--skip-accuracy", action="store_true", help="only 1 and 2")
    parser.add_argument("--json", help="write every figure (and the run's date, commit and command) to this file")
    g = parser.add_argument_group("1 and 2: Viterbi and pipeline")
    g.add_argument("--seconds", type=float, default=10.0, help="audio for the pipeline comparison")
    g.add_argument("--decoder", default="weighted_argmax", choices=["argmax", "weighted_argmax", "viterbi"])
    g.add_argument("--repeats", type=int, default=5, help="timing repeats of each Viterbi (best kept)")
    g.add_argument("--frames", type=int, default=6000, help="frames for the Viterbi comparison")
    g = parser.add_argument_group("3: accuracy against speed")
    g.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS, help="evaluation sets (default all)")
    g.add_argument("--models", nargs="*", default=["fast", "tiny", "full"], help="audiolab pitch models by name")
    g.add_argument("--ckpt", nargs="*", default=[], help="audiolab pitch checkpoints (e.g. a trained harmonic_pitch)")
    g.add_argument("--decoders", nargs="+", default=["viterbi", "weighted_argmax"], choices=["argmax", "weighted_argmax", "viterbi"],
                   help="decoders of every audiolab model and of torchcrepe")
    g.add_argument("--torchcrepe", nargs="*", default=["tiny", "full"], choices=["tiny", "full"],
                   help="torchcrepe capacities (full costs about 10 CPU s per s of audio)")
    g.add_argument("--pesto-model", default="mir-1k_g7", help="PESTO checkpoint name (2.0.1 ships mir-1k, mir-1k_g7) or path")
    g.add_argument("--pesto-threshold", type=float, default=0.5,
                   help="PESTO voicing: confidence >= this (default 0.5; its confidence depends on the level)")
    g.add_argument("--synth-clips", type=int, default=16, help="clips of the synthetic test set")
    g.add_argument("--speech-clips", type=int, default=300,
                   help="FSDD test recordings for the speech sets (300: the whole test split)")
    g.add_argument("--teacher", default="full", help="audiolab model that labels the speech sets (Viterbi, -60 dB gate)")
    g.add_argument("--seed", type=int, default=0, help="resynthesis and degradation draws; torch seed")
    g.add_argument("--speed-rounds", type=int, default=0,
                   help="then time the first audiolab method that ran against SwiftF0 this many more times, "
                        "alternating which goes first (default 0: no rounds)")
    g.add_argument("--stream-model", default="fast", help="the model of the streaming row (20-ms chunks)")
    args = parser.parse_args()
    if args.speed_rounds < 0:
        raise SystemExit(f"error: --speed-rounds {args.speed_rounds}: a number of rounds is 0 or more")

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    args.header = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "torch_threads": torch.get_num_threads(),
        "command": shlex.join(sys.orig_argv),
    }
    print(f"date {args.header['date']}, commit {args.header['commit']}, torch threads {args.header['torch_threads']} "
          f"(OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}), torch {torch.__version__}")
    print(f"command: {args.header['command']}")
    if not args.skip_accuracy and {"speech", "speech_noisy"} & set(args.sets):
        import_speech_synth()  # fail now, not after sections 1 and 2
    if not args.skip_pipeline:
        viterbi_and_pipeline(args)
    if not args.skip_accuracy:
        accuracy(args)
    elif args.json:
        Path(args.json).write_text(json.dumps(args.header, indent=1))


if __name__ == "__main__":
    main()
