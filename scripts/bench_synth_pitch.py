"""Does synthetic pitch data keep up with training? One run, one table.

Times, on the same machine and thread settings, (a) rendering one training batch of
``synth_pitch`` and (b) one CREPE training step (forward, backward, Adam) on such a
batch, and prints both and their ratio. Rendering must stay well below the step time,
or the data starves the model.

    .venv/bin/python scripts/bench_synth_pitch.py [--capacity tiny] [--batch-size 32] [--repeats 20]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from audiolab.audio.pitch_grid import gaussian_targets
from audiolab.data.synth_pitch import STREAM_TRAIN, SynthPitchDataset, SynthToneRenderer
from audiolab.nets.crepe import Crepe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", default="tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    dataset = SynthPitchDataset(SynthToneRenderer(), size=10**9, n_frames=1, seed=0, stream=STREAM_TRAIN)
    net = Crepe(args.capacity, dropout=0.0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    b = args.batch_size

    def render(step: int):
        items = dataset.__getitems__(list(range(step * b, (step + 1) * b)))
        return (torch.stack([i[k] for i in items]) for k in ("frames", "f0", "voiced"))

    def train_step(frames, f0, voiced):
        logits = net.logits(frames)
        loss = F.binary_cross_entropy_with_logits(logits, gaussian_targets(f0, voiced))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    batches = [tuple(render(s)) for s in range(3)]  # warm-up
    for batch in batches:
        train_step(*batch)

    start = time.perf_counter()
    batches = [tuple(render(s)) for s in range(args.repeats)]
    render_s = (time.perf_counter() - start) / args.repeats
    start = time.perf_counter()
    for batch in batches:
        train_step(*batch)
    step_s = (time.perf_counter() - start) / args.repeats

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {b}, CREPE {args.capacity}")
    print(f"{'what':<34}{'ms / batch':>12}")
    print(f"{'render a synth_pitch batch':<34}{1000 * render_s:>12.1f}")
    print(f"{'CREPE training step':<34}{1000 * step_s:>12.1f}")
    print(f"{'ratio render / step':<34}{render_s / step_s:>12.3f}")


if __name__ == "__main__":
    main()
