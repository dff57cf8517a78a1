"""Reading audio files, for every task: finding them, their format, and streamed decoding.

wav/flac/ogg/mp3 already at the wanted rate and channel count are read in blocks with
soundfile; everything else (``.stem.mp4`` - its first stream is the mixture -, m4a/aac,
other rates, 5.1) is decoded by ffmpeg into a pipe, which also resamples (with libsoxr
where ffmpeg has it: it resamples files of any length) and down-mixes (ffmpeg's standard
matrices) on the fly. Either way the audio arrives in blocks, so memory stays flat however
long the file is.

Bad files are refused with one :class:`AudioFileError` naming them: empty, not audio, a
damaged or cut-short WAV (the header announces more samples than the file holds), NaN
samples, too short to resample to the wanted rate.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from audiolab.utils.errors import AudiolabError

log = logging.getLogger("audiolab")

SOUNDFILE_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
FFMPEG_SUFFIXES = (".mp4", ".m4a", ".aac", ".opus", ".webm", ".wma")
AUDIO_SUFFIXES = SOUNDFILE_SUFFIXES + FFMPEG_SUFFIXES
BLOCK_SECONDS = 30.0


class AudioFileError(AudiolabError):
    """An input file that cannot be read or is not usable audio."""


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int | None  # None when the container does not say


def track_name(path: Path) -> str:
    """``song.stem.mp4`` -> ``song``; ``song.wav`` -> ``song``."""
    name = path.name
    return name[: -len(".stem.mp4")] if name.endswith(".stem.mp4") else path.stem


def find_audio_files(path: str | Path, exclude: str | Path | None = None) -> list[Path]:
    """A file, or every audio file under a folder (recursively, sorted), leaving out the
    files under the folder ``exclude`` (an output folder inside the input folder)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise AudioFileError(
            f"input not found: {path} (pass input=<an audio file or a folder of them>)"
        )
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if exclude is not None:
        exclude = Path(exclude).expanduser().resolve()
        kept = [p for p in files if exclude not in p.resolve().parents]
        if files and not kept:
            raise AudioFileError(
                f"no audio files found under {path} outside the output folder {exclude} (files under "
                "the output folder are never taken as input): pass an output folder outside the input"
            )
        files = kept
    if not files:
        raise AudioFileError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) found under {path}")
    return files


def _ffprobe(path: Path) -> AudioInfo:
    if shutil.which("ffprobe") is None:
        raise AudioFileError(
            f"{path}: reading {path.suffix} files needs ffmpeg/ffprobe; install ffmpeg (apt install ffmpeg)"
        )
    proc = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=sample_rate,channels,duration",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
    )
    streams = json.loads(proc.stdout or "{}").get("streams") if proc.returncode == 0 else None
    if not streams:
        reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no audio stream"
        reason = reason.removeprefix(f"{path}: ")
        raise AudioFileError(f"cannot read {path}: {reason}")
    stream = streams[0]
    rate = int(stream["sample_rate"])
    duration = stream.get("duration")
    frames = round(float(duration) * rate) if duration not in (None, "N/A") else None
    return AudioInfo(rate, int(stream["channels"]), frames)


def _unreadable(path: Path, exc: Exception) -> AudioFileError:
    """``cannot read <path>: <why>`` for a file soundfile cannot open or read."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        head = None
    if head == b"":
        return AudioFileError(f"cannot read {path}: the file is empty (0 bytes)")
    reason = str(exc).strip()
    opening = f"Error opening {str(path)!r}: "
    if reason.startswith(opening):
        reason = reason[len(opening) :]
    kind = path.suffix.lstrip(".").upper()
    if head and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        reason = f"a damaged or truncated WAV file ({reason.rstrip('.')})"
    elif "Format not recognised" in reason:
        reason = f"not a {kind} file (another format renamed, or damaged)"
    return AudioFileError(f"cannot read {path}: {reason.rstrip('.')}")


# A data chunk size that streaming writers put in the header before they know the length.
_UNKNOWN_WAV_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)


def _wav_shortfall(path: Path) -> tuple[int, int] | None:
    """``(frames the header announces, frames the file holds)`` of a RIFF/WAVE file cut
    short (a download or copy that stopped), else None. libsndfile reads such a file
    without a word, as if it were shorter."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(4) != b"RIFF" or len(f.read(4)) != 4 or f.read(4) != b"WAVE":
            return None
        block_align = None
        while True:
            head = f.read(8)
            if len(head) < 8:
                return None
            chunk, length = head[:4], struct.unpack("<I", head[4:])[0]
            if chunk == b"fmt ":
                fmt = f.read(min(length, 16))
                if len(fmt) < 14:
                    return None
                block_align = struct.unpack("<H", fmt[12:14])[0]
                f.seek(length - len(fmt) + length % 2, 1)
            elif chunk == b"data":
                held = size - f.tell()
                if length in _UNKNOWN_WAV_SIZES or length <= held or not block_align:
                    return None
                return length // block_align, held // block_align
            else:
                f.seek(length + length % 2, 1)


def audio_info(path: Path) -> AudioInfo:
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError) as exc:
            if path.suffix.lower() == ".wav":
                raise _unreadable(path, exc) from None
        else:
            shortfall = _wav_shortfall(path) if info.format in ("WAV", "WAVEX") else None
            if shortfall is not None:
                announced, held = shortfall
                rate = info.samplerate
                raise AudioFileError(
                    f"{path} is truncated: its header announces {announced} samples ({announced / rate:.3f} s) "
                    f"but the file holds {held} ({held / rate:.3f} s); copy or export it again "
                    f"(or keep what is there: ffmpeg -i {path.name} fixed.wav)"
                )
            return AudioInfo(info.samplerate, info.channels, info.frames)
    return _ffprobe(path)


