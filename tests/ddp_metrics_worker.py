"""A DDP rank for tests/test_pitch_metrics.py, in a module of its own so that the spawned
processes import only torch and the metrics (the test module imports much more)."""

from __future__ import annotations

import torch


def update_and_compute(rank: int, world: int, port: int, parts: list, out_dir: str) -> None:
    """Join a gloo group, update melody metrics with this rank's ``(est_times, est_cents,
    est_voiced, ref_times, ref_hz)`` clips, and save the synced result to
    ``out_dir/rank<rank>.pt``."""
    import torch.distributed as dist

    from audiolab.metrics.pitch import melody_metrics, resample_estimate

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    metrics = melody_metrics()
    for est_t, est_c, est_v, ref_t, ref_hz in parts[rank]:
        cents, voiced = resample_estimate(est_t, est_c, est_v, ref_t)
        metrics.update(cents, ref_hz, ref_hz > 0, est_voiced=voiced)
    torch.save({k: float(v) for k, v in metrics.compute().items()}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()
