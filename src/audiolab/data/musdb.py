"""MUSDB18 and MUSDB18-HQ for music source separation (``data=musdb``, ``data=musdb_synth``).

Tracks are listed by ``musdb.DB``: native ``.stem.mp4`` files (``is_wav=false``) or the
MUSDB18-HQ / ``musdbconvert`` layout of one folder of wav files per track
(``is_wav=true``). The default splits are the official ones: 86 training and 14
validation tracks of the ``train`` subset (``split='train'|'valid'``) and the 50 tracks
of the ``test`` subset. A ``setup.yaml`` in the root (the synthetic dataset writes one)
replaces musdb's own, with its own validation track names.

Training examples are random chunks, read without loading whole tracks (wav: a direct
``soundfile`` read of the needed frames; stems: ``track.chunk_start`` /
``track.chunk_duration``, one ffmpeg call per source, slow but exact). Each source may
come from an independent random track, and every augmentation is drawn independently
for every source; the mixture of a training example is the sum of its augmented
sources, so the targets (when they cover the four sources) sum to the mixture exactly.
Example ``i`` is a pure function of ``(seed, i)`` and :class:`EpochSampler` moves the
index window every epoch, so the data depend on neither ``num_workers`` nor the number
of DDP ranks (each rank gets its own share of the epoch's indices).

Validation uses fixed excerpts whose mixture is the sum of the unaugmented sources,
like training: the validation loss then measures the same task as the training loss
(targets that sum to the input), and it costs no extra read of the mixture. Whole
tracks (``full_tracks``, the test loader) use the track's real mixture, as museval
evaluation does; in ``.stem.mp4`` files each stream is AAC-coded on its own, so that
mixture differs slightly from the sum of the decoded sources.

Tasks that read one stem of whole tracks themselves (the vocals as teacher-labelled pitch
data) get them from :meth:`MusdbDataModule.audio_clips`.

The datasets (:class:`RandomMixDataset`, :class:`ExcerptDataset`, :class:`FullTrackDataset`)
and :class:`SeparationDataModule` work on any "tracks with named sources"; MUSDB is the
case ``sources = SOURCES``, Slakh2100 (:mod:`audiolab.data.slakh`) another, whose sources
are instrument groups read through :attr:`TrackRef.reader`.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import soundfile as sf
import torch
import torchaudio
import yaml
from torch.utils.data import DataLoader, Dataset

from audiolab.data.clips import AudioClip, file_identity
from audiolab.data.sampling import EpochSampler
from audiolab.utils.errors import AudiolabError
from audiolab.utils.threads import one_thread_worker

log = logging.getLogger("audiolab")

MUSDB_RATE = 44100
SOURCES = ("drums", "bass", "other", "vocals")  # the stem order of MUSDB18 after the mixture
SPLITS = ("train", "valid", "test")
DEFAULT_SPLITS = {
    "train": {"subsets": "train", "split": "train"},
    "valid": {"subsets": "train", "split": "valid"},
    "test": {"subsets": "test", "split": None},
}
STREAM_TRAIN, STREAM_ORDER = 0, 1
PITCH_DENOMINATOR = 100  # speed ratios are p / 100: about 0.17 semitone resolution
SILENCE_FLOOR_DB = -200.0


class MusdbError(AudiolabError):
    """MUSDB18 is misconfigured, or one of its files is bad."""


class MusdbNotFoundError(MusdbError):
    """No MUSDB18 tracks where the config points."""


@functools.cache
def default_setup() -> dict:
    """musdb's own ``configs/mus.yaml``: sources, targets, validation track names."""
    import musdb

    with open(Path(musdb.__path__[0]) / "configs" / "mus.yaml") as handle:
        return yaml.safe_load(handle)


def target_definitions(setup: dict) -> dict[str, dict[str, float]]:
    """``{target: {source: gain}}`` as in a musdb setup (``accompaniment`` is
    drums + bass + other there)."""
    return {name: {src: float(g) for src, g in parts.items()} for name, parts in setup["targets"].items()}


def check_targets(targets: Sequence[str], setup: dict) -> list[str]:
    """The target names, validated against ``setup``; order preserved."""
    known = target_definitions(setup)
    if isinstance(targets, str) or len(targets) == 0:
        raise MusdbError(f"data.targets must be a non-empty list of names, got {targets!r}; e.g. [vocals, accompaniment]")
    names = [str(t) for t in targets]
    for name in names:
        if name not in known:
            raise MusdbError(
                f"unknown MUSDB target {name!r} in data.targets={names}: choose from {list(known)} "
                "(the sources drums, bass, other, vocals, or sums of them such as accompaniment = drums + bass + other)"
            )
    if len(set(names)) != len(names):
        raise MusdbError(f"data.targets={names} names a target twice")
    return names


# -- augmentations (pure functions of their inputs) ---------------------------------
def apply_gain(audio: np.ndarray, gain: float) -> np.ndarray:
    """``audio * gain``."""
    return audio * np.float32(gain)


