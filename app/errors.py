"""The one place where every error becomes OpenAI's error envelope and an HTTP status."""

import logging

from flask import g, has_request_context, jsonify, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from app import status
from app.telemetry import current_record
from engine_bridge import (
    ContextLengthExceeded,
    EngineFailed,
    EngineNotReady,
    GenerationInterrupted,
    RequestRejected,
)

log = logging.getLogger(__name__)

# Longest piece of client input quoted back in an error message.
EXCERPT_CHARS = 80


class APIError(Exception):
    """An error with everything OpenAI's envelope needs."""

    def __init__(self, message: str, status: int = 400, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def excerpt(value) -> str:
    """A short, safe quotation of client input for error messages."""
    text = repr(value)
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 3] + "..."


def _validation_param(messages) -> tuple[str, str]:
    """The dotted path of the first invalid field (e.g. messages[0].role) and its first message."""
    path = ""
    node = messages
    while isinstance(node, dict) and node:
        key, node = next(iter(node.items()))
        if isinstance(key, int):
            path += f"[{key}]"
        elif key != "_schema":
            path += f".{key}" if path else str(key)
    text = node[0] if isinstance(node, list) and node else str(node)
    return path, text


def to_api_error(exc: BaseException) -> APIError:
    """Map any exception from any layer to the APIError that describes it to the client."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ValidationError):
        param, text = _validation_param(exc.messages)
        if not param:
            return APIError(text)
        return APIError(f"Invalid value for '{param}': {text}", param=param)
    if isinstance(exc, ContextLengthExceeded):
        return APIError(str(exc), param=_prompt_param(), code="context_length_exceeded")
    if isinstance(exc, RequestRejected):
        return APIError(str(exc), param=exc.param)
    if isinstance(exc, EngineNotReady):
        return APIError(**status.not_ready_error(str(exc)), status=503, headers=status.retry_after_headers())
    if isinstance(exc, GenerationInterrupted):
        # Not a 503: the request had started, and a proxy must not send it to another replica.
        return APIError("The server is shutting down and stopped generating this response. Please retry the request.",
                        status=500, type="server_error", code="server_shutting_down")
    if isinstance(exc, EngineFailed):
        return APIError("The inference engine failed while processing your request.",
                        status=500, type="server_error", code="engine_failed")
    if isinstance(exc, HTTPException):
        return _from_http_exception(exc)
    return APIError("The server had an error while processing your request.",
                    status=500, type="server_error")


def _prompt_param() -> str:
    """The field that holds the prompt on this request's endpoint."""
    if has_request_context() and request.path.endswith("/chat/completions"):
        return "messages"
    if has_request_context() and request.path.endswith("/responses"):
        return "input"
    return "prompt"


def _from_http_exception(exc: HTTPException) -> APIError:
    status = exc.code or 500
    if status == 404:
        return APIError(f"Invalid URL ({request.method} {request.path})", status=404, code="not_found")
    if status == 405:
        return APIError(f"Method {request.method} is not allowed for {request.path}", status=405,
                        code="method_not_allowed")
    if status == 429:
        return APIError(f"Rate limit reached ({exc.description}). Please retry after the time in Retry-After.",
                        status=429, type="requests", code="rate_limit_exceeded")
    if status == 413:
        return APIError("The request body is too large.", status=413, code="request_too_large")
    if status == 400:
        return APIError("We could not parse the JSON body of your request. (HINT: This likely means "
                        "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                        "payload.)", status=400)
    if status == 415:
        return APIError("Content-Type must be application/json.", status=415,
                        code="unsupported_media_type")
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return APIError(exc.description or exc.name, status=status, type=kind)


def error_response(exc: BaseException):
    """The Flask response for exc."""
    if isinstance(exc, HTTPException) and exc.code is not None and exc.code < 400:
        return exc  # routing redirects (e.g. a missing trailing slash) are not errors
    error = to_api_error(exc)
    current_record().error_code = error.code or error.type
    if error.status >= 500:
        log.error("%s %s failed: %s", request.method, request.path, exc,
                  exc_info=not isinstance(exc, (APIError, HTTPException, EngineNotReady)))
    response = jsonify(error.body())
    response.status_code = error.status
    response.headers.update(error.headers)
    # Kept for guards.tag_response, which runs after the rate limiter rewrites headers.
    g.error_headers = error.headers
    return response


def init_app(app) -> None:
    """Route every exception raised while handling a request through error_response."""
    app.register_error_handler(Exception, error_response)
