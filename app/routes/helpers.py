"""Reading and answering JSON bodies: for the project's blueprints and yours."""

from flask import g, jsonify, request

from app import sse
from app.errors import APIError


def json_object() -> dict:
    """The request body as a JSON object, whatever Content-Type the client sent."""
    body = request.get_json(force=True, silent=False)
    if not isinstance(body, dict):
        raise APIError("The request body must be a JSON object.")
    return body


def request_id() -> str:
    """The request id (X-Request-Id) guards assigned to this request."""
    return g.request_id


def respond(result):
    """A JSON response for a dict, an SSE stream for an iterator of events."""
    return jsonify(result) if isinstance(result, dict) else sse.response(result)
