"""The package version, below every layer (the writer records it in each manifest)."""

__version__ = "0.1.0"
