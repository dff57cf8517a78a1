"""Real recordings with a reference f0 track, for evaluating pitch models
(``data=mdb_stem_synth``).

A dataset folder holds audio files and, for each, a CSV ``time,f0`` (seconds, Hz; 0 =
unvoiced; a header line is optional) with the same name stem, anywhere below the root:
MDB-stem-synth keeps them in ``audio_stems/X.RESYN.wav`` and ``annotation_stems/X.RESYN.csv``,
its excerpt in ``../shared/data/pitch`` side by side. Each item is a whole clip, framed as
:func:`audiolab.pitch.predict` frames it, with the reference on its own time base: metrics
are computed there, after resampling the estimate onto it (as ``mir_eval.melody`` does).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from audiolab.audio.io import AUDIO_SUFFIXES, read_audio
from audiolab.audio.pitch_grid import (
    FRAME_LENGTH,
    HOP_LENGTH,
    SAMPLE_RATE,
    cents_to_hz,
    hz_to_cents,
)
from audiolab.metrics.pitch import resample_estimate
from audiolab.pitch.inference import frame_audio, prepare_audio
from audiolab.utils.errors import AudiolabError

# how each padded key of a batch is filled: padded frame and reference times are marked
# invalid (inf / NaN), which the metrics read as "not a frame"
PAD_VALUES = {"frames": 0.0, "f0": 0.0, "voiced": False, "times": torch.inf, "ref_times": torch.nan, "ref_f0": 0.0}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_f0_csv(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A reference f0 track ``time,f0`` (s, Hz; 0 = unvoiced) as float64 ``(times, f0)``."""
    path = Path(path)
    try:
        first = path.read_text().lstrip().split("\n", 1)[0]
        table = np.loadtxt(path, delimiter=",", skiprows=int(not _is_number(first.split(",")[0])), ndmin=2)
    except (OSError, ValueError) as exc:
        raise AudiolabError(f"cannot read the f0 track {path}: {exc}; it must be a CSV of time,f0 rows") from None
    if table.shape[0] == 0 or table.shape[1] < 2:
        raise AudiolabError(f"{path} holds no time,f0 rows (got shape {table.shape}): it must be a CSV of time,f0")
    times, f0 = torch.from_numpy(table[:, 0].copy()), torch.from_numpy(table[:, 1].copy())
    if not (torch.isfinite(times).all() and torch.isfinite(f0).all()):
        raise AudiolabError(f"{path} contains NaN or infinite values: every row must be a time and an f0 (0 = unvoiced)")
    if times[0] < 0 or (times.diff() <= 0).any():
        raise AudiolabError(f"{path}: times must start at 0 s or later and increase from row to row")
    if (f0 < 0).any():
        raise AudiolabError(f"{path} has negative f0 values: mark unvoiced frames with 0")
    return times, f0


