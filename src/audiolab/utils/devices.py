"""The ``device=`` setting of the command-line tools."""

from __future__ import annotations

import torch

from audiolab.utils.errors import AudiolabError


def resolve_device(name: str) -> torch.device:
    """``auto`` (the GPU when there is one), ``cpu``, ``cuda``, ``cuda:1``, ...; a GPU that
    is not there is the user's error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AudiolabError(f"device={name} is not a device: use cpu, cuda, cuda:<index> or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AudiolabError(
            f"device={name} but no CUDA GPU is available; use device=cpu or device=auto"
        )
    return device
