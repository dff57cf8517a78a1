"""Memory for code that allocates and frees the same large buffers over and over, such as
an evaluation worker scoring one track after another: an allocator policy for the whole
process, and a pool of scratch buffers for one function."""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import mmap
import sys
import threading

import torch

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1


def keep_freed_memory(largest_block: int = 2**30) -> bool:
    """Have glibc's ``malloc`` serve blocks of up to ``largest_block`` bytes from its heap and
    keep freed memory there instead of handing it back to the kernel.

    By default glibc maps every block above 32 MB afresh and unmaps it when freed, so each
    call of a function that needs large temporaries pays a page fault per 4 KB of them again
    (on this project's VM about 0.45 ms per MB; museval's ``bss_eval`` of a 60-s track took
    48 s by default and 34 s with this policy). With this policy the second call reuses the
    first one's pages. (audiolab's own BSSEval keeps its largest buffers in a
    :class:`ScratchPool` and needs it less.) The price: the process keeps its
    peak heap until it exits. Meant for worker processes and evaluation scripts, not for
    a library's import: it changes the whole process.

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


class ScratchPool:
    """Large CPU scratch buffers kept from one call of a function to the next.

    A buffer of hundreds of MB taken from ``malloc`` is mapped afresh on every call and
    costs a page fault per 4 KB page on first touch: on this project's VM 0.2 s for the
    344 MB of frame spectra of a 60-s BSSEval call, more than the FFTs that fill them. Here
    buffers of ``min_bytes`` or more come from anonymous mappings that are kept when the
    call is done and handed to the next one, so after the first call their pages are
    already there. They are mapped in whole 2 MB units and asked to be backed by transparent
    huge pages (``MADV_HUGEPAGE``; Linux, where enabled): fewer TLB misses where they are
    read or written with large strides, and a fault per 2 MB rather than per 4 KB.

    Kept buffers cost no memory anyone else needs: on Linux they are marked ``MADV_FREE``
    between calls, so the kernel takes their pages back when it runs short (the next call
    then faults them in again, no data is kept) and leaves them in place otherwise. At most
    ``max_bytes`` are kept; :meth:`clear` lets them all go. Elsewhere (no ``MADV_FREE``: not
    Linux), and for other devices, :meth:`Lease.empty` is ``torch.empty``.

    A buffer that a tensor still uses when its lease is closed stays with that tensor
    (unmapped when it goes) and is never handed out again, so no two tensors share one.
    Thread-safe: concurrent calls take different buffers."""

    def __init__(self, min_bytes: int = 2**25, max_bytes: int = 2**31) -> None:
        self.min_bytes = min_bytes
        self.max_bytes = max_bytes
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()
        # buffers a tensor still used when their lease closed (left to that tensor)
        self.left_in_use = 0

    def lease(self) -> Lease:
        """Buffers for one call: take them with :meth:`Lease.empty`, and close the lease (or
        use it as a context manager) when no tensor from it is used any more."""
        return Lease(self)

    def kept_bytes(self) -> int:
        with self._lock:
            return sum(len(b) for b in self._free)

    def clear(self) -> None:
        """Let go of every kept buffer (unmapped at once, as none is in use)."""
        with self._lock:
            self._free = []

    def _take(self, nbytes: int) -> mmap.mmap:
        with self._lock:
            fits = [b for b in self._free if len(b) >= nbytes]
            if fits:
                buf = min(fits, key=len)
                self._free.remove(buf)
                return buf
        # whole 2 MB units, so that tracks of slightly different lengths share buffers
        size = -(-nbytes // _UNIT) * _UNIT
        buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if _HUGEPAGE is not None:
            try:
                buf.madvise(_HUGEPAGE)
            except OSError:  # EINVAL: a kernel built without transparent huge pages
                pass
        return buf

    def _give_back(self, bufs: list[mmap.mmap]) -> None:
        for buf in bufs:
            buf.madvise(mmap.MADV_FREE)
        with self._lock:
            self._free.extend(bufs)
            self._free.sort(key=len, reverse=True)
            while sum(len(b) for b in self._free) > self.max_bytes:
                self._free.pop()  # the smallest go first (unmapped as they go)


class Lease:
    """The buffers one call takes from a :class:`ScratchPool`."""

    def __init__(self, pool: ScratchPool) -> None:
        self._pool = pool
        self._held: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = "cpu"):
        """An uninitialised tensor, valid until the lease is closed."""
        device = torch.device(device)
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if device.type != "cpu" or nbytes < self._pool.min_bytes or not _POOLING:
            return torch.empty(shape, dtype=dtype, device=device)
        buf = self._pool._take(nbytes)
        with self._lock:
            self._held.append(buf)
        return torch.frombuffer(buf, dtype=dtype, count=count).view(shape)

    def close(self) -> None:
        """Hand the buffers back to the pool; one that a tensor still uses stays with that
        tensor instead (unmapped when it goes), so no two tensors ever share a buffer."""
        with self._lock:
            held, self._held = self._held, []
        free = []
        while held:
            buf = held.pop()
            # references: ``buf`` and getrefcount's argument; each tensor storage adds one
            if sys.getrefcount(buf) == 2:
                free.append(buf)
            else:
                with self._pool._lock:
                    self._pool.left_in_use += 1
            del buf
        self._pool._give_back(free)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_UNIT = 2**21
# Transparent huge pages asked for (where the kernel offers them only on request, the usual
# setting): a 2 MB page per TLB entry, where the frequency-major spectra are written and read
# with strides of kilobytes (a page per bin with 4 KB pages): 4-20 % off a steady BSSEval
# call in alternating A/B runs (medians and bests).
_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)
# Keeping buffers pays only where the kernel can be told that it may take their pages back.
_POOLING = sys.platform.startswith("linux") and hasattr(mmap, "MADV_FREE")

