"""Server-Sent Events framing."""

import json

from flask import Response

DONE = "data: [DONE]\n\n"
# A comment line: clients ignore it, proxies see traffic and keep the connection open.
KEEPALIVE = ": keep-alive\n\n"


def event(payload: dict) -> str:
    """One `data: {json}` event."""
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n"


def response(events) -> Response:  # events: an iterable of str, closed by the WSGI server
    """A streaming text/event-stream response that proxies must not buffer or cache."""
    return Response(
        events,
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
