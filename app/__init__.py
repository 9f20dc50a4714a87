"""The Flask application: HTTP and the OpenAI protocol. The engine lives behind engine_bridge.

Importing this package does not import Flask. gunicorn's master imports app.logs, and the worker
imports app.status before it builds the engine; vLLM's start-up must not find Flask's request
proxies in the process (see docs/engine-notes.md), so Flask is imported by create_app only.
"""

from app.version import __version__

__all__ = ["create_app", "__version__"]


def create_app(config: dict | None = None):
    """Application factory: config overrides Config (e.g. {"ENGINE_BRIDGE": bridge} in tests)."""
    from app.factory import create_app as build

    return build(config)