def swap_channels(audio: np.ndarray) -> np.ndarray:
    """Left and right exchanged (channels reversed), shape ``(C, T)``."""
    return np.ascontiguousarray(audio[::-1])


def invert_polarity(audio: np.ndarray) -> np.ndarray:
    """``-audio``."""
    return -audio


def reverse_time(audio: np.ndarray) -> np.ndarray:
    """The signal played backwards, shape ``(C, T)``."""
    return np.ascontiguousarray(audio[:, ::-1])


def speed_ratio(semitones: float) -> tuple[int, int]:
    """``(p, q)`` with ``p / q`` close to ``2 ** (semitones / 12)`` and ``q = 100``."""
    return max(1, round(PITCH_DENOMINATOR * 2.0 ** (semitones / 12.0))), PITCH_DENOMINATOR


def resample(audio: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Band-limited resampling of ``(C, T)`` audio by ``new / orig`` (torchaudio's sinc
    interpolation); the output has ``ceil(T * new / orig)`` samples."""
    if orig == new:
        return audio
    out = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(audio)), orig, new)
    return out.numpy()


def pitch_shift(audio: np.ndarray, semitones: float) -> np.ndarray:
    """Resample-based pitch shift (tape-speed change): ``audio`` played ``p / q`` times
    faster, so every frequency moves by about ``semitones`` and the length shrinks by
    ``q / p``. Read ``n * p / q`` samples to get ``n`` back."""
    p, q = speed_ratio(semitones)
    return resample(audio, p, q)


def fit_length(audio: np.ndarray, n: int) -> np.ndarray:
    """Cut or zero-pad the last axis to ``n`` samples."""
    if audio.shape[-1] >= n:
        return audio[..., :n]
    pad = np.zeros((*audio.shape[:-1], n - audio.shape[-1]), dtype=audio.dtype)
    return np.concatenate([audio, pad], axis=-1)


def rms_db(audio: np.ndarray) -> float:
    """Root mean square level in dB relative to full scale (floored at -200 dB)."""
    power = float(np.mean(np.square(audio, dtype=np.float64)))
    return 10.0 * math.log10(power) if power > 1e-20 else SILENCE_FLOOR_DB


@dataclass(frozen=True)
class Augment:
    """Training augmentations. Each is applied to each source independently, with its
    probability (0 switches it off).

    Args:
        random_mix: probability that a source comes from an independent random track (at
            its own random position) instead of the example's track.
        gain, gain_range: probability of a random gain, uniform in ``gain_range``.
        channel_swap: probability of exchanging left and right.
        polarity: probability of inverting the sign.
        time_reverse: probability of playing the chunk backwards.
        pitch_shift, pitch_semitones: probability of a resample-based pitch shift (tempo
            changes with it) by a uniform amount in ``[-pitch_semitones, pitch_semitones]``.
        mixup: probability of adding a second chunk of the same source type from a random
            track (two drum parts, two vocal lines, ...).
    """

    random_mix: float = 0.5
    gain: float = 1.0
    gain_range: tuple[float, float] = (0.25, 1.25)
    channel_swap: float = 0.5
    polarity: float = 0.5
    time_reverse: float = 0.0
    pitch_shift: float = 0.0
    pitch_semitones: float = 2.0
    mixup: float = 0.0

    @classmethod
    def from_config(cls, config: dict | None) -> Augment:
        config = dict(config or {})
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(config) - set(names))
        if unknown:
            raise MusdbError(f"unknown option(s) {unknown} in data.augment; known: {names}")
        if "gain_range" in config:
            config["gain_range"] = tuple(float(g) for g in config["gain_range"])
        aug = cls(**config)
        for name in ("random_mix", "gain", "channel_swap", "polarity", "time_reverse", "pitch_shift", "mixup"):
            value = getattr(aug, name)
            if not 0.0 <= value <= 1.0:
                raise MusdbError(f"data.augment.{name} is a probability, got {value}")
        lo, hi = aug.gain_range
        if not (len(aug.gain_range) == 2 and 0.0 <= lo <= hi):
            raise MusdbError(f"data.augment.gain_range must be [low, high] with 0 <= low <= high, got {list(aug.gain_range)}")
        if not 0.0 <= aug.pitch_semitones <= 12.0:
            raise MusdbError(f"data.augment.pitch_semitones must be in [0, 12], got {aug.pitch_semitones}")
        return aug

    def draw_semitones(self, rng: np.random.Generator) -> float:
        """The pitch shift of one source (0 when not drawn). Always uses two draws."""
        u, v = rng.random(2)
        return float((2 * v - 1) * self.pitch_semitones) if u < self.pitch_shift else 0.0

    def apply(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Gain, polarity, channel swap and time reversal of one source ``(C, T)``. Always
        uses the same number of draws, so switching one off leaves the others unchanged."""
        u = rng.random(5)
        if u[0] < self.gain:
            lo, hi = self.gain_range
            audio = apply_gain(audio, lo + (hi - lo) * u[1])
        if u[2] < self.polarity:
            audio = invert_polarity(audio)
        if u[3] < self.channel_swap:
            audio = swap_channels(audio)
        if u[4] < self.time_reverse:
            audio = reverse_time(audio)
        return audio


# -- tracks ---------------------------------------------------------------------
@dataclass
class TrackRef:
    """One track: its metadata and how to read it (``files`` for wav folders, the
    ``musdb`` track for ``.stem.mp4``, or ``reader`` for other datasets).

    ``reader(name, start, frames)`` returns float32 ``(C, frames)`` of source ``name`` (or
    ``mixture``) at the track's ``rate``; it lets datasets other than MUSDB (Slakh2100,
    whose sources are sums of many stem files) share the training, validation and test
    datasets below. It must pickle (loader workers), e.g. a bound method."""

    name: str
    subset: str
    rate: int
    n_samples: int
    files: dict[str, str] | None = None
    track: Any = None
    reader: Callable[[str, int, int], np.ndarray] | None = None

    @property
    def seconds(self) -> float:
        return self.n_samples / self.rate


@contextmanager
def _chunk(track, start: float, duration: float | None):
    track.chunk_start, track.chunk_duration = start, duration
    try:
        yield
    finally:
        track.chunk_start, track.chunk_duration = 0, None


def read_raw(ref: TrackRef, name: str, start: int, frames: int) -> np.ndarray:
    """``frames`` samples of source ``name`` (or ``mixture``) from ``start``, at the file's
    rate, float32 ``(C, frames)`` (zero-padded past the end)."""
    if ref.reader is not None:
        return fit_length(np.asarray(ref.reader(name, start, frames), dtype=np.float32), frames)
    if ref.files is not None:
        if name not in ref.files:
            raise MusdbError(f"track {ref.name!r} has no {name} file in {Path(next(iter(ref.files.values()))).parent}")
        audio, _ = sf.read(ref.files[name], start=start, frames=frames, dtype="float32", always_2d=True)
        return fit_length(audio.T, frames)
    track = ref.track
    with _chunk(track, start / ref.rate, frames / ref.rate):
        audio = track.audio if name == "mixture" else track.sources[name].audio
    return fit_length(np.asarray(audio, dtype=np.float32).T, frames)


def frames_needed(ref: TrackRef, n_out: int, sample_rate: int, speed: tuple[int, int] = (1, 1)) -> int:
    """File samples to read for ``n_out`` samples at ``sample_rate`` and speed ``p / q``."""
    orig, new = ref.rate * speed[0], sample_rate * speed[1]
    return -(-n_out * orig // new)


def read_source(
    ref: TrackRef, name: str, start: int, n_out: int, sample_rate: int, speed: tuple[int, int] = (1, 1)
) -> np.ndarray:
    """``n_out`` samples at ``sample_rate`` of source ``name`` from file sample ``start``,
    played ``speed[0] / speed[1]`` times faster (one resampling call for both)."""
    n_in = frames_needed(ref, n_out, sample_rate, speed)
    audio = read_raw(ref, name, start, n_in)
    audio = resample(audio, ref.rate * speed[0], sample_rate * speed[1])
    return fit_length(audio, n_out)


def read_full_track(ref: TrackRef, targets: list[str], definitions: dict, sample_rate: int) -> dict:
    """A whole track: ``{"name", "mixture" (C, T), "targets" (S, C, T)}`` with the track's
    real mixture (what its reader calls ``mixture``) and the target definitions."""
    if ref.reader is not None:
        needed = sorted({s for t in targets for s in definitions[t]})
        read = {name: read_raw(ref, name, 0, ref.n_samples) for name in ["mixture", *needed]}
        mixture = read["mixture"]
        outs = [sum(g * read[s] for s, g in definitions[t].items()) for t in targets]
    elif ref.files is not None:
        if "mixture" not in ref.files:
            folder = Path(ref.files[SOURCES[0]]).parent
            raise MusdbError(f"track {ref.name!r} has no mixture.wav in {folder}; whole tracks need the real mixture")
        read = {}
        for name in ["mixture", *sorted({s for t in targets for s in definitions[t]})]:
            read[name] = sf.read(ref.files[name], dtype="float32", always_2d=True)[0].T
        mixture = read["mixture"]
        outs = [sum(g * read[s] for s, g in definitions[t].items()) for t in targets]
    else:
        with _chunk(ref.track, 0, None):
            mixture = np.asarray(ref.track.audio, dtype=np.float32).T
            outs = [np.asarray(ref.track.targets[t].audio, dtype=np.float32).T for t in targets]
    n = min(x.shape[-1] for x in [mixture, *outs])
    mixture = resample(np.ascontiguousarray(mixture[:, :n]), ref.rate, sample_rate)
    stacked = resample(np.ascontiguousarray(np.stack([x[:, :n] for x in outs]).astype(np.float32)), ref.rate, sample_rate)
    return {"name": ref.name, "mixture": torch.from_numpy(mixture), "targets": torch.from_numpy(stacked)}


# -- datasets -------------------------------------------------------------------
@dataclass
class Draw:
    """Where one source of a training example is read from."""

    track: int
    start: int
    speed: tuple[int, int] = (1, 1)
    mixup: tuple[int, int] | None = None  # (track, start) of the added chunk


class RandomMixDataset(Dataset):
    """Random training chunks: ``len = tracks x samples_per_track`` per epoch, example
    ``i`` drawn from ``numpy.random.default_rng([seed, 0, i])``.

    The tracks are "tracks with named sources": each has every name of ``sources`` (MUSDB:
    drums, bass, other, vocals; Slakh2100: its instrument groups), the mixture of an
    example is the sum of its augmented sources and the targets are sums of sources by
    ``definitions`` (``{target: {source: gain}}``).

    Every epoch visits each track ``samples_per_track`` times as the example's own track
    (in an order shuffled per epoch); the sources that ``random_mix`` moves elsewhere come
    from any track. A draw whose targets are near-silent (RMS below
    ``silence_threshold_db``) is re-drawn up to ``silence_retries`` times; when every draw
    is silent the loudest one is kept.
    """

    def __init__(
        self,
        tracks: list[TrackRef],
        targets: list[str],
        definitions: dict[str, dict[str, float]],
        sample_rate: int,
        chunk_samples: int,
        samples_per_track: int,
        seed: int,
        augment: Augment,
        silence_threshold_db: float | None = None,
        silence_retries: int = 10,
        *,
        sources: Sequence[str] = SOURCES,
    ) -> None:
        self.tracks = tracks
        self.sources = tuple(sources)
        self.targets = targets
        self.definitions = definitions
        self.sample_rate = sample_rate
        self.chunk_samples = chunk_samples
        self.samples_per_track = samples_per_track
        self.seed = seed
        self.augment = augment
        self.silence_threshold_db = silence_threshold_db
        self.silence_retries = silence_retries
        self._order: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.tracks) * self.samples_per_track

    def anchor(self, index: int) -> int:
        """The track of example ``index``: a per-epoch permutation of the epoch's slots."""
        n = len(self)
        epoch, slot = divmod(int(index), n)
        if self._order is None or self._order[0] != epoch:
            order = np.random.default_rng([self.seed, STREAM_ORDER, epoch]).permutation(n)
            self._order = (epoch, order)
        return int(self._order[1][slot]) % len(self.tracks)

    def _start(self, track: int, u: float, speed: tuple[int, int]) -> int:
        ref = self.tracks[track]
        room = ref.n_samples - frames_needed(ref, self.chunk_samples, self.sample_rate, speed)
        return int(u * (max(room, 0) + 1))

    def draw(self, rng: np.random.Generator, anchor: int) -> dict[str, Draw]:
        """Where each source is read from (a fixed number of random draws per source)."""
        aug = self.augment
        anchor_u = rng.random()
        plan = {}
        for name in self.sources:
            u = rng.random(6)
            semitones = aug.draw_semitones(rng)
            speed = speed_ratio(semitones) if semitones else (1, 1)
            mixed = u[0] < aug.random_mix
            track = int(u[1] * len(self.tracks)) if mixed else anchor
            start = self._start(track, u[2] if mixed else anchor_u, speed)
            mixup = None
            if u[3] < aug.mixup:
                other = int(u[4] * len(self.tracks))
                mixup = (other, self._start(other, u[5], speed))
            plan[name] = Draw(track, start, speed, mixup)
        return plan

    def read(self, plan: dict[str, Draw]) -> dict[str, np.ndarray]:
        """The unaugmented source chunks of a plan, ``(C, chunk_samples)`` each."""
        out = {}
        for name, d in plan.items():
            args = (self.chunk_samples, self.sample_rate, d.speed)
            audio = read_source(self.tracks[d.track], name, d.start, *args)
            if d.mixup is not None:
                audio = audio + read_source(self.tracks[d.mixup[0]], name, d.mixup[1], *args)
            out[name] = audio
        return out

    def compose(self, sources: dict[str, np.ndarray]) -> np.ndarray:
        """Targets ``(S, C, T)`` from sources by musdb's definitions."""
        return np.stack([sum(g * sources[s] for s, g in self.definitions[t].items()) for t in self.targets])

    def augmented_sources(self, index: int) -> dict[str, np.ndarray]:
        """The augmented sources of example ``index``."""
        rng = np.random.default_rng([self.seed, STREAM_TRAIN, int(index)])
        anchor = self.anchor(index)
        best, best_level = None, -math.inf
        for _ in range(1 + (self.silence_retries if self.silence_threshold_db is not None else 0)):
            raw = self.read(self.draw(rng, anchor))
            if self.silence_threshold_db is None:
                best = raw
                break
            level = min(rms_db(t) for t in self.compose(raw))
            if level > best_level:
                best, best_level = raw, level
            if level >= self.silence_threshold_db:
                break
        return {name: self.augment.apply(audio, rng) for name, audio in best.items()}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sources = self.augmented_sources(index)
        mixture = sum(sources[s] for s in self.sources)
        return {
            "mixture": torch.from_numpy(np.ascontiguousarray(mixture, dtype=np.float32)),
            "targets": torch.from_numpy(np.ascontiguousarray(self.compose(sources), dtype=np.float32)),
        }


def excerpt_starts(n_samples: int, excerpt: int, count: int) -> list[int]:
    """``count`` excerpt starts centred on ``(k + 0.5) / count`` of the track (one centred
    excerpt for ``count=1``), inside the track; one excerpt from 0 when it is too short."""
    room = n_samples - excerpt
    if room <= 0:
        return [0]
    starts = [min(max(round((k + 0.5) * n_samples / count - excerpt / 2), 0), room) for k in range(count)]
    return sorted(set(starts))


class ExcerptDataset(Dataset):
    """Fixed validation excerpts; mixture = sum of the unaugmented ``sources``."""

    def __init__(
        self,
        tracks: list[TrackRef],
        targets: list[str],
        definitions: dict[str, dict[str, float]],
        sample_rate: int,
        excerpt_samples: int,
        excerpts_per_track: int,
        *,
        sources: Sequence[str] = SOURCES,
    ) -> None:
        self.tracks = tracks
        self.sources = tuple(sources)
        self.targets = targets
        self.definitions = definitions
        self.sample_rate = sample_rate
        self.excerpt_samples = excerpt_samples
        self.items = [
            (i, start)
            for i, ref in enumerate(tracks)
            for start in excerpt_starts(ref.n_samples, frames_needed(ref, excerpt_samples, sample_rate), excerpts_per_track)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        track, start = self.items[index]
        ref = self.tracks[track]
        sources = {s: read_source(ref, s, start, self.excerpt_samples, self.sample_rate) for s in self.sources}
        targets = np.stack([sum(g * sources[s] for s, g in self.definitions[t].items()) for t in self.targets])
        return {
            "mixture": torch.from_numpy(np.ascontiguousarray(sum(sources.values()), dtype=np.float32)),
            "targets": torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32)),
        }


