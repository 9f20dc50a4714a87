"""The cap on sequences generating at once: per process, or across replicas through Redis leases."""

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

from app.errors import APIError

log = logging.getLogger(__name__)

# Where the shared count lives in Redis (a sorted set of lease ids scored by their expiry).
KEY = "vllm-flask-server:concurrency"
# After Redis failed, how long the cap counts in this process before trying Redis again.
RETRY_REDIS_SECONDS = 5.0
# Redis calls are on the request path: a Redis that does not answer must not hold requests up.
REDIS_CONNECT_TIMEOUT = 0.5
REDIS_TIMEOUT = 1.0

# Drops expired leases, then takes `weight` slots if they fit. Redis's own clock scores the
# leases, so replicas with skewed clocks agree; the whole script is atomic.
ACQUIRE_SCRIPT = """
local key, limit, lease_ms, weight, lease = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local used = redis.call('ZCARD', key)
if used + weight > limit then return {0, used} end
for i = 1, weight do redis.call('ZADD', key, now + lease_ms, lease .. '#' .. i) end
redis.call('PEXPIRE', key, lease_ms * 2)
return {1, used + weight}
"""
# Pushes the expiry of the given slots forward; a slot that expired already stays gone (it may
# have been given to another request). Returns the slots that were gone.
REFRESH_SCRIPT = """
local key, lease_ms = KEYS[1], tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lost = {}
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) > now then
    redis.call('ZADD', key, now + lease_ms, ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
redis.call('PEXPIRE', key, lease_ms * 2)
return lost
"""


def _refusal(limit: int, in_use: int, weight: int, where: str) -> APIError:
    return APIError(f"The server is generating its maximum of {limit} sequences at once{where} "
                    f"({in_use} in use, this request needs {weight}). Please retry shortly.",
                    status=429, type="requests", code="concurrency_limit_exceeded",
                    headers={"Retry-After": "1"})


