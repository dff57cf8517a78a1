"""Track the pitch of audio files:
``python src/predict.py ckpt=<tiny|full|checkpoint> input=<file or folder> output=DIR``."""

from audiolab.cli import predict_main

if __name__ == "__main__":
    predict_main()
