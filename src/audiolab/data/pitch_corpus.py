"""Real recordings as pitch data: 16 kHz audio and teacher labels, cached on disk.

Two caches, each computed once, written atomically (a temporary folder renamed into
place) with a progress bar, one clip in memory at a time:

- ``<cache_dir>/audio/<hash>/``: every clip resampled to 16 kHz, mono, concatenated into
  one int16 file that is memory-mapped when read. The hash covers the clips' identities
  (name, size, modification time), so a changed file list or a rewritten file is read
  again.
- ``<cache_dir>/labels/<hash>/``: the teacher's f0 and periodicity of every frame
  (float32). The hash covers the audio cache's hash and the teacher config
  (:meth:`TeacherConfig.identity`), so a changed teacher never reads stale labels.

:class:`PitchCorpus` reads them back: frames of any clip at any frame index (zero
padding outside the clip, as CREPE frames a clip), labels, and resynthesis on the
teacher's f0 (as MDB-stem-synth does: a harmonic tone rendered on the teacher's contour,
so that its labels are exact).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torchaudio
from tqdm import tqdm

from audiolab.audio.pitch_grid import FRAME_LENGTH, SAMPLE_RATE
from audiolab.data.clips import AudioClip
from audiolab.data.synth_pitch import SynthToneRenderer, stack_params
from audiolab.pitch.teacher import Teacher
from audiolab.utils.atomic import atomic_write
from audiolab.utils.cache import config_hash
from audiolab.utils.errors import AudiolabError

log = logging.getLogger("audiolab")

AUDIO_FORMAT = 1
LABEL_FORMAT = 1
INT16_SCALE = 32767.0


class PitchCorpusError(AudiolabError):
    """Audio that cannot become pitch training data."""


def int16_bytes(audio: torch.Tensor) -> bytes:
    """Samples in [-1, 1] as the caches store them: int16 (96 dB of range, far more than
    pitch needs, at half the size of float32)."""
    return (audio.clamp(-1.0, 1.0) * INT16_SCALE).round().to(torch.int16).numpy().tobytes()


def cache_audio(clips: list[AudioClip], cache_dir: str | Path, progress: bool = True) -> Path:
    """The folder of the 16 kHz audio cache of ``clips`` (written when missing)."""
    key = config_hash({"format": AUDIO_FORMAT, "sample_rate": SAMPLE_RATE, "clips": [list(c.identity) for c in clips]})
    target = Path(cache_dir).expanduser() / "audio" / key
    if (target / "meta.json").is_file():
        return target
    log.info(f"reading {len(clips)} clips at {SAMPLE_RATE} Hz into {target}")
    names, lengths = [], []
    with atomic_write(target, keep_existing_folder=True) as (tmp,):
        tmp.mkdir()
        with open(tmp / "audio.i16", "wb") as out:
            for clip in tqdm(clips, desc="reading audio", unit="clip", disable=not progress):
                got = clip.read()
                if got is None:  # a bad file the DataModule skips (it has warned)
                    continue
                audio, rate = got
                if not torch.isfinite(audio).all():
                    raise PitchCorpusError(f"{clip.name} holds NaN or infinite samples: fix or remove the file")
                if rate != SAMPLE_RATE:
                    audio = torchaudio.functional.resample(audio, rate, SAMPLE_RATE)
                out.write(int16_bytes(audio))
                names.append(clip.name)
                lengths.append(int(audio.shape[-1]))
        if not any(lengths):
            raise PitchCorpusError(f"none of the {len(clips)} clips holds audio: nothing to label")
        (tmp / "meta.json").write_text(json.dumps({"names": names, "lengths": lengths, "sample_rate": SAMPLE_RATE}))
    return target


def cache_labels(audio_dir: Path, teacher: Teacher, cache_dir: str | Path, progress: bool = True) -> Path:
    """The folder of the teacher labels of the audio cache ``audio_dir`` (written when
    missing, one call of ``teacher`` per clip)."""
    identity = teacher.config.identity(teacher.hop_length)
    key = config_hash({"format": LABEL_FORMAT, "audio": audio_dir.name, "teacher": identity})
    target = Path(cache_dir).expanduser() / "labels" / key
    if (target / "meta.json").is_file():
        return target
    meta = json.loads((audio_dir / "meta.json").read_text())
    audio = np.memmap(audio_dir / "audio.i16", dtype=np.int16, mode="r")
    starts = np.concatenate([[0], np.cumsum(meta["lengths"])])
    log.info(f"labelling {len(meta['names'])} clips with teacher {identity} into {target}")
    n_frames = []
    with atomic_write(target, keep_existing_folder=True) as (tmp,):
        tmp.mkdir()
        with open(tmp / "f0.f32", "wb") as f0_out, open(tmp / "periodicity.f32", "wb") as period_out:
            for name, a, b in tqdm(
                list(zip(meta["names"], starts[:-1], starts[1:], strict=True)),
                desc=f"teacher {teacher.config.model}", unit="clip", disable=not progress,
            ):
                x = torch.from_numpy(audio[a:b].astype(np.float32) / INT16_SCALE)
                f0, period = teacher(x)
                expected = 1 + len(x) // teacher.hop_length
                if f0.shape != (expected,) or period.shape != (expected,):
                    raise PitchCorpusError(f"teacher gave {f0.shape[0]} frames for {name}, expected {expected}")
                f0_out.write(f0.tobytes())
                period_out.write(period.tobytes())
                n_frames.append(expected)
        (tmp / "meta.json").write_text(json.dumps({"teacher": identity, "audio": audio_dir.name, "n_frames": n_frames}))
    return target


class PitchCorpus:
    """Cached clips and their teacher labels.

    Frame ``i`` of clip ``k`` is centred on sample ``i * hop_length`` of the clip; global
    frame indices run over all clips in order (``frame_offsets``). Labels live in memory
    (a few bytes per 10 ms); the audio stays memory-mapped and is opened lazily in every
    process, so DataLoader workers never copy it.

    Args:
        audio_dir, label_dir: the caches (:func:`cache_audio`, :func:`cache_labels`).
        hop_length: the labels' hop in samples.
        voicing_threshold: a frame is voiced when its periodicity reaches this.
    """

    def __init__(self, audio_dir: Path, label_dir: Path, hop_length: int, voicing_threshold: float) -> None:
        audio_meta = json.loads((audio_dir / "meta.json").read_text())
        label_meta = json.loads((label_dir / "meta.json").read_text())
        if label_meta["audio"] != audio_dir.name or label_meta["teacher"]["hop_length"] != hop_length:
            raise PitchCorpusError(f"labels in {label_dir} are not those of {audio_dir} at hop {hop_length}")
        self.audio_path = audio_dir / "audio.i16"
        self.hop_length = hop_length
        self.names: list[str] = audio_meta["names"]
        self.lengths = np.asarray(audio_meta["lengths"], dtype=np.int64)
        self.sample_offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.n_frames = np.asarray(label_meta["n_frames"], dtype=np.int64)
        self.frame_offsets = np.concatenate([[0], np.cumsum(self.n_frames)])
        self.periodicity = np.fromfile(label_dir / "periodicity.f32", dtype=np.float32)
        self.voiced = self.periodicity >= voicing_threshold
        f0 = np.fromfile(label_dir / "f0.f32", dtype=np.float32)
        self.f0 = hold_voiced_f0(f0, self.voiced, self.frame_offsets)
        self._audio: np.memmap | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_audio": None}

    @property
    def audio(self) -> np.memmap:
        if self._audio is None:
            self._audio = np.memmap(self.audio_path, dtype=np.int16, mode="r")
        return self._audio

    def __len__(self) -> int:
        return len(self.names)

    def locate(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global frame indices -> ``(clip, frame within the clip)``."""
        clip = np.searchsorted(self.frame_offsets, frame, side="right") - 1
        return clip, frame - self.frame_offsets[clip]

    def _positions(self, clip: np.ndarray, frame: np.ndarray, n_samples: int) -> np.ndarray:
        """Sample positions within each clip of windows of ``n_samples`` centred on the frames."""
        return (frame * self.hop_length)[:, None] + np.arange(-(n_samples // 2), n_samples - n_samples // 2)[None]

    def frames(self, clip: np.ndarray, frame: np.ndarray) -> np.ndarray:
        """Audio frames ``(B, 1024)`` float32 centred on frame ``frame[b]`` of clip
        ``clip[b]``, zero outside the clip."""
        pos = self._positions(clip, frame, FRAME_LENGTH)
        inside = (pos >= 0) & (pos < self.lengths[clip][:, None])
        index = np.where(inside, pos + self.sample_offsets[clip][:, None], 0)
        return np.where(inside, self.audio[index], 0).astype(np.float32) / np.float32(INT16_SCALE)

    def labels(self, clip: np.ndarray, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(f0 Hz, voiced)`` of the frames."""
        g = self.frame_offsets[clip] + frame
        return self.f0[g], self.voiced[g]

    def resynthesize(
        self, clip: np.ndarray, frame: np.ndarray, renderer: SynthToneRenderer, params: list[dict], n_samples: int
    ) -> torch.Tensor:
        """Harmonic tones ``(B, n_samples)`` centred on the frames, rendered on the
        teacher's contour: f0 interpolated between frame centres (in log frequency) and an
        envelope interpolated between the voicing flags (10 ms ramps; silent outside the
        clip), so that at each frame centre the tone's f0 and voicing are exactly that
        frame's labels. ``params``: one :meth:`SynthToneRenderer.draw` per example (its
        timbre, noise and level; the contour it drew is not used)."""
        pos = self._positions(clip, frame, n_samples)
        last = (self.n_frames[clip] - 1)[:, None]
        u = pos / self.hop_length
        i0 = np.clip(np.floor(u).astype(np.int64), 0, last)
        i1 = np.minimum(i0 + 1, last)
        w = np.clip(u - i0, 0.0, 1.0)
        base = self.frame_offsets[clip][:, None]
        log_f0 = np.log2(self.f0.astype(np.float64))
        f0 = np.exp2((1 - w) * log_f0[base + i0] + w * log_f0[base + i1])
        inside = (pos >= 0) & (pos < self.lengths[clip][:, None])
        envelope = ((1 - w) * self.voiced[base + i0] + w * self.voiced[base + i1]) * inside
        return renderer.synthesize(stack_params(params), torch.from_numpy(f0), torch.from_numpy(envelope).float())


def hold_voiced_f0(f0: np.ndarray, voiced: np.ndarray, frame_offsets: np.ndarray) -> np.ndarray:
    """``f0`` with every unvoiced frame given the f0 of the nearest voiced frame of the
    same clip (the teacher's f0 there means nothing, and a resynthesised tone should not
    glide towards it); clips with no voiced frame keep theirs. Non-finite values become
    the smallest finite f0."""
    n = len(f0)
    idx = np.arange(n)
    counts = np.diff(frame_offsets)
    first = np.repeat(frame_offsets[:-1], counts)
    last = np.repeat(frame_offsets[1:] - 1, counts)
    before = np.maximum.accumulate(np.where(voiced, idx, -1))
    after = np.minimum.accumulate(np.where(voiced, idx, n)[::-1])[::-1]
    has_before, has_after = before >= first, after <= last
    take_before = has_before & (~has_after | (idx - before <= after - idx))
    source = np.where(voiced, idx, np.where(take_before, before, np.where(has_after, after, idx)))
    out = f0[source]
    finite = np.isfinite(out) & (out > 0)
    if not finite.all():
        out = np.where(finite, out, out[finite].min() if finite.any() else 1.0)
    return out.astype(np.float32)


def cache_rendered(
    cache_dir: str | Path,
    identity: dict,
    n_items: int,
    render,
    hop_length: int,
    progress: bool = True,
) -> tuple[Path, Path]:
    """Audio and exact labels rendered by ``render(i) -> (name, audio (N,) at 16 kHz, f0 (T,),
    voiced (T,))`` for ``i < n_items``, cached in the formats of :func:`cache_audio` and
    :func:`cache_labels` (periodicity 1 on voiced frames, 0 elsewhere), so that
    :class:`PitchCorpus` reads them as any teacher-labelled corpus. ``identity`` is
    everything the rendering depends on (the cache key). Returns ``(audio_dir, label_dir)``;
    both are written together, atomically, when missing."""
    key = config_hash({"format": [AUDIO_FORMAT, LABEL_FORMAT], "hop_length": hop_length, "rendered": identity})
    root = Path(cache_dir).expanduser()
    audio_dir, label_dir = root / "audio" / f"rendered-{key}", root / "labels" / f"rendered-{key}"
    if (audio_dir / "meta.json").is_file() and (label_dir / "meta.json").is_file():
        return audio_dir, label_dir
    log.info(f"rendering {n_items} clips with exact pitch labels into {audio_dir}")
    names, lengths, n_frames = [], [], []
    with atomic_write(audio_dir, label_dir) as (tmp_audio, tmp_labels):
        tmp_audio.mkdir()
        tmp_labels.mkdir()
        with (
            open(tmp_audio / "audio.i16", "wb") as audio_out,
            open(tmp_labels / "f0.f32", "wb") as f0_out,
            open(tmp_labels / "periodicity.f32", "wb") as period_out,
        ):
            for i in tqdm(range(n_items), desc="rendering", unit="clip", disable=not progress):
                name, audio, f0, voiced = render(i)
                expected = 1 + audio.shape[-1] // hop_length
                if f0.shape != (expected,) or voiced.shape != (expected,):
                    raise PitchCorpusError(f"rendered clip {name} has {f0.shape[0]} labels for {expected} frames")
                audio_out.write(int16_bytes(audio))
                f0_out.write(f0.float().numpy().tobytes())
                period_out.write(voiced.float().numpy().tobytes())
                names.append(name)
                lengths.append(int(audio.shape[-1]))
                n_frames.append(expected)
        (tmp_audio / "meta.json").write_text(json.dumps({"names": names, "lengths": lengths, "sample_rate": SAMPLE_RATE}))
        teacher = {"rendered": identity, "hop_length": hop_length}  # PitchCorpus checks the hop here
        (tmp_labels / "meta.json").write_text(json.dumps({"teacher": teacher, "audio": audio_dir.name, "n_frames": n_frames}))
    return audio_dir, label_dir
