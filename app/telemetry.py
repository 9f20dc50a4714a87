"""What every request leaves behind: one log line and the HTTP metrics, taken when its response ends.

The record is made by a WSGI middleware, not a Flask hook, because a stream's response ends long
after its view returned: only the WSGI server's close() knows the real status, duration, token
counts and whether the client left early.
"""

import logging
import time
from dataclasses import dataclass, field

from flask import has_request_context, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("app.requests")

RECORD_KEY = "app.request_record"
# Requests that matched no route share one label, so scanners cannot grow the metrics.
UNMATCHED = "unmatched"
# From a health probe to a multi-minute generation.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300, 600)


@dataclass
class RequestRecord:
    """One request, filled in as it goes: by the middleware, the guards and the serving objects."""

    method: str = ""
    path: str = ""
    started: float = field(default_factory=time.perf_counter)
    endpoint: str = UNMATCHED
    request_id: str | None = None
    status: int | None = None
    client: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_at: float | None = None
    error_code: str | None = None
    # The client went away before the whole response was sent.
    aborted: bool = False
    # The response cache's verdict (hit, miss, bypass) when it is on.
    cache: str | None = None

    def first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def fields(self, duration: float) -> dict:
        """The request's log line, as key/value pairs (None values left out)."""
        values = {
            "event": "request",
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_s": round(self.first_token_at - self.started, 4) if self.first_token_at else None,
            "duration_s": round(duration, 4),
            "client": self.client,
            "error_code": self.error_code,
            "aborted": self.aborted or None,
            "cache": self.cache,
        }
        return {k: v for k, v in values.items() if v is not None}


def current_record() -> RequestRecord:
    """The record of the request being handled (a detached one outside a request)."""
    if has_request_context():
        record = request.environ.get(RECORD_KEY)
        if record is not None:
            return record
    return RequestRecord()


class HttpMetrics:
    """The HTTP side's Prometheus metrics, in a registry of the app's own."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests", "HTTP requests answered, by route and status.",
                                ["method", "endpoint", "status"], registry=self.registry)
        self.duration = Histogram("http_request_duration_seconds",
                                  "Time from request to the end of its response (a stream's last event).",
                                  ["method", "endpoint"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("http_requests_in_flight", "HTTP requests being handled, streams included.",
                               registry=self.registry)
        self.rate_limited = Counter("http_rate_limit_rejections",
                                    "Requests refused with 429: limit=rate (requests per window) or "
                                    "limit=concurrency (generations at once).",
                                    ["limit"], registry=self.registry)
        self.client_aborts = Counter("http_client_aborts",
                                     "Responses the client closed before their end (the generation was aborted).",
                                     ["endpoint"], registry=self.registry)
        self.cache_lookups = Counter("http_response_cache_lookups",
                                     "Generation requests the response cache saw: result=hit (answered from "
                                     "it), miss (generated, then stored), bypass (not reproducible).",
                                     ["endpoint", "result"], registry=self.registry)
        self.cache_errors = Counter("http_response_cache_errors",
                                    "Response cache store operations that failed (answered as misses).",
                                    ["operation"], registry=self.registry)
        # Both labels exist from the start, so a dashboard sees 0 rather than no series.
        for limit in ("rate", "concurrency"):
            self.rate_limited.labels(limit)

    def observe(self, record: RequestRecord, duration: float) -> None:
        self.requests.labels(record.method, record.endpoint, str(record.status)).inc()
        self.duration.labels(record.method, record.endpoint).observe(duration)
        if record.error_code == "rate_limit_exceeded":
            self.rate_limited.labels("rate").inc()
        elif record.error_code == "concurrency_limit_exceeded":
            self.rate_limited.labels("concurrency").inc()
        if record.aborted:
            self.client_aborts.labels(record.endpoint).inc()


class _ObservedBody:
    """A response body that reports its request once the server closes it."""

    def __init__(self, body, on_close):
        self._body = body
        self._on_close = on_close

    def __iter__(self):
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close()


class RequestObserver:
    """WSGI middleware: a RequestRecord per request, reported when the response is closed."""

    def __init__(self, wsgi_app, metrics: HttpMetrics):
        self.wsgi_app = wsgi_app
        self.metrics = metrics

    def __call__(self, environ, start_response):
        record = RequestRecord(method=environ.get("REQUEST_METHOD", ""), path=environ.get("PATH_INFO", ""))
        environ[RECORD_KEY] = record
        self.metrics.in_flight.inc()

        def recording_start_response(status, headers, exc_info=None):
            record.status = int(status.split(" ", 1)[0])
            return start_response(status, headers, exc_info)

        try:
            body = self.wsgi_app(environ, recording_start_response)
        except BaseException:
            record.status = record.status or 500
            self._finish(record, environ)
            raise
        return _ObservedBody(body, lambda: self._finish(record, environ))

    def _finish(self, record: RequestRecord, environ) -> None:
        duration = time.perf_counter() - record.started
        # Read now, after ProxyFix (outside this middleware) put the forwarded address in place.
        record.client = environ.get("REMOTE_ADDR")
        self.metrics.in_flight.dec()
        self.metrics.observe(record, duration)
        log.info("%s %s %s", record.method, record.path, record.status, extra={"fields": record.fields(duration)})


def init_app(app) -> HttpMetrics:
    """Record every request of app; the metrics go to app.extensions["http_metrics"]."""
    metrics = HttpMetrics()
    app.extensions["http_metrics"] = metrics
    app.wsgi_app = RequestObserver(app.wsgi_app, metrics)

    @app.before_request
    def name_the_route():
        record = current_record()
        record.endpoint = request.url_rule.rule if request.url_rule is not None else UNMATCHED

    return metrics
