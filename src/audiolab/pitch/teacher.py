"""Teacher pitch labels for real audio: f0 and periodicity of every frame of a clip.

A teacher is pretrained CREPE (``tiny`` or ``full``, through :func:`audiolab.pitch.predict`,
any decoder), an audiolab pitch checkpoint, or ``librosa.pyin``. Frames are CREPE's:
``hop_length`` samples apart at 16 kHz, frame ``i`` centred on sample ``i * hop_length``,
``1 + n // hop_length`` frames for ``n`` samples, whatever the teacher. Periodicity is
CREPE's activation at the decoded bin, or pYIN's voiced probability; frames quieter than
``silence_db`` (A-weighted) get periodicity 0 for every teacher alike, so one voicing
threshold means the same thing for both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from audiolab.audio.pitch_grid import FRAME_LENGTH, SAMPLE_RATE
from audiolab.pitch.decode import check_decoder
from audiolab.pitch.inference import FMAX, FMIN, predict
from audiolab.pitch.postprocess import a_weighted_loudness, silence_gate
from audiolab.pitch.pretrained import MODEL_NAMES
from audiolab.utils.errors import AudiolabError

PYIN = "pyin"


class TeacherError(AudiolabError):
    """A teacher that cannot label as configured."""


@dataclass(frozen=True)
class TeacherConfig:
    """What labels the audio (``data.teacher``).

    Args:
        model: ``fast`` (audiolab's own), ``tiny`` or ``full`` (pretrained CREPE), ``pyin`` (``librosa.pyin``), or the
            path of an audiolab pitch checkpoint.
        decoder: CREPE decoder (``viterbi``, ``weighted_argmax``, ``argmax``); pYIN has its
            own HMM and ignores it.
        fmin, fmax: pitch range in Hz.
        silence_db: frames below this A-weighted level get periodicity 0 (null: off).
        batch_size, device: how CREPE runs (``device`` null: CUDA when available); they do
            not change the labels, so they are not part of the cache key.
    """

    model: str = "full"
    decoder: str = "viterbi"
    fmin: float = FMIN
    fmax: float = FMAX
    silence_db: float | None = -60.0
    batch_size: int = 512
    device: str | None = None

    def __post_init__(self) -> None:
        if self.model != PYIN:
            check_decoder(self.decoder)
            if self.model not in MODEL_NAMES and not Path(self.model).expanduser().is_file():
                raise TeacherError(
                    f"unknown pitch teacher {self.model!r}: set data.teacher.model to one of "
                    f"{', '.join([*MODEL_NAMES, PYIN])}, or to the path of an audiolab pitch checkpoint"
                )
        if not 0 < self.fmin < self.fmax < SAMPLE_RATE / 2:
            raise TeacherError(
                f"data.teacher.fmin={self.fmin} and fmax={self.fmax} must satisfy 0 < fmin < fmax < {SAMPLE_RATE // 2} Hz"
            )

    def identity(self, hop_length: int) -> dict:
        """Everything the labels depend on: the cache key of labels made by this teacher."""
        out = asdict(self)
        del out["batch_size"], out["device"]
        if self.model == PYIN:
            del out["decoder"]
        elif self.model not in MODEL_NAMES:  # a checkpoint: its contents, not only its name
            stat = Path(self.model).expanduser().stat()
            out["checkpoint"] = [str(Path(self.model).expanduser().resolve()), stat.st_size, stat.st_mtime_ns]
        out["hop_length"] = hop_length
        return out


class Teacher:
    """Labels one clip at a time: ``teacher(audio)`` with ``audio`` ``(samples,)`` at 16 kHz
    gives ``(f0 Hz, periodicity)``, float32 numpy arrays of ``1 + samples // hop_length``
    frames."""

    def __init__(self, config: TeacherConfig, hop_length: int) -> None:
        self.config = config
        self.hop_length = hop_length
        self.device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def __call__(self, audio: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        if c.model == PYIN:
            f0, period = self._pyin(audio)
        else:
            f0, period = predict(
                audio, SAMPLE_RATE, hop_length=self.hop_length, fmin=c.fmin, fmax=c.fmax, model=c.model,
                decoder=c.decoder, batch_size=c.batch_size, device=self.device,
            )
        if c.silence_db is not None:
            loudness = a_weighted_loudness(audio[None].to(period.device), SAMPLE_RATE, self.hop_length, FRAME_LENGTH)[0]
            period = silence_gate(period, loudness, c.silence_db)
        return f0.cpu().numpy().astype(np.float32), period.cpu().numpy().astype(np.float32)

    def _pyin(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import librosa

        c = self.config
        # CREPE's 1024-sample frames: long enough for pYIN down to 32 Hz at 16 kHz (its lag
        # window is half a frame); fill_na=None keeps pYIN's best f0 on unvoiced frames.
        f0, _, prob = librosa.pyin(
            audio.cpu().numpy(), fmin=c.fmin, fmax=c.fmax, sr=SAMPLE_RATE, frame_length=FRAME_LENGTH,
            hop_length=self.hop_length, center=True, fill_na=None,
        )
        n_frames = 1 + audio.shape[-1] // self.hop_length
        f0 = np.nan_to_num(f0[:n_frames], nan=c.fmin)
        return torch.from_numpy(f0).float(), torch.from_numpy(prob[:n_frames]).float()
