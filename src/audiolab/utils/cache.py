"""On-disk caches are named by what they depend on (and written with
:func:`audiolab.utils.atomic.atomic_write`, so that no reader ever sees half of one)."""

from __future__ import annotations

import hashlib
import json


def config_hash(config: object) -> str:
    """16 hex digits of the SHA-1 of ``config`` as canonical JSON (keys sorted): the name
    of a cache folder, so that a changed input never reads a stale cache."""
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
