"""The loader under its historical name: the code lives in the package `analyze/load/` (one idea
per module; see its docstring)."""

from .load import INPUT_FORMATS, LoadError, load_records, load_run, sniff_format

__all__ = ["INPUT_FORMATS", "LoadError", "load_records", "load_run", "sniff_format"]
