"""GET /v1/models: the model this server serves."""

from flask import Blueprint, current_app, jsonify

bp = Blueprint("models", __name__)


@bp.get("/v1/models")
def list_models():
    bridge = current_app.extensions["engine_bridge"]
    created = int(bridge.loaded_at or current_app.extensions["started_at"])
    return jsonify({
        "object": "list",
        "data": [{"id": bridge.model_name, "object": "model", "created": created, "owned_by": "vllm"}],
    })
