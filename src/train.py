"""Train a model: ``python src/train.py [model=...] [data=...] [key=value ...]``.

See README.md and ``conf/train.yaml``; ``--help`` lists the config groups."""

from audiolab.cli import train_main

if __name__ == "__main__":
    train_main()
