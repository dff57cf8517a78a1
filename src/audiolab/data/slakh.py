"""Slakh2100 and BabySlakh for music source separation (``data=slakh``).

Slakh2100 renders Lakh MIDI files with sampled instruments: every track folder
``TrackNNNNN/`` holds ``metadata.yaml``, the rendered stems ``stems/Sxx.flac`` (the
"redux" release; ``.wav`` in BabySlakh), ``mix.*`` and ``MIDI/``. Get Slakh2100-redux
(flac, 44.1 kHz) or BabySlakh (20 tracks, 16 kHz wav) from
https://zenodo.org/record/4599666.

Targets are groups of stems by the ``inst_class`` of ``metadata.yaml`` (Slakh's General
MIDI families: Piano, Chromatic Percussion, Organ, Guitar, Bass, Strings, Strings
(continued), Brass, Reed, Pipe, Synth Lead, Synth Pad, Synth Effects, Ethnic, Percussive,
Sound Effects, Drums). The default is MUSDB-like without vocals, which Slakh has not:
``drums`` = Drums, ``bass`` = Bass and the catch-all ``other`` = every other class.
``groups`` maps a target to its class names (case-insensitive); a stem whose class is in
no group goes to the ``catch_all`` target when one is set, and is otherwise left out of
the mixture as well, so the targets always sum to the mixture. A stem is used only when
it was rendered and its audio file exists (``use_rendered_flag`` says how far the
metadata's ``audio_rendered`` is trusted: BabySlakh's metadata says ``false`` for every
stem, rendered or not).

Splits: a root holding the official ``train/``, ``validation/``, ``test/`` folders
(``omitted/`` is never used) gives those (``layout: folders``); a root that is one folder
of tracks, as BabySlakh is, is one pool cut deterministically (``layout: pool``): tracks
sorted by name, the last ``pool_split.test`` fraction is test, the ``pool_split.valid``
fraction before them validation, the rest training.

Audio is resampled from the file's rate to ``sample_rate`` as it is read; mono files are
duplicated to ``audio_channels`` channels (stereo by default, as the separation models
expect) and multi-channel files averaged when ``audio_channels`` is 1. Training,
validation and test reuse the MUSDB machinery of :mod:`audiolab.data.musdb`: each
group is one "source" of a :class:`~audiolab.data.musdb.RandomMixDataset` (random chunks,
random mixing across tracks, the same augmentations, example ``i`` a pure function of
``(seed, epoch, i)``). Every mixture is the sum of the used stems: validation excerpts and
whole test tracks as well (not ``mix.*``, which also holds stems left out by the groups).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from audiolab.data.musdb import SPLITS, SeparationDataModule, TrackRef, fit_length
from audiolab.utils.errors import AudiolabError

log = logging.getLogger("audiolab")

SLAKH_URL = "https://zenodo.org/record/4599666"
AUDIO_EXTENSIONS = (".flac", ".wav")
DEFAULT_TARGETS = ("drums", "bass", "other")
DEFAULT_GROUPS = {"drums": ["Drums"], "bass": ["Bass"]}
DEFAULT_FOLDERS = {"train": "train", "valid": "validation", "test": "test"}
DEFAULT_POOL_SPLIT = {"valid": 0.1, "test": 0.1}
LAYOUTS = ("auto", "folders", "pool")
RENDERED_FLAG = ("auto", True, False)
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SlakhError(AudiolabError):
    """Slakh2100 is misconfigured, or one of its files is bad."""


class SlakhNotFoundError(SlakhError):
    """No Slakh2100 tracks where the config points."""


# -- metadata ---------------------------------------------------------------------
@dataclass(frozen=True)
class Stem:
    """One stem of a track as ``metadata.yaml`` describes it, with its audio file
    (``None`` when the file is missing)."""

    name: str
    inst_class: str
    is_drum: bool
    program_num: int
    midi_program_name: str
    audio_rendered: bool
    path: Path | None


def find_audio(folder: Path, name: str) -> Path | None:
    """``folder/name.flac`` or ``folder/name.wav``, whichever exists."""
    for ext in AUDIO_EXTENSIONS:
        path = folder / f"{name}{ext}"
        if path.is_file():
            return path
    return None


def read_metadata(track_dir: Path) -> list[Stem]:
    """The stems of a track folder, from its ``metadata.yaml``, sorted by name."""
    path = Path(track_dir) / "metadata.yaml"
    try:
        meta = yaml.load(path.read_text(), Loader=_YAML_LOADER)
    except (OSError, yaml.YAMLError) as exc:
        raise SlakhError(
            f"cannot read {path} ({exc}): re-extract the track from {SLAKH_URL}"
        ) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("stems"), dict):
        raise SlakhError(
            f"{path} has no 'stems:' mapping, so it is not Slakh2100 metadata: re-extract the track from {SLAKH_URL}"
        )
    audio_dir = Path(track_dir) / str(meta.get("audio_dir") or "stems")
    stems = []
    for name, info in sorted(meta["stems"].items()):
        info = info or {}
        stems.append(
            Stem(
                name=str(name),
                inst_class=str(info.get("inst_class", "")),
                is_drum=bool(info.get("is_drum", False)),
                program_num=int(info.get("program_num", -1)),
                midi_program_name=str(info.get("midi_program_name", "")),
                audio_rendered=bool(info.get("audio_rendered", False)),
                path=find_audio(audio_dir, str(name)),
            )
        )
    return stems


def usable_stems(stems: Sequence[Stem], use_rendered_flag: str | bool = "auto") -> list[Stem]:
    """The stems that can be mixed: their audio file exists and, when the metadata's
    ``audio_rendered`` is trusted, they are marked rendered.

    ``use_rendered_flag``: ``True`` trusts the flag, ``False`` ignores it (the file alone
    decides), ``"auto"`` trusts it unless no stem of the track is marked rendered, which is
    what BabySlakh's metadata says of every track (its files are there all the same)."""
    trust = use_rendered_flag
    if trust == "auto":
        trust = any(s.audio_rendered for s in stems)
    return [s for s in stems if s.path is not None and (s.audio_rendered or not trust)]


