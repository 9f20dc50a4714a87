"""Server settings read from the environment, in one class."""

import os


def _bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


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
    # Unset (or memory://): the cap counts in each worker. redis://host:port/db: one cap across
    # every replica sharing that Redis, held as leases that expire unless their holder refreshes them.
    CONCURRENCY_STORAGE_URI = os.environ.get("CONCURRENCY_STORAGE_URI") or ""
    # How long a dead replica's slots stay taken; holders refresh every third of it.
    CONCURRENCY_LEASE_SECONDS = float(os.environ.get("CONCURRENCY_LEASE_SECONDS") or 30)
    # The most sequences (prompts x n) one request may ask for; more is a 400.
    MAX_SEQUENCES_PER_REQUEST = _int("MAX_SEQUENCES_PER_REQUEST", 16)
    # The most tokens one request may cost: its prompts' tokens plus max_tokens for every
    # sequence. 0: twice the largest single generation (2 x (MAX_PROMPT_TOKENS + MAX_OUTPUT_TOKENS)).
    MAX_REQUEST_TOKENS = _int("MAX_REQUEST_TOKENS", 0)
    # Proxies in front that set X-Forwarded-For (1 behind one nginx); 0 trusts no such header.
    TRUSTED_PROXY_COUNT = _int("TRUSTED_PROXY_COUNT", 0)
    # Seconds between `: keep-alive` comments while a stream waits for its first or next token.
    SSE_KEEPALIVE_SECONDS = float(os.environ.get("SSE_KEEPALIVE_SECONDS") or 15)
    # The chat page at / (static files calling the API like any client); PLAYGROUND=0 turns it off.
    PLAYGROUND = _bool("PLAYGROUND", True)
    # The response cache: off (unset), "memory" (this worker's) or a redis:// URL (shared by replicas).
    RESPONSE_CACHE = os.environ.get("RESPONSE_CACHE", "")
    # Seconds an entry is served after it was stored.
    RESPONSE_CACHE_TTL = float(os.environ.get("RESPONSE_CACHE_TTL") or 3600)
    # Bounds of the memory cache (least recently used entries go first).
    RESPONSE_CACHE_MAX_ENTRIES = _int("RESPONSE_CACHE_MAX_ENTRIES", 1024)
    RESPONSE_CACHE_MAX_BYTES = _int("RESPONSE_CACHE_MAX_BYTES", 64 * 1024 * 1024)
    # Larger answers (long generations with logprobs) are not stored, in memory or in Redis.
    RESPONSE_CACHE_MAX_ENTRY_BYTES = _int("RESPONSE_CACHE_MAX_ENTRY_BYTES", 1024 * 1024)
    # Where /v1/responses keeps responses for previous_response_id: memory:// (this worker) or
    # redis://host:port/db (shared by replicas); for how long; and, in memory, how many bytes at most.
    RESPONSE_STORE_URI = os.environ.get("RESPONSE_STORE_URI") or "memory://"
    RESPONSE_STORE_TTL_SECONDS = float(os.environ.get("RESPONSE_STORE_TTL_SECONDS") or 3600)
    RESPONSE_STORE_MAX_BYTES = _int("RESPONSE_STORE_MAX_BYTES", 256 * 1024 * 1024)
    # Keep the JSON we send compact and in insertion order.
    JSON_SORT_KEYS = False
    # An EngineBridge to use instead of the process's own (tests pass a stand-in here).
    ENGINE_BRIDGE = None
