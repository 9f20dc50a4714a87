"""GET /health: is this worker able to generate?"""

from flask import Blueprint, current_app, jsonify

from app import protocol, status
from app.openapi import documented

bp = Blueprint("health", __name__)


@bp.get("/health")
@documented("Whether this worker can generate: 200 when the engine is ready, else 503.",
            response=protocol.HealthSchema, tags=("server",),
            responses={"503": ("Loading, draining, unhealthy (engine failed) or stopped.", protocol.HealthSchema)})
def health():
    body, code = status.health(current_app.extensions["engine_bridge"].state)
    return jsonify(body), code