def _soundfile_blocks(path: Path, block: int) -> Iterator[np.ndarray]:
    try:
        with sf.SoundFile(str(path)) as f:
            while True:
                data = f.read(block, dtype="float32", always_2d=True)
                if data.shape[0] == 0:
                    return
                yield data.T
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise _unreadable(path, exc) from None


@functools.lru_cache(maxsize=1)
def _ffmpeg_has_soxr() -> bool:
    """Whether ffmpeg resamples with libsoxr. Its default resampler (swr) gives nothing at
    all for a file of a few dozen samples; soxr resamples any length."""
    probe = ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "0.01",
             "-af", "aresample=resampler=soxr", "-ar", "16000", "-f", "null", "-"]  # fmt: skip
    return subprocess.run(probe, capture_output=True).returncode == 0


def _ffmpeg_blocks(path: Path, sample_rate: int, channels: int, block: int) -> Iterator[np.ndarray]:
    if shutil.which("ffmpeg") is None:
        raise AudioFileError(
            f"{path}: decoding it needs ffmpeg; install ffmpeg (apt install ffmpeg)"
        )
    cmd = [
        "ffmpeg",
        "-nostdin",
        "-v",
        "error",
        "-i",
        str(path),
        "-map",
        "0:a:0",
        *(["-af", "aresample=resampler=soxr"] if _ffmpeg_has_soxr() else []),
        "-f",
        "f32le",
        "-acodec",
        "pcm_f32le",
        "-ar",
        str(sample_rate),
        "-ac",
        str(channels),
        "-",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    frame_bytes = 4 * channels
    try:
        while True:
            raw = proc.stdout.read(block * frame_bytes)
            if not raw:
                break
            usable = len(raw) - len(raw) % frame_bytes
            yield np.frombuffer(raw[:usable], dtype="<f4").reshape(-1, channels).T
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip()
        code = proc.wait()
    if code != 0:
        raise AudioFileError(
            f"cannot decode {path}: {err.splitlines()[-1] if err else f'ffmpeg exit {code}'}"
        )


def read_blocks(
    path: Path, sample_rate: int, channels: int, block_seconds: float = BLOCK_SECONDS
) -> tuple[AudioInfo, Iterator[torch.Tensor]]:
    """The file's info and an iterator of checked float32 blocks ``(channels, n)`` at
    ``sample_rate``. Mono is up-mixed; more channels are down-mixed by ffmpeg."""
    info = audio_info(path)
    block = max(1, round(block_seconds * sample_rate))
    direct = (
        path.suffix.lower() in SOUNDFILE_SUFFIXES
        and info.sample_rate == sample_rate
        and info.channels <= channels
    )
    if info.channels not in (1, channels):
        log.warning(f"{path.name}: down-mixing {info.channels} channels to {channels} (ffmpeg)")
    if info.sample_rate != sample_rate:
        log.info(f"{path.name}: resampling {info.sample_rate} Hz -> {sample_rate} Hz (ffmpeg)")
    raw = (
        _soundfile_blocks(path, block)
        if direct
        else _ffmpeg_blocks(path, sample_rate, channels, block)
    )

    def checked() -> Iterator[torch.Tensor]:
        seen = 0
        clipped = 0
        for data in raw:
            x = torch.from_numpy(np.ascontiguousarray(data))
            bad = ~torch.isfinite(x)
            if bad.any():
                first = seen + int(bad.any(dim=0).nonzero()[0])
                raise AudioFileError(
                    f"{path} contains NaN or infinite samples (the first at {first / sample_rate:.3f} s): "
                    "repair or re-export the file (or replace them, e.g. numpy.nan_to_num) and run again"
                )
            clipped += int((x.abs() >= 0.999).sum())
            if x.shape[0] == 1 and channels > 1:
                x = x.expand(channels, -1)
            seen += x.shape[-1]
            yield x
        if seen == 0 and info.frames and info.sample_rate != sample_rate:
            raise AudioFileError(_too_short(path, info, sample_rate))
        if seen == 0:
            raise AudioFileError(f"{path} holds no audio (zero samples)")
        if clipped > 0.001 * seen * channels:
            log.warning(
                f"{path.name}: {clipped} samples at full scale (clipped input); estimates will carry the distortion"
            )

    return info, checked()


def _too_short(path: Path, info: AudioInfo, sample_rate: int) -> str:
    """Why a file of a few samples came out of resampling empty."""
    n = info.frames
    has = f"{path} is too short: {n} sample{'s' if n != 1 else ''} at {info.sample_rate} Hz"
    if _ffmpeg_has_soxr():
        least = math.ceil(info.sample_rate / (2 * sample_rate))
        return (
            f"{has}, less than one at the model's {sample_rate} Hz; the model needs at least 1 sample at "
            f"{sample_rate} Hz ({least} at {info.sample_rate} Hz)"
        )
    return (
        f"{has}: ffmpeg's resampler (without libsoxr) gives no samples at {sample_rate} Hz for a file this "
        f"short; the model needs at least 1 sample at {sample_rate} Hz: resample the file to {sample_rate} Hz first"
    )


def read_audio(path: str | Path) -> tuple[torch.Tensor, int]:
    """A whole file as mono float32 ``(samples,)`` at its own rate (channels averaged)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AudioFileError(f"audio file not found: {path}")
    info = audio_info(path)
    _, blocks = read_blocks(path, info.sample_rate, info.channels)
    return torch.cat(list(blocks), dim=-1).mean(dim=0), info.sample_rate