class FullTrackDataset(Dataset):
    """Whole tracks, one per item: ``{"name", "mixture" (C, T), "targets" (S, C, T)}``."""

    def __init__(self, tracks: list[TrackRef], targets: list[str], definitions: dict, sample_rate: int) -> None:
        self.tracks = tracks
        self.targets = targets
        self.definitions = definitions
        self.sample_rate = sample_rate

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, index: int) -> dict:
        return read_full_track(self.tracks[index], self.targets, self.definitions, self.sample_rate)


def _read_mono_stem(ref: TrackRef, source: str) -> tuple[torch.Tensor, int]:
    """The whole ``source`` stem of a track, channels averaged, at the file's rate."""
    return torch.from_numpy(read_raw(ref, source, 0, ref.n_samples).mean(axis=0)), ref.rate


# -- the DataModules ---------------------------------------------------------------
class SeparationDataModule(L.LightningDataModule):
    """What the music separation DataModules share (MUSDB18 here, Slakh2100 in
    :mod:`audiolab.data.slakh`): random-mix training chunks (:class:`RandomMixDataset`),
    fixed validation excerpts, whole test tracks, and their loaders.

    A subclass saves its hyperparameters (which must include the options read in
    :meth:`_init_common`), calls :meth:`_init_common`, and provides ``targets``,
    ``sources`` (the names every track can read), ``definitions`` (``{target: {source:
    gain}}``), :meth:`tracks` and :meth:`check_eval_targets`. Its errors are ``error``.
    """

    tasks = ("separation",)  # the task modules (``TaskModule.task``) this data serves
    error: type[AudiolabError] = AudiolabError
    sources: tuple[str, ...] = ()
    targets: list[str]
    definitions: dict[str, dict[str, float]]

    def _init_common(self) -> None:
        """Check the options every separation DataModule has and derive sizes from them."""
        hp = self.hparams
        self.sample_rate = int(hp.sample_rate)
        self.audio_channels = int(hp.audio_channels)
        self.augment = Augment.from_config(hp.augment)
        if self.sample_rate <= 0 or self.audio_channels <= 0:
            raise self.error(f"data.sample_rate and data.audio_channels must be positive, got {hp.sample_rate}, {hp.audio_channels}")
        if hp.chunk_seconds <= 0 or hp.valid_excerpt_seconds <= 0:
            raise self.error(
                f"data.chunk_seconds and data.valid_excerpt_seconds must be positive, got {hp.chunk_seconds}, {hp.valid_excerpt_seconds}"
            )
        if hp.samples_per_track < 1 or hp.valid_excerpts_per_track < 1 or hp.silence_retries < 0:
            raise self.error("data.samples_per_track and data.valid_excerpts_per_track must be >= 1, data.silence_retries >= 0")
        self.chunk_samples = round(hp.chunk_seconds * self.sample_rate)
        self.excerpt_samples = round(hp.valid_excerpt_seconds * self.sample_rate)
        self.train_set: RandomMixDataset | None = None
        self.val_set: ExcerptDataset | None = None

    def tracks(self, split: str) -> list[TrackRef]:
        """The tracks of ``split`` (train, valid or test)."""
        raise NotImplementedError

    def check_eval_targets(self, targets: Sequence[str]) -> list[str]:
        """``targets`` as references of whole tracks, validated."""
        raise NotImplementedError

    # -- datasets -----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_dataset()
        if stage in (None, "fit", "validate"):
            self.val_dataset()
        if stage in (None, "test"):
            self.tracks("test")

    def train_dataset(self) -> RandomMixDataset:
        if self.train_set is None:
            refs = self.tracks("train")
            hp = self.hparams
            long_enough = [r for r in refs if r.n_samples >= frames_needed(r, self.chunk_samples, self.sample_rate)]
            if not long_enough:
                longest = max(r.seconds for r in refs)
                raise self.error(
                    f"data.chunk_seconds={hp.chunk_seconds} is longer than every training track (the longest is "
                    f"{longest:.2f} s): lower data.chunk_seconds"
                )
            if len(long_enough) < len(refs):
                log.warning(f"{len(refs) - len(long_enough)} training track(s) are shorter than chunk_seconds={hp.chunk_seconds} and are left out")
            self.train_set = RandomMixDataset(
                long_enough, self.targets, self.definitions, self.sample_rate, self.chunk_samples,
                hp.samples_per_track, hp.seed, self.augment, hp.silence_threshold_db, hp.silence_retries,
                sources=self.sources,
            )
        return self.train_set

    def val_dataset(self) -> ExcerptDataset:
        if self.val_set is None:
            self.val_set = ExcerptDataset(
                self.tracks("valid"), self.targets, self.definitions, self.sample_rate, self.excerpt_samples,
                self.hparams.valid_excerpts_per_track, sources=self.sources,
            )
        return self.val_set

    def full_tracks(self, split: str = "test", targets: Sequence[str] | None = None) -> FullTrackDataset:
        """Whole tracks of ``split`` (``valid`` or ``test``; ``train`` works too) for
        museval evaluation, one per item. ``targets`` replaces ``data.targets`` as the
        references (museval's vocals + accompaniment mode needs accompaniment even when
        the model separates the four stems)."""
        refs = self.tracks(split)
        names = self.targets if targets is None else self.check_eval_targets(targets)
        return FullTrackDataset(refs, names, self.definitions, self.sample_rate)

    # -- loaders --------------------------------------------------------------------
    def _loader(self, dataset: Dataset, batch_size: int, sampler=None) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
            pin_memory=self.hparams.pin_memory, persistent_workers=workers > 0,
            worker_init_fn=one_thread_worker if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset()
        return self._loader(dataset, self.hparams.batch_size, EpochSampler(len(dataset)))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset(), self.hparams.eval_batch_size)

    def full_track_dataloader(self, split: str = "test") -> DataLoader:
        """Whole tracks of ``split``, batch size 1: ``name`` is a one-element list."""
        return self._loader(self.full_tracks(split), 1)

    def test_dataloader(self) -> DataLoader:
        return self.full_track_dataloader("test")


