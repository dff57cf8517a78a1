"""Evaluate a checkpoint: ``python src/eval.py ckpt=PATH [data.root=...] [trainer=cpu]``.

Model and data are rebuilt from the config stored in the checkpoint."""

from audiolab.cli import eval_main

if __name__ == "__main__":
    eval_main()
