"""Pitch training data mixed from several sources (``data=pitch_mix``, ``data=pitch_fsdd``).

Sources are configured by name, each with a weight:

- :class:`SynthSource`: the synthetic tones of a :class:`SynthPitchDataModule` (exact f0).
- :class:`TeacherSource`: real recordings listed by a shared DataModule (FSDD speech
  through :meth:`FsddDataModule.audio_clips`, a MUSDB18 stem - the vocals - through
  :meth:`MusdbDataModule.audio_clips`), labelled by a teacher
  (:mod:`audiolab.pitch.teacher`) once and cached (:mod:`audiolab.data.pitch_corpus`). A
  share ``resynth`` of its examples is resynthesised on the teacher's f0, so that their
  labels are exact.

Training examples are single 1024-sample frames (``{"frames": (1, 1024), "f0": (1,),
"voiced": (1,), "times": (1,)}``, the contract of :class:`PitchModule`; ``times`` is the
frame's centre in its clip, seconds). Example ``i`` picks its source
with ``numpy.random.default_rng([seed, STREAM_MIX, i])`` and its content with a
generator seeded by ``i`` and the source (see each source), so the stream is a pure
function of ``(seed, epoch, index)``: the same for any ``num_workers``, and different on
every DDP rank (Lightning gives each rank its share of :class:`EpochSampler`'s indices).
Validation and test are whole clips (or fixed segments of them) of the sources named in
``val_sources`` / ``test_sources``, concatenated; a batch of clips of different lengths
is padded with silent, unvoiced frames at time ``inf`` (:func:`pitch_eval.pad_collate`).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from audiolab.audio.pitch_grid import FRAME_LENGTH, SAMPLE_RATE
from audiolab.data import speech_synth
from audiolab.data.pitch_corpus import (
    INT16_SCALE,
    PitchCorpus,
    cache_audio,
    cache_labels,
    cache_rendered,
)
from audiolab.data.pitch_eval import pad_collate
from audiolab.data.sampling import EpochSampler
from audiolab.data.synth_pitch import SynthPitchDataModule, SynthToneRenderer
from audiolab.pitch.teacher import Teacher, TeacherConfig
from audiolab.utils.errors import AudiolabError
from audiolab.utils.threads import one_thread_worker

log = logging.getLogger("audiolab")

STREAM_MIX = 7  # the synthetic tones use streams 0-2; real sources 1000 and up
STREAM_AUGMENT = 8
SPLITS = ("train", "val", "test")


class PitchMixError(AudiolabError):
    """A pitch mix that cannot be built as configured."""


@dataclass(frozen=True)
class Labelling:
    """What every teacher-labelled source of one mix shares."""

    teacher: Teacher
    cache_dir: Path
    voicing_threshold: float
    seed: int
    progress: bool


class SynthSource:
    """Synthetic tones with exact labels, from ``data`` (a :class:`SynthPitchDataModule`,
    whose own seed and settings apply; its val and test clips are the ones of
    ``data=synth_pitch``)."""

    def __init__(self, data: SynthPitchDataModule, weight: float = 1.0) -> None:
        self.data = data
        self.weight = float(weight)

    def bind(self, name: str, hop_length: int, labelling: Labelling) -> None:
        hp = self.data.hparams
        if (hp.sample_rate, hp.frame_length, hp.hop_length) != (SAMPLE_RATE, FRAME_LENGTH, hop_length):
            raise PitchMixError(
                f"source {name!r}: synthetic tones at sample_rate={hp.sample_rate}, frame_length={hp.frame_length}, "
                f"hop_length={hp.hop_length} do not match the mix ({SAMPLE_RATE}, {FRAME_LENGTH}, {hop_length}): "
                f"set data.sources.{name}.data.hop_length={hop_length} (and the CREPE rate and frame)"
            )

    def prepare(self, split: str) -> None:
        """Nothing to prepare: tones are rendered on the fly."""

    def setup(self, split: str) -> None:
        """Nothing to load."""

    def train_items(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        return self.data.train_set.__getitems__(indices)

    def eval_set(self, split: str) -> Dataset:
        return self.data.val_set if split == "val" else self.data.test_set


class TeacherSource:
    """Real recordings with teacher labels.

    Args:
        data: a DataModule with ``audio_clips(split)`` (FSDD, MUSDB18).
        weight: share of training examples (relative to the other sources).
        splits: the DataModule's name of the ``train``, ``val`` and ``test`` splits
            (MUSDB18 calls validation ``valid``).
        resynth: probability that a training example is a tone resynthesised on the
            teacher's f0 (exact labels) instead of the recording.
        voiced_prob: probability that a training frame is drawn from the voiced frames
            (else from the unvoiced ones); null draws frames uniformly.
        eval_seconds: validation/test items are segments of this length (null: whole clips).
        eval_segments: at most this many segments per clip, evenly spaced (null: all).
        renderer: options of the :class:`SynthToneRenderer` that resynthesises (partials,
            noise); its contour options do not apply.
    """

    def __init__(
        self,
        data: L.LightningDataModule,
        weight: float = 1.0,
        splits: dict[str, str] | None = None,
        resynth: float = 0.0,
        voiced_prob: float | None = 0.8,
        eval_seconds: float | None = None,
        eval_segments: int | None = None,
        renderer: dict | None = None,
    ) -> None:
        if not hasattr(data, "audio_clips"):
            raise PitchMixError(f"{type(data).__name__} lists no audio clips (no audio_clips method): use FSDD or MUSDB18")
        self.data = data
        self.weight = float(weight)
        self.splits = {**{s: s for s in SPLITS}, **dict(splits or {})}
        for name, value in (("resynth", resynth), ("voiced_prob", voiced_prob)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise PitchMixError(f"{name} is a probability, got {value}")
        if (eval_seconds is not None and eval_seconds <= 0) or (eval_segments is not None and eval_segments < 1):
            raise PitchMixError(f"eval_seconds must be positive and eval_segments >= 1, got {eval_seconds}, {eval_segments}")
        self.resynth = float(resynth)
        self.voiced_prob = voiced_prob
        self.eval_seconds = eval_seconds
        self.eval_segments = eval_segments
        self.renderer = SynthToneRenderer(sample_rate=SAMPLE_RATE, **(renderer or {}))
        self.corpora: dict[str, PitchCorpus] = {}
        self._pools: list[np.ndarray] = []  # global indices of the voiced, unvoiced training frames

    def bind(self, name: str, hop_length: int, labelling: Labelling) -> None:
        self.name = name
        self.hop_length = hop_length
        self.labelling = labelling
        # a stream of its own, stable under adding or removing other sources
        self.stream = 1000 + zlib.crc32(name.encode()) % 1_000_000

    def _caches(self, split: str) -> tuple[Path, Path]:
        lab = self.labelling
        clips = self.data.audio_clips(self.splits[split])
        audio = cache_audio(clips, lab.cache_dir, lab.progress)
        return audio, cache_labels(audio, lab.teacher, lab.cache_dir, lab.progress)

    def prepare(self, split: str) -> None:
        """Write the audio and label caches of ``split`` when missing."""
        self._caches(split)

    def setup(self, split: str) -> None:
        """Load ``split`` (before loader workers start, so they share it)."""
        self.corpus(split)

    def corpus(self, split: str) -> PitchCorpus:
        if split not in self.corpora:
            audio, labels = self._caches(split)
            corpus = PitchCorpus(audio, labels, self.hop_length, self.labelling.voicing_threshold)
            self.corpora[split] = corpus
            log.info(
                f"pitch source {self.name} {split}: {len(corpus)} clips, {corpus.frame_offsets[-1]} frames, "
                f"{corpus.voiced.mean():.1%} voiced"
            )
            if split == "train":
                self._pools = [np.flatnonzero(corpus.voiced), np.flatnonzero(~corpus.voiced)]
        return self.corpora[split]

    def train_items(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        corpus = self.corpus("train")
        frames, params, resynth = [], [], []
        for i in indices:
            rng = np.random.default_rng([self.labelling.seed, self.stream, int(i)])
            u = rng.random(3)
            if self.voiced_prob is None:
                frames.append(int(u[1] * corpus.frame_offsets[-1]))
            else:  # an empty pool (no voiced frame at all) falls back to the other
                pool = self._pools[int(u[0] >= self.voiced_prob)]
                pool = pool if len(pool) else self._pools[int(u[0] < self.voiced_prob)]
                frames.append(pool[int(u[1] * len(pool))])
            resynth.append(u[2] < self.resynth)
            if resynth[-1]:
                params.append(self.renderer.draw(rng, FRAME_LENGTH))
        clip, frame = corpus.locate(np.asarray(frames))
        resynth = np.asarray(resynth)
        audio = torch.from_numpy(corpus.frames(clip, frame))
        if resynth.any():
            audio[torch.from_numpy(resynth)] = corpus.resynthesize(clip[resynth], frame[resynth], self.renderer, params, FRAME_LENGTH)
        f0, voiced = corpus.labels(clip, frame)
        f0, voiced = torch.from_numpy(f0), torch.from_numpy(voiced)
        times = torch.from_numpy(frame * (self.hop_length / SAMPLE_RATE))
        return [
            {
                "frames": audio[b : b + 1], "f0": f0[b : b + 1], "voiced": voiced[b : b + 1],
                "times": times[b : b + 1], "index": torch.tensor(int(i)),
            }
            for b, i in enumerate(indices)
        ]

    def eval_set(self, split: str) -> Dataset:
        return ClipSegments(self.corpus(split), self.eval_seconds, self.eval_segments)


class SpeechSource(TeacherSource):
    """Speech-like audio with exact labels (:mod:`audiolab.data.speech_synth`), rendered once
    per split into the pitch cache and then read like any teacher-labelled corpus.

    Args:
        kind: ``glottal``: synthetic utterances (a glottal source through moving formants,
            :func:`~audiolab.data.speech_synth.render_utterance`), ``clips[split]`` of
            ``seconds`` each; ``resynth``: every recording of ``data.audio_clips(split)``
            (labelled by the mix's teacher) resynthesised ``variants`` times on the
            teacher's f0 and voicing with the recording's own spectral envelope
            (:func:`~audiolab.data.speech_synth.resynthesize`), so the labels are exact.
        data: the DataModule listing the recordings (``resynth`` only).
        degrade: share of clips that pass through a random degradation (noise, reverb,
            band limits, clipping: :func:`~audiolab.data.speech_synth.draw_degradation`).
        weight, splits, voiced_prob, eval_seconds, eval_segments: as :class:`TeacherSource`.
    """

    KINDS = ("glottal", "resynth")

    def __init__(
        self,
        kind: str,
        data: L.LightningDataModule | None = None,
        weight: float = 1.0,
        splits: dict[str, str] | None = None,
        clips: dict[str, int] | None = None,
        seconds: float = 2.0,
        variants: int = 1,
        degrade: float = 0.0,
        voiced_prob: float | None = 0.8,
        eval_seconds: float | None = None,
        eval_segments: int | None = None,
    ) -> None:
        if kind not in self.KINDS:
            raise PitchMixError(f"unknown speech source kind {kind!r}: use one of {', '.join(self.KINDS)}")
        if kind == "resynth":
            super().__init__(data, weight, splits, 0.0, voiced_prob, eval_seconds, eval_segments)
        else:
            super().__init__(_NoClips(), weight, splits, 0.0, voiced_prob, eval_seconds, eval_segments)
        self.clips = {"train": 2000, "val": 50, "test": 50, **dict(clips or {})}
        if kind == "glottal" and (seconds <= 0 or any(n < 1 for n in self.clips.values())):
            raise PitchMixError(f"glottal speech needs seconds > 0 and clips >= 1 per split, got {seconds}, {self.clips}")
        if variants < 1 or not 0.0 <= degrade <= 1.0:
            raise PitchMixError(f"variants must be >= 1 and degrade a probability, got {variants}, {degrade}")
        self.kind, self.seconds, self.variants, self.degrade = kind, float(seconds), int(variants), float(degrade)

    def _caches(self, split: str) -> tuple[Path, Path]:
        lab = self.labelling
        identity = {"kind": self.kind, "seed": lab.seed, "stream": self.stream, "split": split, "degrade": self.degrade}
        if self.kind == "glottal":
            identity |= {"clips": self.clips[split], "seconds": self.seconds}
            n_items = self.clips[split]

            def source(i: int, rng: np.random.Generator):
                utterance = speech_synth.draw_utterance(rng, self.seconds)
                return (f"glottal-{split}-{i}", *speech_synth.render_utterance(utterance, rng))
        else:
            audio_dir, label_dir = super()._caches(split)
            real = PitchCorpus(audio_dir, label_dir, self.hop_length, lab.voicing_threshold)
            identity |= {"audio": audio_dir.name, "labels": label_dir.name, "variants": self.variants}
            n_items = len(real) * self.variants

            def source(i: int, rng: np.random.Generator):
                clip = i // self.variants
                a, b = real.sample_offsets[clip], real.sample_offsets[clip + 1]
                audio = torch.from_numpy(real.audio[a:b].astype(np.float32) / np.float32(INT16_SCALE))
                frames = np.arange(real.n_frames[clip])
                f0, voiced = (torch.from_numpy(x) for x in real.labels(np.full_like(frames, clip), frames))
                return f"{real.names[clip]}-{i % self.variants}", speech_synth.resynthesize(audio, f0, voiced, rng), f0, voiced

        def render(i: int):
            rng = np.random.default_rng([lab.seed, self.stream, SPLITS.index(split), i])
            name, audio, f0, voiced = source(i, rng)
            if rng.random() < self.degrade:
                audio = speech_synth.degrade(audio, rng, **speech_synth.draw_degradation(rng, "train"))
            return name, audio, f0, voiced

        return cache_rendered(lab.cache_dir, identity, n_items, render, self.hop_length, lab.progress)


class _NoClips:
    """The stand-in ``data`` of a source that renders its own clips."""

    def audio_clips(self, split: str) -> list:
        return []


class ClipSegments(Dataset):
    """Whole clips of a corpus, or fixed segments of ``seconds`` (at most ``segments`` per
    clip, evenly spaced): ``{"frames": (T, 1024), "f0": (T,), "voiced": (T,), "times": (T,),
    "index"}``, ``times`` the frame centres in the clip (seconds)."""

    def __init__(self, corpus: PitchCorpus, seconds: float | None = None, segments: int | None = None) -> None:
        self.corpus = corpus
        self.items: list[tuple[int, int, int]] = []  # (clip, first frame, frames)
        size = None if seconds is None else max(1, round(seconds * SAMPLE_RATE / corpus.hop_length))
        for clip, n in enumerate(corpus.n_frames.tolist()):
            if size is None or n <= size:
                self.items.append((clip, 0, n))
                continue
            starts = np.arange(0, n - size + 1, size)
            if segments is not None and len(starts) > segments:
                starts = starts[np.linspace(0, len(starts) - 1, segments).round().astype(int)]
            self.items += [(clip, int(s), size) for s in starts]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        clip, first, n = self.items[index]
        clips, frames = np.full(n, clip), first + np.arange(n)
        f0, voiced = self.corpus.labels(clips, frames)
        return {
            "frames": torch.from_numpy(self.corpus.frames(clips, frames)),
            "f0": torch.from_numpy(f0),
            "voiced": torch.from_numpy(voiced),
            "times": torch.from_numpy(frames * (self.corpus.hop_length / SAMPLE_RATE)),
            "index": torch.tensor(index),
        }


class PitchMixDataset(Dataset):
    """``size`` training examples per epoch drawn from the sources by weight; a batch is
    rendered per source in one call (``__getitems__``). With ``augment`` > 0, that share of
    the frames gets random noise, band limits, clipping, gain and DC
    (:func:`~audiolab.data.speech_synth.augment_frames`), drawn from the batch's indices."""

    def __init__(self, sources: dict[str, SynthSource | TeacherSource], size: int, seed: int, augment: float = 0.0) -> None:
        self.sources = [s for s in sources.values() if s.weight > 0]
        weights = np.array([s.weight for s in self.sources])
        self.cumulative = np.cumsum(weights) / weights.sum()
        self.cumulative[-1] = 1.0
        self.size = size
        self.seed = seed
        self.augment = augment

    def __len__(self) -> int:
        return self.size

    def choose(self, indices: Sequence[int]) -> np.ndarray:
        """The source of each example."""
        u = np.array([np.random.default_rng([self.seed, STREAM_MIX, int(i)]).random() for i in indices])
        return np.searchsorted(self.cumulative, u, side="right")

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        choice = self.choose(indices)
        out: list[dict | None] = [None] * len(indices)
        for s, source in enumerate(self.sources):
            where = np.flatnonzero(choice == s)
            if len(where):
                for w, item in zip(where, source.train_items([int(indices[w]) for w in where]), strict=True):
                    out[w] = item
        if self.augment > 0 and out:
            rng = np.random.default_rng([self.seed, STREAM_AUGMENT, *(int(i) for i in indices)])
            frames = speech_synth.augment_frames(torch.cat([item["frames"] for item in out]), rng, p=self.augment)
            for item, frame in zip(out, frames.split(1), strict=True):
                item["frames"] = frame
        return out

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]