def class_targets(
    targets: Sequence[str], groups: dict[str, Sequence[str]], catch_all: str | None
) -> dict[str, str]:
    """``{inst_class (lower case): target}`` for the groups of ``targets``, checked: every
    target has a group or is the catch-all, and no class is in two groups. Groups of names
    that are not targets are unused."""
    by_class: dict[str, str] = {}
    for target in targets:
        if target == catch_all:
            continue
        if target not in groups:
            raise SlakhError(
                f"data.targets names {target!r} but data.groups has no {target} entry: add data.groups.{target}=[<inst_class>, ...] "
                f"(e.g. [Piano]) or make it data.catch_all={target}"
            )
        classes = groups[target]
        if isinstance(classes, str) or not classes:
            raise SlakhError(
                f"data.groups.{target} must be a non-empty list of inst_class names, got {classes!r}; e.g. [Piano]"
            )
        for name in classes:
            key = str(name).strip().lower()
            if key in by_class and by_class[key] != target:
                raise SlakhError(
                    f"inst_class {name!r} is in data.groups.{by_class[key]} and data.groups.{target}: keep it in one group"
                )
            by_class[key] = target
    return by_class


def group_stems(
    stems: Sequence[Stem], by_class: dict[str, str], catch_all: str | None
) -> dict[str, list[Stem]]:
    """``{target: stems}`` by each stem's ``inst_class``; a class in no group goes to
    ``catch_all`` (or is dropped when it is ``None``)."""
    out: dict[str, list[Stem]] = {}
    for stem in stems:
        target = by_class.get(stem.inst_class.strip().lower(), catch_all)
        if target is not None:
            out.setdefault(target, []).append(stem)
    return out


# -- audio ------------------------------------------------------------------------
def to_channels(audio: np.ndarray, channels: int, path: Path | str = "") -> np.ndarray:
    """``(c, T)`` audio as ``(channels, T)``: mono duplicated, anything averaged to mono."""
    if audio.shape[0] == channels:
        return audio
    if audio.shape[0] == 1:
        return np.repeat(audio, channels, axis=0)
    if channels == 1:
        return audio.mean(axis=0, keepdims=True)
    raise SlakhError(
        f"{path} has {audio.shape[0]} channels and cannot become data.audio_channels={channels}: use 1 or 2"
    )


