"""moh: a tiny transformer LM with fully adaptive Mixture-of-Heads attention and honest telemetry."""

__version__ = "0.1.0"
