"""GET /v1/models: the model this server serves."""

from flask import Blueprint, current_app, jsonify

from app import protocol
from app.openapi import documented

bp = Blueprint("models", __name__)


@bp.get("/v1/models")
@documented("The model this server serves.", response=protocol.ModelListSchema, tags=("OpenAI",))
def list_models():
    bridge = current_app.extensions["engine_bridge"]
    created = int(bridge.loaded_at or current_app.extensions["started_at"])
    return jsonify({
        "object": "list",
        "data": [{"id": bridge.model_name, "object": "model", "created": created, "owned_by": "vllm"}],
    })
