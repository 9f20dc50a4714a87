"""Production guards: request ids, API keys and rate limits (the cap on generations: app.concurrency)."""

import hashlib
import hmac
import logging
import re
import uuid

from flask import Flask, g, request
from flask_limiter import Limiter
from werkzeug.middleware.proxy_fix import ProxyFix

from app.errors import APIError
from app.telemetry import current_record

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
# A client's request id is kept when it is this plain; anything else is replaced.
_REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Paths that need no key and count against no limit (probes, scrapers, the API description,
# and the chat page's static files, which hold no secret: the page's own calls to /v1/* carry
# the key its user typed).
OPEN_PATHS = ("/health", "/metrics", "/openapi.json", "/")
OPEN_PREFIXES = ("/playground/",)


def _request_id() -> str:
    supplied = request.headers.get(REQUEST_ID_HEADER, "")
    return supplied if _REQUEST_ID_PATTERN.match(supplied) else uuid.uuid4().hex


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _key_id(key: str) -> str:
    """A short, non-reversible name for an API key, safe for logs and rate-limit buckets."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def load_api_keys(config) -> list[str]:
    """Keys from API_KEYS (comma-separated) and API_KEYS_FILE (one per line, # comments)."""
    keys = [k.strip() for k in (config.get("API_KEYS") or "").split(",") if k.strip()]
    path = config.get("API_KEYS_FILE")
    if path:
        with open(path, encoding="utf-8") as handle:
            keys += [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    return keys


def _rate_limit_key() -> str:
    """Whom a request counts against: its API key when keys are on, else the client address."""
    return getattr(g, "api_key_id", None) or request.remote_addr or "unknown"


def _is_open_path() -> bool:
    return request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIXES)


def init_app(app: Flask) -> Limiter:
    """Install the guards on app; returns the rate limiter."""
    config = app.config
    if config["TRUSTED_PROXY_COUNT"]:
        # Behind nginx: take the client address and scheme from X-Forwarded-* set by that many proxies.
        count = config["TRUSTED_PROXY_COUNT"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=count, x_host=count)

    api_keys = load_api_keys(config)
    if api_keys:
        log.info("API keys are required on /v1/* (%d key(s) configured)", len(api_keys))
    else:
        log.warning("no API_KEYS set: the API is open to anyone who can reach it (fine for development)")
    encoded_keys = [k.encode() for k in api_keys]

    @app.before_request
    def identify_and_authenticate():
        g.request_id = _request_id()
        if not encoded_keys or _is_open_path():
            return
        token = _bearer_token()
        # Compare against every key, always, in constant time per key.
        matched = False
        for key in encoded_keys:
            matched |= hmac.compare_digest(key, (token or "").encode())
        if not matched:
            message = ("Incorrect API key provided." if token else
                       "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.")
            raise APIError(message, status=401, code="invalid_api_key")
        g.api_key_id = _key_id(token)

    # Registered before the limiter's own after_request hook, so it runs after it.
    @app.after_request
    def tag_response(response):
        request_id = g.get("request_id") or _request_id()
        response.headers[REQUEST_ID_HEADER] = request_id
        current_record().request_id = request_id
        # The limiter puts its window's Retry-After on every response; it only means something
        # on a refusal, and an error's own value (the concurrency cap's 1 s) wins.
        if response.status_code not in (429, 503):
            response.headers.pop("Retry-After", None)
        response.headers.update(g.get("error_headers") or {})
        return response

    limiter = Limiter(
        key_func=_rate_limit_key,
        app=app,
        default_limits=[config["RATE_LIMIT"]],
        default_limits_exempt_when=_is_open_path,
        storage_uri=config["RATELIMIT_STORAGE_URI"],
        headers_enabled=True,
        strategy="moving-window",
        # If the storage (Redis) is unreachable, keep serving: log it and count in memory instead.
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        key_prefix="vllm-flask-server",
    )
    return limiter
