"""Memory for code that allocates and frees the same large buffers over and over, such as
an evaluation worker scoring one track after another."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1


def keep_freed_memory(largest_block: int = 2**30) -> bool:
    """Have glibc's ``malloc`` serve blocks of up to ``largest_block`` bytes from its heap and
    keep freed memory there instead of handing it back to the kernel.

    By default glibc maps every block above 32 MB afresh and unmaps it when freed, so each
    call of a function that needs large temporaries pays a page fault per 4 KB of them
    again; with this policy the next call reuses the pages. The price: the process keeps
    its peak heap until it exits. Meant for worker processes and evaluation scripts, not
    for a library's import: it changes the whole process.

    Returns True where applied (Linux with glibc), False elsewhere (nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    block = min(int(largest_block), _INT_MAX)
    return bool(mallopt(_M_MMAP_THRESHOLD, block)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
