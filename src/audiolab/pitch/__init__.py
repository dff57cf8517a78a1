"""Pitch helpers shared by networks, the pitch LightningModule, metrics and inference.

``predict``, ``embed`` and the file helpers (:mod:`audiolab.pitch.inference`) are
imported on first use: they need the CREPE network, whose module imports this package.
"""

from audiolab.pitch.cents import bin_cents, cents_to_hz, gaussian_targets, hz_to_cents
from audiolab.pitch.decode import DECODERS, decode

_INFERENCE = ("predict", "embed", "load_model", "predict_files", "predict_files_to_files", "embed_files_to_files")

__all__ = ["DECODERS", "bin_cents", "cents_to_hz", "decode", "gaussian_targets", "hz_to_cents", *_INFERENCE]


def __getattr__(name: str):
    if name in _INFERENCE:
        from audiolab.pitch import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'audiolab.pitch' has no attribute {name!r}")