class MusdbDataModule(SeparationDataModule):
    """MUSDB18 / MUSDB18-HQ (``data=musdb``) or the synthetic look-alike (``data=musdb_synth``).

    Args:
        root: the folder holding ``train/`` and ``test/`` (and optionally ``setup.yaml``).
        is_wav: wav folders (MUSDB18-HQ, ``musdbconvert`` output) instead of ``.stem.mp4``.
        targets: the separated outputs, in this order: sources (drums, bass, other,
            vocals) or musdb's sums (accompaniment = drums + bass + other).
        sample_rate: rate the model sees; anything but 44100 resamples every file.
        audio_channels: channels every file must have (MUSDB is stereo).
        splits: for ``train``, ``valid`` and ``test``, the ``subsets`` and ``split`` passed
            to ``musdb.DB`` (missing entries keep the official split).
        chunk_seconds: length of training chunks; samples_per_track: chunks per track
            per epoch.
        silence_threshold_db, silence_retries: re-draw a training chunk when one of its
            targets is quieter than this (dB RMS re full scale; null switches it off).
        augment: options of :class:`Augment`.
        valid_excerpt_seconds, valid_excerpts_per_track: the fixed validation excerpts.
        seed: seed of the training stream (independent of the global training seed).
        batch_size, eval_batch_size, num_workers, pin_memory: loaders (whole tracks are
            loaded one at a time).
        synthetic: when set, ``prepare_data`` writes a synthetic dataset into ``root``
            with these parameters of ``write_synthetic_musdb``.
    """

    error = MusdbError
    sources = SOURCES

    def __init__(
        self,
        root: str = "data/musdb18",
        is_wav: bool = False,
        targets: Sequence[str] = ("vocals", "accompaniment"),
        sample_rate: int = MUSDB_RATE,
        audio_channels: int = 2,
        splits: dict | None = None,
        chunk_seconds: float = 6.0,
        samples_per_track: int = 64,
        silence_threshold_db: float | None = -60.0,
        silence_retries: int = 10,
        augment: dict | None = None,
        valid_excerpt_seconds: float = 10.0,
        valid_excerpts_per_track: int = 1,
        seed: int = 0,
        batch_size: int = 8,
        eval_batch_size: int = 4,
        num_workers: int = 0,
        pin_memory: bool = False,
        synthetic: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.targets = check_targets(targets, default_setup())
        self._init_common()
        self.splits = self._check_splits(splits)
        self.root = Path(root).expanduser()
        if synthetic:  # a generator that cannot run here (no fluidsynth) says so before any work
            from audiolab.data.synth_musdb import check_can_generate

            check_can_generate(self.root, **synthetic)
        self._refs: dict[str, list[TrackRef]] = {}
        self.definitions: dict[str, dict[str, float]] = target_definitions(default_setup())

    @staticmethod
    def _check_splits(splits: dict | None) -> dict[str, dict]:
        splits = dict(splits or {})
        unknown = sorted(set(splits) - set(SPLITS))
        if unknown:
            raise MusdbError(f"unknown split(s) {unknown} in data.splits; known: {list(SPLITS)}")
        out = {}
        for name in SPLITS:
            entry = {**DEFAULT_SPLITS[name], **dict(splits.get(name) or {})}
            extra = sorted(set(entry) - {"subsets", "split"})
            subsets = entry["subsets"]
            subsets = [subsets] if isinstance(subsets, str) else list(subsets)
            if extra or not subsets or any(s not in ("train", "test") for s in subsets):
                raise MusdbError(f"data.splits.{name} must be {{subsets: train|test|[train, test], split: train|valid|null}}, got {entry}")
            if entry["split"] not in (None, "train", "valid"):
                raise MusdbError(f"data.splits.{name}.split must be train, valid or null, got {entry['split']!r}")
            if entry["split"] is not None and subsets != ["train"]:
                raise MusdbError(
                    f"data.splits.{name}: split={entry['split']} selects tracks of the train subset only; "
                    f"set subsets=train or split=null (got subsets={subsets})"
                )
            out[name] = {"subsets": subsets, "split": entry["split"]}
        return out

    # -- files ------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Write the synthetic dataset when ``synthetic`` is set (a no-op once complete)."""
        if self.hparams.synthetic:
            from audiolab.data.synth_musdb import write_synthetic_musdb

            write_synthetic_musdb(self.root, **self.hparams.synthetic)

    def _setup_file(self) -> str | None:
        return "setup.yaml" if (self.root / "setup.yaml").is_file() else None

    def _db(self, subsets: list[str], split: str | None):
        import musdb

        return musdb.DB(root=str(self.root), setup_file=self._setup_file(), is_wav=self.hparams.is_wav, subsets=subsets, split=split)

    def tracks(self, split: str) -> list[TrackRef]:
        """The tracks of ``split`` (train, valid or test), listed and checked once."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if split in self._refs:
            return self._refs[split]
        if self.hparams.synthetic:
            from audiolab.data.synth_musdb import is_complete

            if not is_complete(self.root, **self.hparams.synthetic):
                self.prepare_data()
        self._check_root()
        entry = self.splits[split]
        db = self._db(entry["subsets"], entry["split"])
        self.definitions = target_definitions(db.setup)
        check_targets(self.targets, db.setup)
        if len(db) == 0:
            raise MusdbError(self._empty_split_message(split, entry))
        self._refs[split] = [self._ref(track) for track in db]
        return self._refs[split]

    def _count_tracks(self, subset: str, is_wav: bool) -> int:
        folder = self.root / subset
        if not folder.is_dir():
            return 0
        if is_wav:
            return sum(1 for p in folder.iterdir() if p.is_dir() and any(p.glob("*.wav")))
        return sum(1 for _ in folder.glob("*.stem.mp4"))

    def _check_root(self) -> None:
        """One error that says everything when the root holds no tracks at all."""
        is_wav = self.hparams.is_wav
        if any(self._count_tracks(s, is_wav) for s in ("train", "test")):
            return
        other = sum(self._count_tracks(s, not is_wav) for s in ("train", "test"))
        kind = "train/<track>/{mixture,drums,bass,other,vocals}.wav" if is_wav else "train/*.stem.mp4"
        hint = ""
        if other:
            hint = (
                f" It holds {other} track(s) in the other format: set data.is_wav={'false' if is_wav else 'true'}."
            )
        state = "does not exist" if not self.root.exists() else f"holds no MUSDB tracks (looked for {kind} and the same under test/)"
        raise MusdbNotFoundError(
            f"MUSDB18 not found: {self.root} {state}.{hint} Point data.root=/path/to/musdb18 (or the MUSDB_PATH "
            "environment variable) at the folder holding train/ and test/; MUSDB18 (stems) and MUSDB18-HQ (wav) are "
            "on Zenodo (records 1117372 and 3338373, on request). For wav folders also set data.is_wav=true; stems "
            "convert to wav (fast training reads) with `musdbconvert <stems root> <wav root>` from the musdb package. "
            "No dataset? data=musdb_synth generates a small synthetic one."
        )

    def _empty_split_message(self, split: str, entry: dict) -> str:
        subsets, which = entry["subsets"], entry["split"]
        missing = [s for s in subsets if not (self.root / s).is_dir()]
        where = f"musdb.DB(root={str(self.root)!r}, subsets={subsets}, split={which}, is_wav={self.hparams.is_wav})"
        if missing:
            return (
                f"no {split} tracks: {where} found none because {', '.join(str(self.root / s) for s in missing)} does "
                f"not exist (the 7-second MUSDB18 preview sample has train/ only). Point data.splits.{split} at tracks "
                f"that exist, e.g. data.splits.{split}.subsets=train data.splits.{split}.split=null."
            )
        setup = self.root / "setup.yaml" if self._setup_file() else Path("musdb/configs/mus.yaml")
        if which == "valid":
            reason = f"none of the tracks in {self.root / 'train'} is named in validation_tracks of {setup}"
            fix = f"data.splits.{split}.split=null uses every train track, or list validation tracks in {self.root / 'setup.yaml'}"
        elif which == "train":
            reason = f"every track in {self.root / 'train'} is a validation track of {setup}"
            fix = f"data.splits.{split}.split=null uses every train track"
        else:
            reason = "its folders hold no tracks in this format"
            fix = f"check data.is_wav={self.hparams.is_wav}"
        return f"no {split} tracks: {where} found none: {reason}. Fix: {fix}."

    def _ref(self, track) -> TrackRef:
        """Check one musdb track (sources, rate, channels) and describe it."""
        if self.hparams.is_wav:
            folder = Path(track.path).parent
            files = {name: Path(source.path) for name, source in (track.sources or {}).items()}
            missing = [s for s in SOURCES if s not in files]
            if missing:
                raise MusdbError(f"track {track.name!r} in {folder} lacks {', '.join(f'{s}.wav' for s in missing)}; every track needs {', '.join(SOURCES)}")
            if Path(track.path).is_file():
                files["mixture"] = Path(track.path)
            infos = {name: sf.info(str(path)) for name, path in files.items()}
            for name, info in infos.items():
                self._check_format(files[name], info.samplerate, info.channels)
            rates = {info.samplerate for info in infos.values()}
            if len(rates) > 1:
                raise MusdbError(f"the files of track {track.name!r} in {folder} have different sample rates {sorted(rates)}; convert them to 44100 Hz")
            n = min(info.frames for name, info in infos.items())
            return TrackRef(track.name, track.subset, rates.pop(), n, {k: str(v) for k, v in files.items()}, track)
        info = track.info
        if info is None or info.nb_audio_streams < 1 + len(SOURCES):
            streams = 0 if info is None else info.nb_audio_streams
            raise MusdbError(
                f"{track.path} has {streams} audio stream(s); a MUSDB18 stem file has 5 (mixture, drums, bass, other, vocals)"
            )
        for k in range(1 + len(SOURCES)):
            self._check_format(Path(track.path), info.sample_rate(k), info.channels(k))
        n = min(info.samples(k) for k in range(1 + len(SOURCES)))
        return TrackRef(track.name, track.subset, int(track.rate), n, None, track)

    def _check_format(self, path: Path, rate: int, channels: int) -> None:
        if channels != self.audio_channels:
            raise MusdbError(
                f"{path} has {channels} channel(s) but data.audio_channels={self.audio_channels} (MUSDB18 is stereo): "
                f"convert it, e.g. ffmpeg -i in.wav -ac {self.audio_channels} out.wav"
            )
        if rate != MUSDB_RATE and self.sample_rate == MUSDB_RATE:
            raise MusdbError(
                f"{path} is at {rate} Hz but MUSDB18 is 44100 Hz and data.sample_rate=44100 asks for no resampling: "
                "convert the file to 44.1 kHz (e.g. ffmpeg -i in.wav -ar 44100 out.wav), or set data.sample_rate to "
                "the rate the model should see to resample every file as it is read"
            )

    def check_eval_targets(self, targets: Sequence[str]) -> list[str]:
        return check_targets(targets, {"targets": self.definitions})

    def audio_clips(self, split: str, source: str = "vocals") -> list[AudioClip]:
        """One stem (``source``: drums, bass, other or vocals) of every track of ``split``
        (train, valid or test) as a whole mono clip (channels averaged) at the file's rate,
        read on demand."""
        if source not in SOURCES:
            raise MusdbError(f"audio_clips reads one stem: source must be one of {list(SOURCES)}, got {source!r}")
        clips = []
        for ref in self.tracks(split):
            path = Path(ref.files[source] if ref.files is not None else ref.track.path)
            name = f"{ref.subset}/{ref.name}/{source}"
            clips.append(AudioClip(name, file_identity(name, path), functools.partial(_read_mono_stem, ref, source)))
        return clips
