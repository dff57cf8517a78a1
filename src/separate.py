"""Separate audio files with a trained model:
``python src/separate.py ckpt=PATH input=<file or folder> output=DIR``."""

from audiolab.cli import separate_main

if __name__ == "__main__":
    separate_main()
