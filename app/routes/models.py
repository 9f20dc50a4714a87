"""GET /v1/models: the model this server serves, and its LoRA adapters."""

from flask import Blueprint, current_app, jsonify

from app import protocol
from app.openapi import documented

bp = Blueprint("models", __name__)


@bp.get("/v1/models")
@documented("The model this server serves, then each LoRA adapter (with the base model as parent).",
            response=protocol.ModelListSchema, tags=("OpenAI",))
def list_models():
    bridge = current_app.extensions["engine_bridge"]
    created = int(bridge.loaded_at or current_app.extensions["started_at"])
    base = bridge.model_name
    # root and parent as vLLM's server has them, but naming the served model, not a folder.
    models = [{"id": base, "object": "model", "created": created, "owned_by": "vllm", "root": base,
               "parent": None}]
    models += [{"id": name, "object": "model", "created": created, "owned_by": "vllm", "root": base,
                "parent": base} for name in bridge.adapter_names]
    return jsonify({"object": "list", "data": models})
