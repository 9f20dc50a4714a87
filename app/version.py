"""The server's version, reported by /health."""

__version__ = "0.1.0"
