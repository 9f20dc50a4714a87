"""Reading and answering JSON bodies: for the project's blueprints and yours."""

import select
from collections.abc import Callable

from flask import current_app, g, request
from gevent.monkey import get_original

from app import sse
from app.errors import APIError
from app.request_body import INLINE_PARSE_BYTES, parse_json_body
from engine_bridge.offload import run_off_hub

# The real poll(): gevent's patched one would park the greenlet instead of answering at once.
_poll = get_original("select", "poll")
_CLOSED = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0x2000)


def json_object() -> dict:
    """The request body as a JSON object, whatever Content-Type the client sent.

    The body's size is checked first (MAX_REQUEST_BYTES, a 413); large bodies are parsed off the
    gevent hub. Anything that is not clean JSON is a 400.
    """
    data = request.get_data(cache=True)
    body = run_off_hub(parse_json_body, data) if len(data) > INLINE_PARSE_BYTES else parse_json_body(data)
    if not isinstance(body, dict):
        raise APIError("The request body must be a JSON object.")
    return body


def request_id() -> str:
    """The request id (X-Request-Id) guards assigned to this request."""
    return g.request_id


def client_gone_probe() -> Callable[[], bool]:
    """A cheap check of whether this request's client has closed its connection.

    It asks the kernel about the socket without reading from it: a client that timed out or
    closed has sent its FIN (POLLRDHUP). Without a socket (Flask's test client) it says no.
    """
    sock = request.environ.get("gunicorn.socket")
    fileno = sock.fileno() if sock is not None else -1
    if fileno < 0:
        return lambda: False

    def gone() -> bool:
        poller = _poll()
        poller.register(fileno, _CLOSED)
        return any(events & _CLOSED for _, events in poller.poll(0))

    return gone


def json_response(result, status: int = 200):
    """result as a JSON response, encoded off the gevent hub (a /tokenize answer can be megabytes)."""
    provider = current_app.json
    body = run_off_hub(provider.dumps, result)
    return current_app.response_class(body + "\n", status=status, mimetype=provider.mimetype)


def respond(result):
    """A JSON response for a dict, an SSE stream for an iterator of events."""
    return json_response(result) if isinstance(result, dict) else sse.response(result)
