from audiolab.metrics.pitch import RawChromaAccuracy, RawPitchAccuracy

__all__ = ["RawChromaAccuracy", "RawPitchAccuracy"]
