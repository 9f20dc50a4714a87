"""What the server says about its own state, without Flask: /health's body and the not-ready error.

The Flask app and the worker's loading responder (which answers on the port while the engine
loads, before Flask is imported) both build their answers here, so the two cannot drift apart.
"""

import json
from datetime import datetime, timezone

from app.version import __version__
from engine_bridge import EngineState

# /health's status for each engine state (200 only when READY).
HEALTH_STATUS = {
    EngineState.READY: "healthy",
    EngineState.LOADING: "loading",
    EngineState.DRAINING: "draining",
    EngineState.FAILED: "unhealthy",
    EngineState.STOPPED: "stopped",
}
# Seconds a client should wait before retrying a 503.
RETRY_AFTER_SECONDS = 5


def health(state: EngineState) -> tuple[dict, int]:
    """/health's body and status code for an engine in state."""
    body = {
        "status": HEALTH_STATUS[state],
        "timestamp": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "version": __version__,
    }
    return body, 200 if state is EngineState.READY else 503


def not_ready_error(reason: str) -> dict:
    """The fields of the 503 envelope for a request the engine cannot take now (reason: why)."""
    return {"message": f"The server is not ready to generate: {reason}. Please retry shortly.",
            "type": "server_error", "param": None, "code": "engine_not_ready"}


def retry_after_headers() -> dict:
    return {"Retry-After": str(RETRY_AFTER_SECONDS)}


def loading_answer(method: str, path: str) -> tuple[int, dict, bytes]:
    """(status, headers, body) for any request while the engine loads: /health says loading, the rest 503."""
    if path == "/health":
        body, status = health(EngineState.LOADING)
        headers = {}
    else:
        body, status = {"error": not_ready_error("the engine is loading")}, 503
        headers = retry_after_headers()
    # The same bytes Flask's jsonify writes with the app's compact JSON.
    payload = (json.dumps(body, separators=(",", ":")) + "\n").encode()
    return status, {"Content-Type": "application/json", **headers}, payload
