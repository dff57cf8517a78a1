"""Export a trained pitch checkpoint as a model audiolab ships, with its voicing calibrated.

    .venv/bin/python scripts/export_pitch_model.py outputs/pitch_fast/<run>/checkpoints/<best>.ckpt [--name fast]

1. Loads the checkpoint (its stored config's ``_target_`` entries are checked first) and the
   DataModule of its stored config (the caches the training wrote are reused).
2. Calibrates the voicing: on the validation clips, the periodicity that
   ``audiolab.pitch.predict`` returns (the activation at the ``--decoder`` bin; 0 on constant
   frames) is compared with the exact voicing labels, and the threshold ``t`` with the most
   frames decided right is found. The output layer's bias is then shifted by ``-logit(t)``,
   so that ``periodicity >= 0.5`` is that decision.
3. Writes ``<name>.pt`` (a plain float32 state dict, read with ``weights_only=True``) and
   ``<name>.json`` (the network's arguments, the checkpoint, the commit, the calibration)
   into ``src/audiolab/pitch/weights/``, both atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

from audiolab.pitch.inference import decode_activations
from audiolab.pitch.pretrained import WEIGHTS_DIR
from audiolab.utils.atomic import atomic_write
from audiolab.utils.checkpoint import load_module


def validation_periodicity(net, datamodule, decoder: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Periodicity and voicing label of every real (unpadded) validation frame."""
    periods, labels = [], []
    with torch.inference_mode():
        for batch in datamodule.val_dataloader():
            frames = batch["frames"]
            constant = frames.amax(dim=-1) == frames.amin(dim=-1)
            _, period = decode_activations(net(frames), constant, decoder)
            valid = torch.isfinite(batch["times"])
            periods.append(period[valid])
            labels.append(batch["voiced"][valid].bool())
    return torch.cat(periods), torch.cat(labels)


def best_threshold(period: torch.Tensor, voiced: torch.Tensor) -> tuple[float, float]:
    """The threshold with the highest voicing accuracy, and that accuracy."""
    candidates = torch.linspace(0.02, 0.98, 97)
    accuracy = torch.stack([((period >= t) == voiced).float().mean() for t in candidates])
    best = int(accuracy.argmax())
    return float(candidates[best]), float(accuracy[best])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", help="a pitch checkpoint written by src/train.py")
    parser.add_argument("--name", default="fast", help="the model name users load it by")
    parser.add_argument("--decoder", default="viterbi", help="the decoder calibrated for (predict's default)")
    parser.add_argument("--out", default=str(WEIGHTS_DIR), help="folder of the shipped weights")
    args = parser.parse_args()
    torch.set_num_threads(1)

    module, run = load_module(args.ckpt)
    net = module.net.eval()
    datamodule = hydra.utils.instantiate(run.data)
    datamodule.prepare_data()
    datamodule.setup("fit")

    period, voiced = validation_periodicity(net, datamodule, args.decoder)
    before = float(((period >= 0.5) == voiced).float().mean())
    threshold, accuracy = best_threshold(period, voiced)
    with torch.no_grad():
        net.head.bias -= math.log(threshold / (1.0 - threshold))
    period, voiced = validation_periodicity(net, datamodule, args.decoder)
    after = float(((period >= 0.5) == voiced).float().mean())
    print(
        f"{len(voiced)} validation frames ({float(voiced.float().mean()):.1%} voiced): voicing accuracy at 0.5 "
        f"{before:.4f} before, best threshold {threshold:.2f} ({accuracy:.4f}), at 0.5 after the shift {after:.4f}"
    )

    net_args = {k: v for k, v in OmegaConf.to_container(run.model.net, resolve=True).items() if not k.startswith("_")}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    if commit and subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout:
        commit += " with uncommitted changes"
    meta = {
        "net": net_args,
        "source": {"checkpoint": Path(args.ckpt).name, "task_name": run.get("task_name"), "commit": commit or None},
        "calibration": {
            "decoder": args.decoder, "validation_frames": len(voiced), "threshold_before": threshold,
            "voicing_accuracy_before": before, "voicing_accuracy_after": after,
        },
    }
    state = {k: (v.float() if v.is_floating_point() else v).detach().contiguous() for k, v in net.state_dict().items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / f"{args.name}.pt", out / f"{args.name}.json") as (weights, card):
        torch.save(state, weights)
        card.write_text(json.dumps(meta, indent=2) + "\n")
    size = (out / f"{args.name}.pt").stat().st_size
    print(f"wrote {out / args.name}.pt ({size / 1024:.0f} KiB) and {args.name}.json")


if __name__ == "__main__":
    main()
