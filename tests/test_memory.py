"""Memory for repeated large temporaries (audiolab.utils.memory): the allocator policy for
evaluation processes, and the scratch pool of bss_eval."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest
import torch

from audiolab.utils import memory
from audiolab.utils.memory import _POOLING, ScratchPool

# Run in children: the policy changes the whole process. Each scores the same track three
# times and prints the page faults of each call, with bss_eval's own scratch pool turned off
# (it keeps its largest buffers itself, which would hide the difference).
CHILD = """
import resource, sys
import torch
from audiolab.metrics import bss_eval
from audiolab.metrics.bss_eval import bss_eval_v4
from audiolab.utils.memory import ScratchPool, keep_freed_memory

bss_eval._SCRATCH = ScratchPool(min_bytes=2**62)

g = torch.Generator().manual_seed(0)
refs = torch.randn(4, 12 * 44100, 2, generator=g, dtype=torch.float64)
ests = refs + 0.1 * torch.randn(refs.shape, generator=g, dtype=torch.float64)
applied = keep_freed_memory() if sys.argv[1] == "policy" else None
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    bss_eval_v4(refs, ests)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, *faults)
"""


def page_faults(mode: str) -> tuple[str, list[int]]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    applied, *faults = out.stdout.split()
    return applied, [int(f) for f in faults]


def test_keep_freed_memory_lets_repeated_calls_reuse_their_pages():
    applied, kept = page_faults("policy")
    if applied != "True":
        pytest.skip("keep_freed_memory needs Linux with glibc")
    _, default = page_faults("default")
    # by default the large temporaries are mapped afresh on every call (a fault per 4 KB
    # page, about 0.45 ms per MB on a VM); with the policy the later calls reuse the pages
    # (most of them: where the heap can grow in place depends on the address-space layout,
    # which differs from run to run, so one later call may still map a block afresh)
    assert min(default[1:]) > 20_000
    assert sum(kept[1:]) < sum(default[1:]) / 3


def test_keep_freed_memory_is_a_no_op_off_linux(monkeypatch):
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory.keep_freed_memory() is False


# ---- ScratchPool: large scratch buffers kept from one call to the next

def _touch_faults(t: torch.Tensor) -> int:
    """Page faults taken while writing every element of ``t``."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t.fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


needs_pooling = pytest.mark.skipif(not _POOLING, reason="ScratchPool keeps buffers only on Linux")


@needs_pooling
def test_scratch_pool_hands_the_same_pages_to_the_next_call():
    pool = ScratchPool(min_bytes=2**20)
    with pool.lease() as lease:
        first = lease.empty((1024, 8192), torch.float64)  # 64 MB
        assert first.shape == (1024, 8192) and first.dtype == torch.float64
        ptr = first.data_ptr()
        cold = _touch_faults(first)
        del first
    assert pool.kept_bytes() >= 64 * 2**20
    with pool.lease() as lease:
        again = lease.empty((1000, 8192), torch.float64)  # smaller: the same buffer serves
        assert again.data_ptr() == ptr
        warm = _touch_faults(again)
        again.copy_(torch.arange(again.numel(), dtype=torch.float64).view_as(again))
        assert again[-1, -1].item() == again.numel() - 1
        del again
    # the first time a fault per page: 16384 pages of 4 KB, or 32 transparent huge pages of
    # 2 MB (asked for, and given where the kernel has them); the pages are still there after
    assert cold >= 32
    assert warm < cold / 4
    pool.clear()
    assert pool.kept_bytes() == 0