class PitchMixDataModule(L.LightningDataModule):
    """Synthetic and teacher-labelled real pitch data, mixed by weight.

    Args:
        sources: ``{name: SynthSource | TeacherSource}``; a source with weight 0 is only
            read when it is in ``val_sources`` or ``test_sources``.
        val_sources, test_sources: the sources whose val / test clips are evaluated
            (concatenated).
        teacher: options of :class:`TeacherConfig` (one teacher for all real sources).
        cache_dir: where audio and label caches are written.
        hop_length: label hop in samples at 16 kHz (and of the evaluation clips).
        voicing_threshold: a frame is voiced when the teacher's periodicity reaches this.
        batch_size: training frames per batch; eval_batch_size: clips per eval batch.
        train_batches_per_epoch: epoch length.
        seed: seed of the mix and of the real sources' draws.
        augment: share of training frames augmented (:class:`PitchMixDataset`).
        progress: progress bars while caching.
    """

    tasks = ("pitch",)  # the task modules (``TaskModule.task``) this data serves

    def __init__(
        self,
        sources: dict[str, SynthSource | TeacherSource],
        val_sources: Sequence[str],
        test_sources: Sequence[str],
        teacher: dict | None = None,
        cache_dir: str = "data/cache/pitch",
        hop_length: int = 160,
        voicing_threshold: float = 0.5,
        batch_size: int = 32,
        eval_batch_size: int = 8,
        train_batches_per_epoch: int = 300,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        progress: bool = True,
        augment: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["sources"])
        if not 0.0 <= augment <= 1.0:
            raise PitchMixError(f"data.augment is the share of augmented training frames, in [0, 1]; got {augment}")
        if not sources:
            raise PitchMixError("data.sources is empty: name at least one source")
        for key, names in (("val_sources", val_sources), ("test_sources", test_sources)):
            unknown = sorted(set(names) - set(sources))
            if unknown or not names:
                raise PitchMixError(f"data.{key}={list(names)} must name some of the sources {sorted(sources)}")
        weights = {name: s.weight for name, s in sources.items()}
        if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise PitchMixError(f"source weights must be >= 0 with at least one > 0, got {weights}")
        self.sample_rate = SAMPLE_RATE
        self.sources = dict(sources)
        labelling = Labelling(
            Teacher(TeacherConfig(**(teacher or {})), hop_length), Path(cache_dir).expanduser(),
            voicing_threshold, seed, progress,
        )
        for name, source in self.sources.items():
            source.bind(name, hop_length, labelling)
        self.train_set: PitchMixDataset | None = None

    def needed(self) -> dict[str, list[str]]:
        """The splits read from each source."""
        hp = self.hparams
        return {
            name: [s for s, on in zip(SPLITS, (src.weight > 0, name in hp.val_sources, name in hp.test_sources), strict=True) if on]
            for name, src in self.sources.items()
        }

    def prepare_data(self) -> None:
        """Read and label every needed split of every real source (once per config)."""
        for name, splits in self.needed().items():
            for split in splits:
                self.sources[name].prepare(split)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        for name, splits in self.needed().items():
            for split in splits:
                self.sources[name].setup(split)
        hp = self.hparams
        self.train_set = PitchMixDataset(self.sources, hp.train_batches_per_epoch * hp.batch_size, hp.seed, hp.augment)

    def eval_set(self, split: str) -> ConcatDataset:
        names = self.hparams.val_sources if split == "val" else self.hparams.test_sources
        return ConcatDataset([self.sources[name].eval_set(split) for name in names])

    def _loader(self, dataset: Dataset, batch_size: int, sampler=None, collate_fn=None) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
            pin_memory=self.hparams.pin_memory, persistent_workers=workers > 0, collate_fn=collate_fn,
            worker_init_fn=one_thread_worker if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, self.hparams.batch_size, EpochSampler(len(self.train_set)))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_set("val"), self.hparams.eval_batch_size, collate_fn=pad_collate)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_set("test"), self.hparams.eval_batch_size, collate_fn=pad_collate)