@dataclass
class SlakhTrack:
    """Reads the groups of one track: a target's audio is the sum of its stem files,
    ``mixture`` the sum of every grouped stem. Picklable (loader workers)."""

    groups: dict[str, tuple[str, ...]]
    channels: int

    def read(self, name: str, start: int, frames: int) -> np.ndarray:
        """``frames`` samples of group ``name`` (or ``mixture``) from file sample ``start``,
        float32 ``(channels, frames)`` at the files' rate; silence for an empty group."""
        paths = (
            [p for group in self.groups.values() for p in group]
            if name == "mixture"
            else self.groups.get(name, ())
        )
        total = np.zeros((self.channels, frames), dtype=np.float32)
        for path in paths:
            audio, _ = sf.read(path, start=start, frames=frames, dtype="float32", always_2d=True)
            total += to_channels(fit_length(audio.T, frames), self.channels, path)
        return total


# -- splits -----------------------------------------------------------------------
def track_dirs(folder: Path) -> list[Path]:
    """The track folders (with a ``metadata.yaml``) directly in ``folder``, by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / "metadata.yaml").is_file())


def pool_split(names: Sequence[str], valid: float, test: float) -> dict[str, list[str]]:
    """One pool of tracks cut into splits: sorted by name, the last ``test`` fraction is
    test, the ``valid`` fraction before them validation, the rest training (a non-zero
    fraction is at least one track)."""
    names = sorted(names)
    counts = [max(1, round(f * len(names))) if f > 0 else 0 for f in (valid, test)]
    n_valid, n_test = counts
    n_train = len(names) - n_valid - n_test
    if n_train < 1:
        raise SlakhError(
            f"data.pool_split={{valid: {valid}, test: {test}}} leaves no training track of {len(names)}: lower the fractions, "
            "or set data.pool_split=null to use every track in every split (a smoke test only)"
        )
    return {
        "train": names[:n_train],
        "valid": names[n_train : n_train + n_valid],
        "test": names[n_train + n_valid :],
    }


def not_found_message(root: Path, folders: dict[str, str]) -> str:
    """One line: what was expected under ``root``, what is there, how to get Slakh."""
    if not root.exists():
        state = "does not exist"
    else:
        inner = [
            p.name
            for p in sorted(root.iterdir())
            if p.is_dir() and (track_dirs(p) or any((p / f).is_dir() for f in folders.values()))
        ]
        state = "holds no Slakh tracks (no TrackNNNNN/metadata.yaml in it"
        state += f" nor in {', '.join(f'{f}/' for f in folders.values())})"
        if inner:
            state += f"; {root / inner[0]} does: point data.root there"
    return (
        f"Slakh2100 not found: {root} {state}. Point data.root (or the SLAKH_PATH environment variable) at "
        f"slakh2100_flac_redux/ (holding {', '.join(f'{f}/' for f in folders.values())}) or at a folder of TrackNNNNN/ "
        f"such as babyslakh_16k/; download Slakh2100-redux or BabySlakh from {SLAKH_URL}."
    )


# -- the DataModule ---------------------------------------------------------------
class SlakhDataModule(SeparationDataModule):
    """Slakh2100-redux (flac) or BabySlakh (wav), stems grouped into targets (``data=slakh``).

    Args:
        root: ``slakh2100_flac_redux/`` (holding ``train/``, ``validation/``, ``test/``)
            or a folder of ``TrackNNNNN/`` such as ``babyslakh_16k/``.
        targets: the separated outputs, in this order (groups of stems).
        groups: ``{target: [inst_class, ...]}``; classes are matched case-insensitively.
        catch_all: the target of every stem whose class is in no group (one of
            ``targets``), or ``None``: such stems are left out of the mixture too.
        use_rendered_flag: ``auto``, ``true`` or ``false``: how far ``audio_rendered`` of
            the metadata is trusted (:func:`usable_stems`); a missing file is always skipped.
        layout: ``folders`` (official splits), ``pool`` (one folder of tracks cut by
            ``pool_split``) or ``auto`` (folders when the root holds any of ``folders``).
        folders: ``{train, valid, test}`` folder names under the root (``layout=folders``).
        pool_split: ``{valid, test}`` fractions of a pool (``layout=pool``); ``None``: every
            track is in every split (only for smoke tests on a handful of tracks).
        sample_rate, audio_channels: what the model sees; files are resampled, mono
            duplicated (:func:`to_channels`).
        The remaining options are those of :class:`~audiolab.data.musdb.MusdbDataModule`:
        chunk_seconds, samples_per_track, silence_threshold_db, silence_retries, augment,
        valid_excerpt_seconds, valid_excerpts_per_track, seed, batch_size,
        eval_batch_size, num_workers, pin_memory.
    """

    error = SlakhError

    def __init__(
        self,
        root: str = "data/slakh2100_flac_redux",
        targets: Sequence[str] = DEFAULT_TARGETS,
        groups: dict | None = None,
        catch_all: str | None = "other",
        use_rendered_flag: str | bool = "auto",
        layout: str = "auto",
        folders: dict | None = None,
        pool_split: dict | None = None,
        sample_rate: int = 44100,
        audio_channels: int = 2,
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
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.targets = self._check_targets(targets)
        self._init_common()
        self.groups = {
            str(k): list(v) if not isinstance(v, str) else v
            for k, v in (DEFAULT_GROUPS if groups is None else groups).items()
        }
        if catch_all is not None and catch_all not in self.targets:
            raise SlakhError(
                f"data.catch_all={catch_all!r} is not in data.targets={self.targets}: add it to the targets, or set "
                "data.catch_all=null to leave stems of ungrouped classes out of the mixture"
            )
        self.catch_all = catch_all
        self.by_class = class_targets(self.targets, self.groups, catch_all)
        if use_rendered_flag not in RENDERED_FLAG:
            raise SlakhError(
                f"data.use_rendered_flag must be auto, true or false, got {use_rendered_flag!r}"
            )
        if layout not in LAYOUTS:
            raise SlakhError(f"data.layout must be one of {list(LAYOUTS)}, got {layout!r}")
        self.folders = self._check_folders(folders)
        self.pool_fractions = self._check_pool_split(pool_split)
        self.root = Path(root).expanduser()
        self.sources = tuple(self.targets)
        self.definitions = {t: {t: 1.0} for t in self.targets}
        self._refs: dict[str, list[TrackRef]] = {}

    # -- options ------------------------------------------------------------------
    @staticmethod
    def _check_targets(targets: Sequence[str]) -> list[str]:
        if isinstance(targets, str) or not targets:
            raise SlakhError(
                f"data.targets must be a non-empty list of names, got {targets!r}; e.g. [drums, bass, other]"
            )
        names = [str(t) for t in targets]
        if len(set(names)) != len(names):
            raise SlakhError(f"data.targets={names} names a target twice")
        return names

    @staticmethod
    def _check_folders(folders: dict | None) -> dict[str, str]:
        out = {**DEFAULT_FOLDERS, **dict(folders or {})}
        unknown = sorted(set(out) - set(SPLITS))
        if unknown:
            raise SlakhError(f"unknown split(s) {unknown} in data.folders; known: {list(SPLITS)}")
        return {k: str(v) for k, v in out.items()}

    @staticmethod
    def _check_pool_split(pool_split: dict | None) -> dict[str, float] | None:
        if pool_split is None:
            return None
        out = {**DEFAULT_POOL_SPLIT, **dict(pool_split)}
        if set(out) != {"valid", "test"} or not all(0 <= float(v) < 1 for v in out.values()):
            raise SlakhError(
                f"data.pool_split must be {{valid: <fraction>, test: <fraction>}} in [0, 1), or null; got {dict(pool_split)}"
            )
        return {k: float(v) for k, v in out.items()}

    def check_eval_targets(self, targets: Sequence[str]) -> list[str]:
        unknown = [t for t in targets if t not in self.targets]
        if unknown:
            raise SlakhError(
                f"unknown target(s) {unknown} for whole Slakh tracks: choose from data.targets={self.targets}"
            )
        return [str(t) for t in targets]

    # -- files --------------------------------------------------------------------
    def resolved_layout(self) -> str:
        """``folders`` or ``pool``: the configured layout, or the one the root has."""
        if not self.root.is_dir():
            raise SlakhNotFoundError(not_found_message(self.root, self.folders))
        if self.hparams.layout != "auto":
            return self.hparams.layout
        if any((self.root / f).is_dir() for f in self.folders.values()):
            return "folders"
        if track_dirs(self.root):
            return "pool"
        raise SlakhNotFoundError(not_found_message(self.root, self.folders))

    def split_dirs(self, split: str) -> list[Path]:
        """The track folders of ``split`` under the layout of the root."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if self.resolved_layout() == "folders":
            folder = self.root / self.folders[split]
            dirs = track_dirs(folder)
            if not dirs:
                state = (
                    "does not exist" if not folder.is_dir() else "holds no TrackNNNNN/metadata.yaml"
                )
                raise SlakhError(
                    f"no {split} tracks: {folder} {state}. Set data.folders.{split} to a folder of tracks under {self.root}, "
                    "or data.layout=pool for one folder of tracks"
                )
            return dirs
        dirs = track_dirs(self.root)
        if not dirs:
            raise SlakhNotFoundError(not_found_message(self.root, self.folders))
        if self.pool_fractions is None:
            return dirs
        names = pool_split(
            [d.name for d in dirs], self.pool_fractions["valid"], self.pool_fractions["test"]
        )[split]
        if not names:
            raise SlakhError(
                f"no {split} tracks: data.pool_split.{split}=0; give it a fraction such as 0.1"
            )
        by_name = {d.name: d for d in dirs}
        return [by_name[n] for n in names]

    def tracks(self, split: str) -> list[TrackRef]:
        """The tracks of ``split`` (train, valid or test), listed and checked once; tracks
        with no usable stem in any target are left out (with a warning)."""
        if split in self._refs:
            return self._refs[split]
        refs, empty = [], []
        for folder in self.split_dirs(split):
            ref = self._ref(folder, split)
            (refs if ref is not None else empty).append(ref or folder.name)
        if empty:
            log.warning(
                f"{len(empty)} {split} track(s) have no rendered stem in data.targets and are left out: {', '.join(empty[:5])}"
            )
        if not refs:
            raise SlakhError(
                f"no {split} track of {self.root} has a rendered stem in data.targets={self.targets}: check data.groups"
            )
        hours = sum(r.seconds for r in refs) / 3600
        log.info(f"Slakh {split}: {len(refs)} track(s), {hours:.2f} h, from {self.root}")
        self._refs[split] = refs
        return refs

    def track_groups(self, folder: Path) -> dict[str, list[Stem]]:
        """``{target: usable stems}`` of one track folder."""
        stems = usable_stems(read_metadata(folder), self.hparams.use_rendered_flag)
        return group_stems(stems, self.by_class, self.catch_all)

    def _ref(self, folder: Path, split: str) -> TrackRef | None:
        """Describe one track (rate and length from its stem files), or ``None`` when it
        has no usable stem in the targets."""
        groups = self.track_groups(folder)
        paths = [s.path for group in groups.values() for s in group]
        if not paths:
            return None
        infos = {path: sf.info(str(path)) for path in paths}
        rates = {info.samplerate for info in infos.values()}
        if len(rates) > 1:
            raise SlakhError(
                f"the stems of {folder} have different sample rates {sorted(rates)}: re-extract the track from {SLAKH_URL}"
            )
        for path, info in infos.items():
            if info.channels not in (1, self.audio_channels) and self.audio_channels != 1:
                raise SlakhError(
                    f"{path} has {info.channels} channels and cannot become data.audio_channels={self.audio_channels}: use 1 or 2"
                )
        n_samples = min(info.frames for info in infos.values())
        reader = SlakhTrack(
            {t: tuple(str(s.path) for s in stems) for t, stems in groups.items()},
            self.audio_channels,
        )
        return TrackRef(folder.name, split, rates.pop(), n_samples, reader=reader.read)
