"""DataModules, datasets and synthetic data generators."""
