"""Hydra and Lightning glue."""
