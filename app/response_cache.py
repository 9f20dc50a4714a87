"""The response cache: a repeated reproducible request is answered from a store, not by the engine.

Off unless RESPONSE_CACHE is set (`memory`, or a `redis://` URL shared by replicas). It wraps the
chat and completions serving objects: a request is looked up by a hash of its whole validated
request (so defaults, null fields and field order do not matter), the served model and the
caller's API key, and only when its answer is reproducible: greedy (temperature 0), or sampled
with an explicit seed and n = 1. A hit takes no concurrency slot and never reaches the engine;
the rate limit still counts it. A non-streamed request stores its body, a streamed one its
chunks (once it has ended normally), and each replays as it was sent, with a fresh id and
created; usage stays that of the original generation. A store that fails (Redis down) is a miss
with a logged warning, never an error.
"""

import hashlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator

from flask import Flask, g, has_request_context, request

from app import sse
from app.request_body import INLINE_PARSE_BYTES
from app.serving import EventStream, OpenAIServing, check_model
from app.telemetry import RequestRecord
from app.version import __version__
from engine_bridge.offload import run_off_hub

log = logging.getLogger(__name__)

HEADER = "X-Cache"
HIT, MISS, BYPASS = "hit", "miss", "bypass"
# Bump when the stored format or the key's content changes: old entries are then never read.
FORMAT = 1
REDIS_PREFIX = "vllm-flask-server:response:"
# After a store error, the store is left alone this long (each request a plain miss) before the
# next try, so a Redis outage costs one timeout every few seconds, not one per request.
RETRY_AFTER_ERROR_SECONDS = 5.0
REDIS_TIMEOUT_SECONDS = 1.0
# The tenant of every request when the server has no API keys.
OPEN_TENANT = "open"
# Fields that change how an answer is delivered, not the answer: the usage chunk is added or left
# out on replay, and max_completion_tokens is already folded into max_tokens by the schema.
_PRESENTATION_FIELDS = ("stream_options", "max_completion_tokens")


class MemoryStore:
    """This worker's own entries, least recently used first out, bounded in count and bytes."""

    def __init__(self, max_entries: int, max_bytes: int):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        # key -> (expires at, monotonic clock; the entry's bytes). Greenlets never yield in here.
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if time.monotonic() >= expires:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    def set(self, key: str, value: bytes, ttl: float) -> None:
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (time.monotonic() + ttl, value)
        self.bytes += len(value)
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.bytes -= len(value)


class RedisStore:
    """Entries in Redis, shared by every replica that uses the same URL; Redis expires them."""

    def __init__(self, url: str):
        import redis

        self.url = url
        self._redis = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_SECONDS,
                                           socket_connect_timeout=REDIS_TIMEOUT_SECONDS)

    def get(self, key: str) -> bytes | None:
        return self._redis.get(REDIS_PREFIX + key)

    def set(self, key: str, value: bytes, ttl: float) -> None:
        self._redis.set(REDIS_PREFIX + key, value, px=max(1, int(ttl * 1000)))


class ResponseCache:
    """Entries (JSON-encoded dicts) in a store, with the store's failures turned into misses."""

    def __init__(self, store, ttl: float, max_entry_bytes: int, metrics=None):
        self.store = store
        self.ttl = ttl
        self.max_entry_bytes = max_entry_bytes
        self.metrics = metrics
        self._paused_until = 0.0

    def get(self, key: str) -> dict | None:
        if self._paused():
            return None
        try:
            value = self.store.get(key)
        except Exception as exc:
            self._failed("get", exc)
            return None
        self._recovered()
        if value is None:
            return None
        return run_off_hub(json.loads, value) if len(value) > INLINE_PARSE_BYTES else json.loads(value)

    def put(self, key: str, entry: dict) -> None:
        value = json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode()
        if len(value) > self.max_entry_bytes or self._paused():
            return
        try:
            self.store.set(key, value, self.ttl)
        except Exception as exc:
            self._failed("set", exc)
            return
        self._recovered()

    def _paused(self) -> bool:
        return time.monotonic() < self._paused_until

    def _failed(self, operation: str, exc: Exception) -> None:
        if self.metrics is not None:
            self.metrics.cache_errors.labels(operation).inc()
        if not self._paused_until:
            log.warning("response cache unavailable (%s failed: %s); answering without it, retrying every "
                        "%.0f s", operation, exc, RETRY_AFTER_ERROR_SECONDS,
                        extra={"fields": {"event": "response_cache_unavailable"}})
        self._paused_until = time.monotonic() + RETRY_AFTER_ERROR_SECONDS

    def _recovered(self) -> None:
        if self._paused_until:
            self._paused_until = 0.0
            log.info("response cache available again", extra={"fields": {"event": "response_cache_available"}})


