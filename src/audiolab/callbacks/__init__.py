"""Lightning callbacks, injectable from ``conf/callbacks``."""
