"""Where stored responses live for previous_response_id: this worker's memory, or Redis.

A stored response is a JSON string: the response body and the conversation that led to it. Both
stores forget a response after RESPONSE_STORE_TTL_SECONDS; the memory store also drops the
oldest responses once it holds more than RESPONSE_STORE_MAX_BYTES.
"""

import logging
import threading
import time
from collections import OrderedDict

from app.errors import APIError

log = logging.getLogger(__name__)

REDIS_KEY_PREFIX = "vllm-flask-server:response:"


class StoreUnavailable(APIError):
    """The store could not be read (Redis is down)."""

    def __init__(self):
        super().__init__("The response store is unavailable; previous_response_id cannot be resolved right "
                         "now. Please retry shortly.", status=503, type="server_error",
                         code="response_store_unavailable")


class MemoryResponseStore:
    """Responses in this worker's memory, bounded in time and in size (oldest dropped first)."""

    def __init__(self, ttl_seconds: float, max_bytes: int):
        self.ttl_seconds = ttl_seconds
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, response_id: str, value: str) -> None:
        if len(value) > self.max_bytes:
            log.warning("response %s is larger than RESPONSE_STORE_MAX_BYTES; not stored", response_id)
            return
        with self._lock:
            self._drop(response_id)
            self._entries[response_id] = (time.monotonic() + self.ttl_seconds, value)
            self._bytes += len(value)
            now = time.monotonic()
            while self._entries and (self._bytes > self.max_bytes or next(iter(self._entries.values()))[0] <= now):
                self._drop(next(iter(self._entries)))

    def get(self, response_id: str) -> str | None:
        with self._lock:
            entry = self._entries.get(response_id)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                self._drop(response_id)
                return None
            return entry[1]

    def delete(self, response_id: str) -> bool:
        with self._lock:
            return self._drop(response_id)

    def _drop(self, response_id: str) -> bool:
        entry = self._entries.pop(response_id, None)
        if entry is not None:
            self._bytes -= len(entry[1])
        return entry is not None


class RedisResponseStore:
    """Responses in Redis, shared by every replica, each expiring after the TTL."""

    def __init__(self, url: str, ttl_seconds: float):
        import redis

        self.ttl_seconds = ttl_seconds
        self._redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def put(self, response_id: str, value: str) -> None:
        try:
            self._redis.set(REDIS_KEY_PREFIX + response_id, value, ex=max(1, int(self.ttl_seconds)))
        except Exception as exc:
            # The answer is still given; only its follow-ups will not find it.
            log.error("could not store response %s in Redis: %s", response_id, exc)

    def get(self, response_id: str) -> str | None:
        try:
            value = self._redis.get(REDIS_KEY_PREFIX + response_id)
        except Exception as exc:
            log.error("could not read response %s from Redis: %s", response_id, exc)
            raise StoreUnavailable() from exc
        return value.decode("utf-8") if value is not None else None

    def delete(self, response_id: str) -> bool:
        try:
            return bool(self._redis.delete(REDIS_KEY_PREFIX + response_id))
        except Exception as exc:
            raise StoreUnavailable() from exc


def response_store(config) -> "MemoryResponseStore | RedisResponseStore":
    """The store RESPONSE_STORE_URI names: memory:// (default) or redis://host:port/db."""
    uri = config["RESPONSE_STORE_URI"]
    ttl = config["RESPONSE_STORE_TTL_SECONDS"]
    if uri.startswith(("redis://", "rediss://", "unix://")):
        return RedisResponseStore(uri, ttl)
    if uri != "memory://":
        raise ValueError(f"RESPONSE_STORE_URI must be memory:// or redis://..., not {uri!r}")
    return MemoryResponseStore(ttl, config["RESPONSE_STORE_MAX_BYTES"])