def is_reproducible(req: dict) -> bool:
    """Whether the same request always gets the same answer: greedy, or seeded with one choice.

    Greedy decoding is deterministic whatever n, logprobs or the other sampling fields. With
    sampling, an explicit seed makes one choice reproducible; n > 1 with sampling is never cached.
    """
    if req["temperature"] == 0:
        return True
    return req.get("seed") is not None and req["n"] == 1


def _without_nulls(value):
    """value with None entries dropped (a null optional field means its default) and tuples as lists."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_without_nulls(v) for v in value]
    return value


def cache_key(namespace: dict, tenant: str, req: dict) -> str:
    """The entry's name: a hash of what serves the request, whose it is, and the whole request."""
    request_fields = {k: v for k, v in req.items() if k not in _PRESENTATION_FIELDS}
    material = {"format": FORMAT, **namespace, "tenant": tenant, "request": _without_nulls(request_fields)}
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _cache_control() -> set[str]:
    """The request's Cache-Control directives, lower-cased, without arguments."""
    header = request.headers.get("Cache-Control", "") if has_request_context() else ""
    return {part.split("=", 1)[0].strip().lower() for part in header.split(",") if part.strip()}


def _tenant() -> str:
    """The caller: its API key's hash when the server has keys (guards set it), else one shared tenant."""
    return (g.get("api_key_id") if has_request_context() else None) or OPEN_TENANT


def _mark(status: str) -> None:
    if has_request_context():
        g.response_cache = status


class CachingServing:
    """A chat or completions serving object with the response cache in front of its create()."""

    def __init__(self, serving: OpenAIServing, cache: ResponseCache, metrics=None):
        self.serving = serving
        self.cache = cache
        self.metrics = metrics
        settings = serving.bridge.settings
        # Another model (or dtype, or server version) behind the same name answers differently.
        self.namespace = {"endpoint": serving.object_name, "model_source": settings.model,
                          "dtype": settings.dtype, "version": __version__}

    def __getattr__(self, name):
        return getattr(self.serving, name)

    def create(self, body: dict, request_id: str | None = None, record: RequestRecord | None = None,
               client_gone: Callable[[], bool] | None = None):
        """serving.create(...), or the stored answer when there is one (see the module's docstring)."""
        record = record or RequestRecord()
        tenant = _tenant()
        req, key = run_off_hub(self._load_and_key, body, tenant)
        record.model = req["model"]
        # What a miss would refuse is refused on a hit too.
        check_model(self.serving.bridge, req["model"])
        self.serving.sampling_options(req)
        directives = _cache_control()
        if key is None:
            return self._generate(body, req, request_id, record, client_gone, BYPASS)
        if "no-cache" not in directives:
            entry = self.cache.get(key)
            if entry is not None:
                self._count(record, HIT)
                return self._replay(entry, req, record)
        result = self._generate(body, req, request_id, record, client_gone, MISS)
        if "no-store" in directives:
            return result
        if isinstance(result, EventStream):
            return _RecordingStream(result, lambda entry: self.cache.put(key, entry))
        self.cache.put(key, {"body": result})
        return result

    def _load_and_key(self, body: dict, tenant: str) -> tuple[dict, str | None]:
        # In an offload thread: validation and hashing grow with the body.
        req = self.serving.schema.load(body)
        return req, cache_key(self.namespace, tenant, req) if is_reproducible(req) else None

    def _generate(self, body, req, request_id, record, client_gone, status):
        self._count(record, status)
        return self.serving.create(body, request_id, record, client_gone, validated=req)

    def _count(self, record: RequestRecord, status: str) -> None:
        record.cache = status
        _mark(status)
        if self.metrics is not None:
            self.metrics.cache_lookups.labels(record.endpoint, status).inc()

    def _replay(self, entry: dict, req: dict, record: RequestRecord):
        usage = entry["body"]["usage"] if "body" in entry else entry["usage"]
        record.first_token()
        record.prompt_tokens = usage["prompt_tokens"]
        record.completion_tokens = usage["completion_tokens"]
        response_id = f"{self.serving.id_prefix}{uuid.uuid4().hex}"
        created = int(time.time())
        if "body" in entry:
            return {**entry["body"], "id": response_id, "created": created}
        include_usage = (req.get("stream_options") or {}).get("include_usage", False)
        return _replayed_events(entry, response_id, created, include_usage)


