"""Free Spoken Digit Dataset (FSDD): ``{digit}_{speaker}_{index}.wav``, 8 kHz mono.

Official split: takes 0-4 of every digit and speaker are the test set, 5-49 train. The
validation set is a fixed range of takes carved out of train (5-9 by default), so it is
balanced over digits and speakers and never changes.

Features are computed once for every file, in batches of torch, and cached on disk as
``.npy`` files (memory-mapped when read) in a folder named by a hash of everything
they depend on: the feature config and the list of files with their sizes. A changed
config or a changed folder never reads a stale cache.

Tasks that read the recordings themselves (teacher-labelled pitch data) get the files of
a split, with the same split and filters, from :meth:`FsddDataModule.audio_clips`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch.utils.data import DataLoader, Dataset

from audiolab.audio.features import LogSpectrogram, min_max_normalise, pad_or_trim
from audiolab.data.clips import AudioClip, file_identity
from audiolab.utils.atomic import atomic_write
from audiolab.utils.cache import config_hash
from audiolab.utils.errors import AudiolabError

log = logging.getLogger("audiolab")

FSDD_URL = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.zip"
FILE_PATTERN = re.compile(r"^(?P<digit>\d)_(?P<speaker>[A-Za-z]+)_(?P<index>\d+)\.wav$")
FEATURES = ("log_spectrogram", "log_mel", "waveform")
CACHE_FORMAT = 1


class FsddError(AudiolabError):
    """FSDD is missing, or one of its files is bad."""


@dataclass(frozen=True)
class FsddFile:
    path: Path
    digit: int
    speaker: str
    index: int


def find_recordings(root: str | Path) -> Path:
    """The folder holding the wav files: ``root`` itself or ``root/recordings``."""
    root = Path(root).expanduser()
    for candidate in (root / "recordings", root):
        if candidate.is_dir() and any(candidate.glob("*.wav")):
            return candidate
    raise FsddError(
        f"FSDD recordings not found in {root} (looked for *.wav there and in {root / 'recordings'}). "
        f"Download them with `python scripts/download_fsdd.py --dest {root}`, or point data.root "
        "(or the FSDD_ROOT environment variable) at a folder that holds them."
    )


def scan(folder: Path, on_bad_file: str = "error") -> list[FsddFile]:
    """Every ``*.wav`` in ``folder`` whose name follows the FSDD pattern. A badly named
    file is an error naming it, or (``on_bad_file='skip'``) skipped with a warning."""
    files = []
    for path in sorted(folder.glob("*.wav")):
        match = FILE_PATTERN.match(path.name)
        if match is None:
            _bad(path, "its name is not {digit}_{speaker}_{index}.wav", on_bad_file)
            continue
        files.append(FsddFile(path, int(match["digit"]), match["speaker"], int(match["index"])))
    if not files:
        raise FsddError(f"no FSDD recordings named {{digit}}_{{speaker}}_{{index}}.wav in {folder}")
    return files


def _bad(path: Path, problem: str, on_bad_file: str) -> None:
    message = f"bad FSDD file {path}: {problem}"
    if on_bad_file == "skip":
        log.warning(f"{message}; skipped (data.on_bad_file=skip)")
        return
    raise FsddError(f"{message}. Remove or fix it, or set data.on_bad_file=skip to leave it out.")


def read_clip(path: Path, duration: float | None, on_bad_file: str) -> tuple[torch.Tensor, int] | None:
    """Read ``path`` as mono, padded or cut to ``duration`` seconds at its own rate (None:
    as long as it is). Returns ``(audio, rate)``, or None for a bad file that is skipped."""
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - soundfile raises several types
        _bad(path, f"unreadable audio ({exc})", on_bad_file)
        return None
    if audio.shape[0] == 0:
        _bad(path, "it holds no samples", on_bad_file)
        return None
    if not np.isfinite(audio).all():
        _bad(path, "it holds NaN or infinite samples", on_bad_file)
        return None
    mono = torch.from_numpy(audio.mean(axis=1))
    if duration is None:
        return mono, rate
    return pad_or_trim(mono, math.ceil(duration * rate)), rate


def load_clips(paths: list[Path], duration: float, sample_rate: int, on_bad_file: str):
    """Read, resample (one batched call per source rate) and fix the length of many clips.
    Returns ``(audio (N, round(duration * sample_rate)), indices of the kept paths)``."""
    n_samples = round(duration * sample_rate)
    by_rate: dict[int, list[tuple[int, torch.Tensor]]] = {}
    for i, path in enumerate(paths):
        clip = read_clip(path, duration, on_bad_file)
        if clip is not None:
            by_rate.setdefault(clip[1], []).append((i, clip[0]))
    kept, out = [], []
    for rate, items in by_rate.items():
        batch = torch.stack([clip for _, clip in items])
        if rate != sample_rate:
            batch = torchaudio.functional.resample(batch, rate, sample_rate)
        out.append(pad_or_trim(batch, n_samples))
        kept.extend(i for i, _ in items)
    order = np.argsort(kept)
    return torch.cat(out)[torch.from_numpy(order)], [kept[i] for i in order]


class FsddFeatures(torch.nn.Module):
    """Waveforms ``(B, samples)`` -> the configured feature, batched."""

    def __init__(self, feature: str, sample_rate: int, n_fft: int, hop_length: int, n_mels: int) -> None:
        super().__init__()
        if feature not in FEATURES:
            raise ValueError(f"unknown FSDD feature {feature!r}; choose one of {list(FEATURES)}")
        self.feature = feature
        self.spec = None
        if feature != "waveform":
            self.spec = LogSpectrogram(
                n_fft, hop_length, drop_nyquist=True, n_mels=n_mels if feature == "log_mel" else None,
                sample_rate=sample_rate,
            )

    def forward(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.spec is None:
            return {"audio": audio}
        spec, lo, hi = min_max_normalise(self.spec(audio))
        return {"spec": spec.unsqueeze(1), "min": lo, "max": hi}


class FsddDataset(Dataset):
    """Items of cached features: ``spec`` (1, bins, frames) with its ``min``/``max`` (or
    ``audio``), plus ``digit``, ``speaker`` (index into the speaker list) and ``take``."""

    def __init__(self, arrays: dict[str, np.ndarray], rows: np.ndarray) -> None:
        self.arrays = arrays
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.rows[i])
        return {key: torch.as_tensor(np.array(value[row])) for key, value in self.arrays.items()}


class FsddDataModule(L.LightningDataModule):
    """FSDD (``data=fsdd``).

    Args:
        root: folder holding the recordings (or their parent).
        cache_dir: where feature caches are written (one sub-folder per config hash).
        feature: ``log_spectrogram`` (256 x 64 for the defaults), ``log_mel`` or ``waveform``.
        sample_rate, duration: audio is resampled and padded or cut to this length.
        n_fft, hop_length, n_mels: spectrogram settings.
        val_takes: inclusive range of takes moved from train to validation.
        speakers, digits: keep only these (None keeps all).
        on_bad_file: ``error`` or ``skip`` (with a warning) for corrupt, empty or
            mislabelled files.
        batch_size, eval_batch_size, num_workers, pin_memory: loaders.
    """

    tasks = ("generation", "digit classification")  # the task modules (``TaskModule.task``) this data serves

    def __init__(
        self,
        root: str = "data/fsdd",
        cache_dir: str = "data/cache/fsdd",
        feature: str = "log_spectrogram",
        sample_rate: int = 22050,
        duration: float = 0.74,
        n_fft: int = 512,
        hop_length: int = 256,
        n_mels: int = 64,
        val_takes: Sequence[int] = (5, 9),
        speakers: Sequence[str] | None = None,
        digits: Sequence[int] | None = None,
        on_bad_file: str = "error",
        batch_size: int = 64,
        eval_batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if on_bad_file not in ("error", "skip"):
            raise ValueError(f"data.on_bad_file must be 'error' or 'skip', got {on_bad_file!r}")
        self.save_hyperparameters(logger=False)
        self.sample_rate = sample_rate
        self.n_samples = round(duration * sample_rate)
        self.features = FsddFeatures(feature, sample_rate, n_fft, hop_length, n_mels)
        self.arrays: dict[str, np.ndarray] | None = None
        self.speaker_names: list[str] = []
        self._files: tuple[Path, list[FsddFile]] | None = None

    # -- cache ------------------------------------------------------------------
    def cache_key(self, files: list[FsddFile]) -> str:
        hp = self.hparams
        config = {
            "format": CACHE_FORMAT,
            "feature": hp.feature,
            "sample_rate": hp.sample_rate,
            "n_samples": self.n_samples,
            "n_fft": hp.n_fft,
            "hop_length": hp.hop_length,
            "n_mels": hp.n_mels if hp.feature == "log_mel" else None,
            "on_bad_file": hp.on_bad_file,
            "files": [(f.path.name, f.path.stat().st_size) for f in files],
        }
        return config_hash(config)

    def _scan(self) -> tuple[Path, list[FsddFile]]:
        """The recordings folder and its files, scanned once per DataModule."""
        if self._files is None:
            folder = find_recordings(self.hparams.root)
            self._files = (folder, scan(folder, self.hparams.on_bad_file))
        return self._files

    def cache_path(self) -> Path:
        return Path(self.hparams.cache_dir).expanduser() / self.cache_key(self._scan()[1])

    def prepare_data(self) -> None:
        """Compute and cache the features of every file (once per config)."""
        folder, files = self._scan()
        target = self.cache_path()
        if (target / "meta.json").is_file():
            return
        log.info(f"computing FSDD {self.hparams.feature} features for {len(files)} files into {target}")
        clips, kept_index = load_clips(
            [f.path for f in files], self.hparams.duration, self.sample_rate, self.hparams.on_bad_file
        )
        kept = [files[i] for i in kept_index]
        speakers = sorted({f.speaker for f in kept})
        arrays: dict[str, list[np.ndarray]] = {}
        with torch.no_grad():
            for start in range(0, len(clips), 256):
                out = self.features(clips[start : start + 256])
                for key, value in out.items():
                    arrays.setdefault(key, []).append(value.numpy().astype(np.float32))
        arrays_np = {key: np.concatenate(parts) for key, parts in arrays.items()}
        arrays_np["digit"] = np.array([f.digit for f in kept], dtype=np.int64)
        arrays_np["speaker"] = np.array([speakers.index(f.speaker) for f in kept], dtype=np.int64)
        arrays_np["take"] = np.array([f.index for f in kept], dtype=np.int64)
        with atomic_write(target, keep_existing_folder=True) as (tmp,):
            tmp.mkdir()
            for key, value in arrays_np.items():
                np.save(tmp / f"{key}.npy", value)
            meta = {"speakers": speakers, "files": [f.path.name for f in kept], "source": str(folder)}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))

    # -- splits -----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.arrays is not None:
            return
        path = self.cache_path()
        if not (path / "meta.json").is_file():
            self.prepare_data()
        meta = json.loads((path / "meta.json").read_text())
        self.speaker_names = meta["speakers"]
        self.file_names = meta["files"]
        self.arrays = {p.stem: np.load(p, mmap_mode="r") for p in sorted(path.glob("*.npy"))}
        speakers = np.asarray(self.speaker_names)[self.arrays["speaker"]]
        masks = self.split_masks(self.arrays["digit"], speakers, self.arrays["take"])
        self.split_rows = {name: np.flatnonzero(mask) for name, mask in masks.items()}

    def split_masks(self, digit: np.ndarray, speaker: np.ndarray, take: np.ndarray) -> dict[str, np.ndarray]:
        """Which of the files with these labels (``speaker`` as names) are in the train,
        val and test splits, after the speaker and digit filters."""
        keep = np.ones(len(take), dtype=bool)
        if self.hparams.speakers is not None:
            known = sorted(set(speaker.tolist()))
            unknown = set(self.hparams.speakers) - set(known)
            if unknown:
                raise FsddError(f"data.speakers names unknown speakers {sorted(unknown)}; FSDD has {known}")
            keep &= np.isin(speaker, list(self.hparams.speakers))
        if self.hparams.digits is not None:
            keep &= np.isin(digit, list(self.hparams.digits))
        lo, hi = self.hparams.val_takes
        is_test = take <= 4
        is_val = ~is_test & (take >= lo) & (take <= hi)
        masks = {"train": keep & ~is_test & ~is_val, "val": keep & is_val, "test": keep & is_test}
        for name, mask in masks.items():
            if not mask.any():
                raise FsddError(f"the FSDD {name} split is empty after filtering (speakers={self.hparams.speakers}, digits={self.hparams.digits})")
        return masks

    def audio_clips(self, split: str) -> list[AudioClip]:
        """The recordings of ``split`` (train, val or test; same split and filters as the
        features) as whole mono clips at their own rate (8 kHz), read on demand; no feature is
        computed."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"FSDD splits are train, val and test, got {split!r}")
        _, files = self._scan()
        masks = self.split_masks(
            np.array([f.digit for f in files]), np.array([f.speaker for f in files]), np.array([f.index for f in files])
        )
        return [
            AudioClip(f.path.name, file_identity(f.path.name, f.path), partial(read_clip, f.path, None, self.hparams.on_bad_file))
            for f, chosen in zip(files, masks[split], strict=True)
            if chosen
        ]

    def dataset(self, split: str) -> FsddDataset:
        self.setup()
        return FsddDataset(self.arrays, self.split_rows[split])

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            self.dataset(split), batch_size=batch_size, shuffle=shuffle, num_workers=workers,
            pin_memory=self.hparams.pin_memory, persistent_workers=workers > 0, drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.eval_batch_size, shuffle=False)


def download_fsdd(dest: str | Path, url: str = FSDD_URL) -> Path:
    """Fetch the FSDD release archive from ``url`` (any URL urllib opens, ``file://`` too)
    and put its ``recordings/*.wav`` into ``dest/recordings``. Returns that folder."""
    dest = Path(dest).expanduser()
    target = dest / "recordings"
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        archive = Path(tmp) / "fsdd.zip"
        try:
            with urllib.request.urlopen(url) as response, open(archive, "wb") as handle:
                shutil.copyfileobj(response, handle)
        except OSError as exc:
            raise FsddError(f"could not download FSDD from {url}: {exc}") from None
        try:
            with zipfile.ZipFile(archive) as zf, atomic_write(target) as (staging,):
                members = [m for m in zf.namelist() if re.search(r"(^|/)recordings/[^/]+\.wav$", m)]
                if not members:
                    raise FsddError(f"{url} holds no recordings/*.wav: is it the FSDD release archive?")
                staging.mkdir()
                for member in members:
                    with zf.open(member) as src, open(staging / Path(member).name, "wb") as out:
                        shutil.copyfileobj(src, out)
        except zipfile.BadZipFile:
            raise FsddError(f"{url} is not a zip archive") from None
    return target
