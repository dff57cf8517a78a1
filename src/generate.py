"""Generate sounds from a trained VAE: ``python src/generate.py ckpt=PATH n=16 digit=7 output=DIR``.

Writes one wav per sample and ``samples.png`` (their spectrograms)."""

from audiolab.cli import generate_main

if __name__ == "__main__":
    generate_main()