def _replayed_events(entry: dict, response_id: str, created: int, include_usage: bool) -> Iterator[str]:
    """A stored stream's events as it sent them, with this response's id, created and usage chunk."""
    chunk = None
    for stored in entry["chunks"]:
        chunk = {}
        for name, value in stored.items():
            if name == "choices" and include_usage:
                chunk["usage"] = None
            chunk[name] = response_id if name == "id" else created if name == "created" else value
        yield sse.event(chunk)
    if include_usage and chunk is not None:
        yield sse.event({**chunk, "choices": [], "usage": entry["usage"]})
    yield sse.DONE


class _RecordingStream:
    """A streamed miss's events, passed through and kept; stored once the stream ends normally.

    Not stored: a stream that ended with an error event, or that its client left (the WSGI
    server closes it before [DONE]).
    """

    def __init__(self, stream: EventStream, store: Callable[[dict], None]):
        self._stream = stream
        self._store = store
        self._events = self._record()

    def __iter__(self) -> Iterator[str]:
        return self._events

    def close(self) -> None:
        try:
            self._events.close()
        finally:
            self._stream.close()

    def _record(self) -> Iterator[str]:
        chunks, indexes, finished, failed = [], set(), set(), False
        for event in self._stream:
            if event == sse.DONE:
                if not failed and indexes and indexes == finished:
                    self._store({"chunks": chunks, "usage": self._stream.usage()})
            elif event.startswith("data: {"):
                chunk = json.loads(event[len("data: "):])
                if "error" in chunk:
                    failed = True
                elif chunk.get("choices"):
                    chunk.pop("usage", None)
                    chunks.append(chunk)
                    for choice in chunk["choices"]:
                        indexes.add(choice["index"])
                        if choice.get("finish_reason"):
                            finished.add(choice["index"])
            yield event


def build_store(config):
    """The store RESPONSE_CACHE names, or None when the cache is off."""
    setting = (config.get("RESPONSE_CACHE") or "").strip()
    if setting.lower() in ("", "0", "off", "false", "none"):
        return None
    if setting.lower() == "memory":
        return MemoryStore(config["RESPONSE_CACHE_MAX_ENTRIES"], config["RESPONSE_CACHE_MAX_BYTES"])
    if setting.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(setting)
    raise ValueError(f"RESPONSE_CACHE={setting!r}: expected memory, a redis:// URL, or nothing (off)")


def init_app(app: Flask) -> ResponseCache | None:
    """Put the cache in front of chat and completions when RESPONSE_CACHE is set."""
    store = build_store(app.config)
    if store is None:
        return None
    metrics = app.extensions.get("http_metrics")
    cache = ResponseCache(store, app.config["RESPONSE_CACHE_TTL"], app.config["RESPONSE_CACHE_MAX_ENTRY_BYTES"],
                          metrics)
    app.extensions["response_cache"] = cache
    for name in ("serving_chat", "serving_completion"):
        app.extensions[name] = CachingServing(app.extensions[name], cache, metrics)
    where = "this worker's memory" if isinstance(store, MemoryStore) else "Redis"
    log.info("response cache on: reproducible requests are answered from %s for %.0f s", where, cache.ttl)

    @app.after_request
    def say_whether_cached(response):
        status = g.get("response_cache")
        if status is not None:
            response.headers[HEADER] = status
        return response

    return cache
