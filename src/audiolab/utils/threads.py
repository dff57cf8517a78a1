"""Thread pools of worker processes."""

from __future__ import annotations

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