def reference_at(times: torch.Tensor, ref_times: torch.Tensor, ref_f0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference f0 (Hz, 0 where unvoiced) and voicing at other ``times``, resampled as
    an estimate would be (:func:`~audiolab.metrics.pitch.resample_estimate`): for the
    training loss and plots, which need it on the network's frames."""
    cents = torch.where(ref_f0 > 0, hz_to_cents(ref_f0.clamp_min(1e-12)), torch.nan)
    at, voiced = resample_estimate(ref_times, cents, ref_f0 > 0, times)
    return torch.nan_to_num(cents_to_hz(at), nan=0.0).float(), voiced & torch.isfinite(at)


def find_f0_pairs(root: str | Path) -> list[tuple[Path, Path]]:
    """``(audio, csv)`` pairs below ``root``, matched by name stem, sorted."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise AudiolabError(
            f"pitch evaluation data not found at {root}: set data.root=<folder with audio files and their "
            "time,f0 CSVs> (for MDB-stem-synth also $MDB_STEM_SYNTH_ROOT; its 3-s excerpt is in "
            "../shared/data/pitch/mdb-stem-synth-excerpt)"
        )
    audio = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES):
        audio.setdefault(path.stem, path)
    tracks = sorted(root.rglob("*.csv"))
    if not tracks:
        raise AudiolabError(f"no time,f0 CSV files under {root}: each audio file needs a <name>.csv beside it")
    orphans = [str(c) for c in tracks if c.stem not in audio]
    if orphans:
        raise AudiolabError(
            f"no audio file with the name stem of {', '.join(orphans[:5])}"
            f"{' ...' if len(orphans) > 5 else ''} under {root}: each <name>.csv needs a <name>.wav (or flac, mp3, ...)"
        )
    return [(audio[c.stem], c) for c in tracks]


class F0TrackDataset(Dataset):
    """Whole clips with their reference f0: ``frames`` ``(T, 1024)`` at 16 kHz, ``times``
    ``(T,)`` (frame centres, s), ``f0``/``voiced`` ``(T,)`` (the reference at the frame
    centres, for the loss), ``ref_times``/``ref_f0`` ``(M,)`` (the reference as given)."""

    def __init__(self, pairs: list[tuple[Path, Path]], hop_length: int = HOP_LENGTH) -> None:
        self.pairs = pairs
        self.hop_length = hop_length

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        audio_path, csv_path = self.pairs[index]
        audio, rate = read_audio(audio_path)
        x, _ = prepare_audio(audio, rate)
        frames = frame_audio(x[0], self.hop_length)
        times = torch.arange(frames.shape[0], dtype=torch.float64) * (self.hop_length / SAMPLE_RATE)
        ref_times, ref_f0 = read_f0_csv(csv_path)
        f0, voiced = reference_at(times, ref_times, ref_f0)
        return {
            "frames": frames.contiguous(),
            "times": times,
            "f0": f0,
            "voiced": voiced,
            "ref_times": ref_times,
            "ref_f0": ref_f0,
            "index": torch.tensor(index),
        }


def pad_collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Clips of different lengths in one batch: each key padded at the end (see
    :data:`PAD_VALUES`); padded frames have time ``inf``, padded reference times NaN."""
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key in PAD_VALUES:
            batch[key] = torch.nn.utils.rnn.pad_sequence(values, batch_first=True, padding_value=PAD_VALUES[key])
        else:
            batch[key] = torch.stack(values)
    return batch


class PitchEvalDataModule(L.LightningDataModule):
    """A real-f0 evaluation set (``data=mdb_stem_synth``): ``test`` only (``trainer.test``,
    ``eval.py``); validation uses the same clips when a run asks for it.

    Args:
        root: folder of audio files and their ``time,f0`` CSVs (see the module docstring).
        name: the dataset's name in reports.
        attribution: credit and licence of the data, printed in every report made from it.
        hop_length: frame hop in samples at 16 kHz.
        frame_length: must be 1024 (CREPE's frame; kept for the config's symmetry with
            ``synth_pitch``).
        batch_size: whole clips per batch (padded to the longest).
    """

    tasks = ("pitch",)  # the task modules (``TaskModule.task``) this data serves

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        root: str,
        name: str = "mdb_stem_synth",
        attribution: str | None = None,
        hop_length: int = HOP_LENGTH,
        frame_length: int = FRAME_LENGTH,
        batch_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if frame_length != FRAME_LENGTH:
            raise ValueError(f"data.frame_length must be {FRAME_LENGTH} (CREPE's frame at 16 kHz), got {frame_length}")
        self.save_hyperparameters(logger=False)
        self.name = name
        self.attribution = attribution
        self._dataset: F0TrackDataset | None = None

    @property
    def dataset(self) -> F0TrackDataset:
        if self._dataset is None:
            self._dataset = F0TrackDataset(find_f0_pairs(self.hparams.root), self.hparams.hop_length)
        return self._dataset

    def setup(self, stage: str | None = None) -> None:
        _ = self.dataset  # a missing or incomplete folder fails here, before any work

    def train_dataloader(self) -> DataLoader:
        raise AudiolabError(
            f"data={self.name} is an evaluation set: use it with eval.py ckpt=... data={self.name}, "
            "and train on a training set (e.g. data=synth_pitch)"
        )

    def _loader(self) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            self.dataset,
            batch_size=self.hparams.batch_size,
            shuffle=False,
            num_workers=workers,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=workers > 0,
            collate_fn=pad_collate,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader()

    def test_dataloader(self) -> DataLoader:
        return self._loader()