class ConcurrencyLimit:
    """At most `limit` sequences generating at once in this worker; the next request is refused, never queued.

    A request weighs its number of sequences (prompts x n), so one request with many prompts
    cannot hold the engine under a single slot. Greenlets never yield inside acquire or release,
    so a plain counter is safe.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0

    def acquire(self, weight: int = 1) -> Callable[[], None]:
        """Take weight slots or raise the 429; returns the function that gives them back (once)."""
        if self.in_use + weight > self.limit:
            raise _refusal(self.limit, self.in_use, weight, "")
        self.in_use += weight
        return _once(lambda: self.release(weight))

    def release(self, weight: int = 1) -> None:
        self.in_use -= weight


class SharedConcurrencyLimit:
    """At most `limit` sequences generating at once across every replica that shares one Redis.

    Each request holds a lease per sequence in a sorted set, scored by when it expires. A
    greenlet of this process pushes its leases' expiry forward every lease_seconds / 3 while
    they are held, so a replica that dies (kill -9) stops refreshing and its slots come back
    within lease_seconds. When Redis cannot be reached the cap counts in this process alone
    (each replica then allows the whole limit: it fails open, as the rate limit does), logs a
    warning, and tries Redis again after RETRY_REDIS_SECONDS.

    In the gevent worker the Redis client's sockets are gevent's, so a call waits without
    blocking the hub; its connection pool takes its lock only around list operations.
    """

    def __init__(self, limit: int, storage_uri: str, lease_seconds: float = 30.0, key: str = KEY):
        import redis

        self.limit = limit
        self.lease_seconds = lease_seconds
        self.key = key
        self.local = ConcurrencyLimit(limit)
        self._redis = redis.Redis.from_url(
            storage_uri, socket_connect_timeout=REDIS_CONNECT_TIMEOUT, socket_timeout=REDIS_TIMEOUT,
            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
        self._errors = (redis.RedisError, OSError)
        self._acquire_script = self._redis.register_script(ACQUIRE_SCRIPT)
        self._refresh_script = self._redis.register_script(REFRESH_SCRIPT)
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._leases: dict[str, int] = {}  # lease id -> weight, held by this process
        self._redis_down_until = 0.0
        self._refresher = None

    @property
    def in_use(self) -> int:
        """Sequences generating in this process (leased or, while Redis is down, counted here)."""
        return sum(self._leases.values()) + self.local.in_use

    @property
    def counting_locally(self) -> bool:
        return time.monotonic() < self._redis_down_until

    def acquire(self, weight: int = 1) -> Callable[[], None]:
        """Take weight slots (Redis leases, or local ones while Redis is down); returns their release."""
        if not self.counting_locally:
            lease = f"{self._owner}:{uuid.uuid4().hex[:12]}"
            try:
                granted, used = self._acquire_script(
                    keys=[self.key], args=[self.limit, int(self.lease_seconds * 1000), weight, lease])
            except self._errors as exc:
                self._redis_failed(exc)
            else:
                if self._redis_down_until:
                    self._redis_down_until = 0.0
                    log.warning("concurrency cap: Redis answers again; counting across replicas",
                                extra={"fields": {"event": "concurrency_storage_back"}})
                if not granted:
                    raise _refusal(self.limit, used, weight, " across its replicas")
                self._leases[lease] = weight
                self._keep_refreshed()
                return _once(lambda: self._release_lease(lease))
        return self.local.acquire(weight)

    def _release_lease(self, lease: str) -> None:
        weight = self._leases.pop(lease, 0)
        if not weight:
            return  # expired while it ran (see refresh)
        try:
            self._redis.zrem(self.key, *self._members(lease, weight))
        except self._errors as exc:
            # Not fatal: the lease expires on its own within lease_seconds.
            log.debug("concurrency cap: could not release a lease (%s); it expires by itself", exc)

    def refresh(self) -> None:
        """Push the expiry of every lease this process holds forward by lease_seconds."""
        if not self._leases:
            return
        members = [m for lease, weight in list(self._leases.items()) for m in self._members(lease, weight)]
        try:
            lost = self._refresh_script(keys=[self.key], args=[int(self.lease_seconds * 1000), *members])
        except self._errors as exc:
            log.debug("concurrency cap: could not refresh leases (%s)", exc)
            return
        if lost:
            # Their requests go on, no longer counted (nor refreshed, nor released).
            for lease in {member.decode().rpartition("#")[0] for member in lost}:
                self._leases.pop(lease, None)
            log.warning("concurrency cap: %d slot(s) expired before this process refreshed them "
                        "(was it stalled for CONCURRENCY_LEASE_SECONDS?); their requests go on uncounted",
                        len(lost), extra={"fields": {"event": "concurrency_leases_lost", "lost": len(lost)}})

    def _keep_refreshed(self) -> None:
        import gevent

        if self._refresher is None or self._refresher.dead:
            self._refresher = gevent.spawn(self._refresh_while_held)

    def _refresh_while_held(self) -> None:
        import gevent

        while self._leases:
            gevent.sleep(self.lease_seconds / 3)
            self.refresh()

    def _redis_failed(self, exc: BaseException) -> None:
        if not self._redis_down_until:
            log.warning("concurrency cap: Redis is unreachable (%s: %s); counting in this process only "
                        "(each replica allows MAX_CONCURRENT) and retrying Redis every %.0f s",
                        type(exc).__name__, exc, RETRY_REDIS_SECONDS,
                        extra={"fields": {"event": "concurrency_storage_down", "error": str(exc)}})
        self._redis_down_until = time.monotonic() + RETRY_REDIS_SECONDS

    @staticmethod
    def _members(lease: str, weight: int) -> list[str]:
        return [f"{lease}#{i}" for i in range(1, weight + 1)]


def _once(function: Callable[[], None]) -> Callable[[], None]:
    """function, made safe to call more than once (only the first call runs it)."""
    done = False

    def run_once() -> None:
        nonlocal done
        if not done:
            done = True
            function()

    return run_once


def concurrency_limit(config) -> "ConcurrencyLimit | SharedConcurrencyLimit":
    """The cap the config asks for: shared through Redis with CONCURRENCY_STORAGE_URI, else per process."""
    uri = config.get("CONCURRENCY_STORAGE_URI") or ""
    if uri and not uri.startswith("memory://"):
        return SharedConcurrencyLimit(config["MAX_CONCURRENT"], uri, config["CONCURRENCY_LEASE_SECONDS"])
    return ConcurrencyLimit(config["MAX_CONCURRENT"])
