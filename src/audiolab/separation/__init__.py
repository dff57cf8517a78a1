"""Source separation inference: overlap-add ``separate()`` and its streaming form."""

from audiolab.separation.overlap_add import (
    WINDOWS,
    SeparationInputError,
    iter_separate,
    network_of,
    overlap_window,
    prepare_mixture,
    separate,
)

__all__ = [
    "WINDOWS",
    "SeparationInputError",
    "iter_separate",
    "network_of",
    "overlap_window",
    "prepare_mixture",
    "separate",
]
