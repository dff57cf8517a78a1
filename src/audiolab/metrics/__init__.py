from audiolab.metrics.pitch import RawChromaAccuracy, RawPitchAccuracy
from audiolab.metrics.spectral import LogSpectralDistance, log_spectral_distance

__all__ = ["LogSpectralDistance", "RawChromaAccuracy", "RawPitchAccuracy", "log_spectral_distance"]