def _smaps_field(address: int, field: str) -> int:
    """``field`` of the mapping of this process that holds ``address`` (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == f"{field}:":
                return int(line.split()[1])
    raise LookupError(f"no {field} for the mapping at {address:#x}")


@needs_pooling
def test_scratch_buffers_ask_for_transparent_huge_pages():
    """Where the kernel offers transparent huge pages (always, or on request: ``[madvise]``,
    the usual setting, under which a plain mapping is not eligible), the pool's buffers are
    eligible for them."""
    setting = "/sys/kernel/mm/transparent_hugepage/enabled"
    try:
        with open(setting) as f:
            mode = f.read()
    except OSError:
        pytest.skip(f"{setting} is not there: no transparent huge pages on this kernel")
    if "[never]" in mode:
        pytest.skip("transparent huge pages are turned off on this machine ([never])")
    pool = ScratchPool(min_bytes=2**20)
    with pool.lease() as lease:
        x = lease.empty((4 * 2**20,), torch.float64)  # 32 MB
        x.fill_(1.0)
        assert _smaps_field(x.data_ptr(), "THPeligible") == 1
        del x
    pool.clear()


@needs_pooling
def test_scratch_pool_works_where_the_kernel_refuses_huge_pages(monkeypatch):
    """A kernel built without transparent huge pages answers MADV_HUGEPAGE with EINVAL (as it
    does any advice it does not know, which stands in for it here): buffers still come."""
    import mmap

    probe = mmap.mmap(-1, 2**21, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with pytest.raises(OSError):
        probe.madvise(12345)
    probe.close()
    monkeypatch.setattr(memory, "_HUGEPAGE", 12345)
    pool = ScratchPool(min_bytes=2**20)
    with pool.lease() as lease:
        x = lease.empty((2**19,), torch.float64)  # 4 MB
        x.fill_(3.0)
        assert x.sum().item() == 3.0 * 2**19
        del x
    assert pool.kept_bytes() == 4 * 2**20


@needs_pooling
def test_scratch_pool_leases_in_use_do_not_share_and_the_pool_stays_under_its_cap():
    pool = ScratchPool(min_bytes=2**20, max_bytes=5 * 2**20)
    a, b = pool.lease(), pool.lease()
    x = a.empty((2**18,), torch.float64)  # 2 MB
    y = b.empty((2**18,), torch.float64)
    z = a.empty((2**18,), torch.float64)
    ptrs = {x.data_ptr(), y.data_ptr(), z.data_ptr()}
    assert len(ptrs) == 3
    x.fill_(1), y.fill_(2), z.fill_(3)
    assert (x.sum(), y.sum(), z.sum()) == (2**18, 2 * 2**18, 3 * 2**18)
    del x, y, z
    a.close()
    b.close()
    # three 2 MB buffers came back; two fit under the 5 MB cap
    assert pool.kept_bytes() == 4 * 2**20
    pool.clear()


def test_scratch_pool_leaves_small_and_non_cpu_buffers_to_torch():
    pool = ScratchPool(min_bytes=2**20)
    with pool.lease() as lease:
        small = lease.empty((16,), torch.float32)
        assert small.shape == (16,)
        meta = lease.empty((2**20,), torch.float64, device="meta")
        assert meta.device.type == "meta"
    assert pool.kept_bytes() == 0


def test_scratch_pool_is_plain_torch_empty_without_madv_free(monkeypatch):
    monkeypatch.setattr(memory, "_POOLING", False)
    pool = ScratchPool(min_bytes=1)
    with pool.lease() as lease:
        t = lease.empty((2**20,), torch.float64)
        t.fill_(1)
    assert pool.kept_bytes() == 0


@needs_pooling
def test_a_buffer_still_in_use_is_never_handed_out_again():
    """A tensor that outlives its lease (or the pool's buffers) keeps its memory: the buffer
    is not given to the next lease, and clearing the pool does not unmap it under it."""
    pool = ScratchPool(min_bytes=2**20)
    lease = pool.lease()
    kept = lease.empty((2**19,), torch.float64)[10:]  # a view holds the buffer too
    kept.fill_(5)
    lease.close()
    assert pool.kept_bytes() == 0
    with pool.lease() as other:
        fresh = other.empty((2**19,), torch.float64)
        assert fresh.data_ptr() != kept.data_ptr() - 10 * 8
        fresh.fill_(7)
        del fresh
    pool.clear()
    assert pool.kept_bytes() == 0
    assert kept.sum().item() == 5 * (2**19 - 10)
