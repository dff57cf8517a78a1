"""audiolab: a PyTorch Lightning + Hydra framework for audio machine learning."""

__version__ = "0.1.0"
