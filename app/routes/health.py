"""GET /health: is this worker able to generate?"""

from datetime import datetime, timezone

from flask import Blueprint, current_app, jsonify

from app import protocol
from app.openapi import documented
from app.version import __version__
from engine_bridge import EngineState

bp = Blueprint("health", __name__)

# What /health says for each engine state other than READY.
_NOT_READY_STATUS = {
    EngineState.LOADING: "loading",
    EngineState.DRAINING: "draining",
    EngineState.FAILED: "unhealthy",
    EngineState.STOPPED: "stopped",
}


@bp.get("/health")
@documented("Whether this worker can generate: 200 when the engine is ready, else 503.",
            response=protocol.HealthSchema, tags=("server",),
            responses={"503": ("Loading, draining, unhealthy (engine failed) or stopped.", protocol.HealthSchema)})
def health():
    state = current_app.extensions["engine_bridge"].state
    ready = state is EngineState.READY
    body = {
        "status": "healthy" if ready else _NOT_READY_STATUS[state],
        "timestamp": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "version": __version__,
    }
    return jsonify(body), 200 if ready else 503
