"""Memory for repeated large temporaries (audiolab.utils.memory): the allocator policy for
evaluation processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from audiolab.utils import memory

# Run in children: the policy changes the whole process. Each scores the same track three
# times and prints the page faults of each call.
CHILD = """
import resource, sys
import torch
from audiolab.metrics.bss_eval import bss_eval_v4
from audiolab.utils.memory import keep_freed_memory

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
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True
    )
    applied, *faults = out.stdout.split()
    return applied, [int(f) for f in faults]


def test_keep_freed_memory_lets_repeated_calls_reuse_their_pages():
    applied, kept = page_faults("policy")
    if applied != "True":
        pytest.skip("keep_freed_memory needs Linux with glibc")
    _, default = page_faults("default")
    # by default the large temporaries are mapped afresh on every call (a fault per 4 KB
    # page); with the policy the later calls reuse the pages
    # (most of them: where the heap can grow in place depends on the address-space layout,
    # which differs from run to run, so one later call may still map a block afresh)
    assert min(default[1:]) > 20_000
    assert sum(kept[1:]) < sum(default[1:]) / 3


def test_keep_freed_memory_is_a_no_op_off_linux(monkeypatch):
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory.keep_freed_memory() is False
