"""Instrument your own routed model: `Recorder` writes moh telemetry (docs/monitor.md)."""

from .recorder import Recorder

__all__ = ["Recorder"]
