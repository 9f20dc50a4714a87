"""Server settings read from the environment, in one class."""

import os


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


class Config:
    """Flask config for the HTTP side; engine settings live in engine_bridge.EngineSettings."""

    # Largest prompt a request may send, in tokens (the spec's 32,768).
    MAX_PROMPT_TOKENS = _int("MAX_PROMPT_TOKENS", 32768)
    # Largest max_tokens a request may ask for (the spec's 4,096).
    MAX_OUTPUT_TOKENS = _int("MAX_OUTPUT_TOKENS", 4096)
    # Request bodies above this many bytes get a 413 before they are parsed.
    MAX_CONTENT_LENGTH = _int("MAX_REQUEST_BYTES", 4 * 1024 * 1024)
    # Keep the JSON we send compact and in insertion order.
    JSON_SORT_KEYS = False
    # An EngineBridge to use instead of the process's own (tests pass a stand-in here).
    ENGINE_BRIDGE = None
