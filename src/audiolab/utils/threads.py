"""Thread pools of worker processes, and of small work."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from audiolab.utils.memory import keep_freed_memory


def limit_threads(n: int = 1) -> None:
    """At most ``n`` threads in this process for torch and, where threadpoolctl is
    installed, the BLAS/OpenMP pools of numpy and scipy: worker processes x threads then
    never oversubscribe the cores."""
    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(n)


def evaluation_worker(n: int = 1) -> None:
    """Initializer of evaluation worker processes: :func:`limit_threads`, and an allocator
    that keeps freed memory (:func:`~audiolab.utils.memory.keep_freed_memory`), as each
    track's scoring allocates and frees the same large buffers again."""
    limit_threads(n)
    keep_freed_memory()


def one_thread_worker(worker_id: int) -> None:
    """``worker_init_fn`` of DataLoaders: one thread per loader worker, so that workers x
    threads never oversubscribe the cores."""
    limit_threads(1)


@contextlib.contextmanager
def at_most_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads capped at ``n`` inside the block, restored after it (also
    when the block raises). For work made of many small operations (a few dozen frames
    through a small network), where waking and joining a second thread for every operation
    costs more CPU than it saves wall time.

    With torch's OpenMP builds the cap is the calling thread's; but a Python thread that
    runs its first parallel torch operation while the cap is on may keep ``n`` threads
    for good. Do not use it where several Python threads start torch work at once."""
    before = torch.get_num_threads()
    if n >= before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_cpu_thread_when(small: bool, device: str | torch.device) -> contextlib.AbstractContextManager:
    """:func:`at_most_threads` ``(1)`` for ``small`` work on a CPU; on accelerators, and for
    work that is not small, the threads stay as they are."""
    if small and torch.device(device).type == "cpu":
        return at_most_threads(1)
    return contextlib.nullcontext()
