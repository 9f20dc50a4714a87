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
    # Requests per client (API key, else address) and window, in flask-limiter's notation.
    RATE_LIMIT = os.environ.get("RATE_LIMIT") or "1000/minute"
    # memory:// counts per worker; redis://host:port/db shares one budget across replicas.
    RATELIMIT_STORAGE_URI = os.environ.get("RATELIMIT_STORAGE_URI") or "memory://"
    # Comma-separated keys and/or a file of keys, one per line; none means an open server.
    API_KEYS = os.environ.get("API_KEYS", "")
    API_KEYS_FILE = os.environ.get("API_KEYS_FILE", "")
    # Sequences generating at once (a request weighs prompts x n); the next request gets an
    # immediate 429.
    MAX_CONCURRENT = _int("MAX_CONCURRENT", 100)
    # The most sequences (prompts x n) one request may ask for; more is a 400.
    MAX_SEQUENCES_PER_REQUEST = _int("MAX_SEQUENCES_PER_REQUEST", 16)
    # The most tokens one request may cost: its prompts' tokens plus max_tokens for every
    # sequence. 0: twice the largest single generation (2 x (MAX_PROMPT_TOKENS + MAX_OUTPUT_TOKENS)).
    MAX_REQUEST_TOKENS = _int("MAX_REQUEST_TOKENS", 0)
    # Proxies in front that set X-Forwarded-For (1 behind one nginx); 0 trusts no such header.
    TRUSTED_PROXY_COUNT = _int("TRUSTED_PROXY_COUNT", 0)
    # Seconds between `: keep-alive` comments while a stream waits for its first or next token.
    SSE_KEEPALIVE_SECONDS = float(os.environ.get("SSE_KEEPALIVE_SECONDS") or 15)
    # Where /v1/responses keeps responses for previous_response_id: memory:// (this worker) or
    # redis://host:port/db (shared by replicas); for how long; and, in memory, how many bytes at most.
    RESPONSE_STORE_URI = os.environ.get("RESPONSE_STORE_URI") or "memory://"
    RESPONSE_STORE_TTL_SECONDS = float(os.environ.get("RESPONSE_STORE_TTL_SECONDS") or 3600)
    RESPONSE_STORE_MAX_BYTES = _int("RESPONSE_STORE_MAX_BYTES", 256 * 1024 * 1024)
    # Keep the JSON we send compact and in insertion order.
    JSON_SORT_KEYS = False
    # An EngineBridge to use instead of the process's own (tests pass a stand-in here).
    ENGINE_BRIDGE = None
