"""Pitch tracking: ``predict`` / ``embed`` for audio in memory, the file helpers, the
pretrained CREPE weights, decoders and the pitch grid (:mod:`audiolab.audio.pitch_grid`,
shared with the networks, which sit below this package and never import it)."""

from audiolab.audio.pitch_grid import bin_cents, cents_to_hz, gaussian_targets, hz_to_cents
from audiolab.pitch.decode import DECODERS, decode
from audiolab.pitch.inference import (
    embed,
    embed_files_to_files,
    load_model,
    predict,
    predict_files,
    predict_files_to_files,
)
from audiolab.pitch.stream import PitchStream

__all__ = [
    "DECODERS",
    "PitchStream",
    "bin_cents",
    "cents_to_hz",
    "decode",
    "embed",
    "embed_files_to_files",
    "gaussian_targets",
    "hz_to_cents",
    "load_model",
    "predict",
    "predict_files",
    "predict_files_to_files",
]
