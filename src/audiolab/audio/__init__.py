"""DSP helpers: features, framing, resampling."""
