"""GET /openapi.json: the API description, generated from the schemas (see app/openapi.py)."""

from flask import Blueprint, current_app, jsonify

from app.openapi import build_spec, documented
from engine_bridge import EngineState

bp = Blueprint("docs", __name__)


@bp.get("/openapi.json")
@documented("This document: OpenAPI 3, generated from the request and response schemas.",
            response={"type": "object"}, tags=("server",))
def openapi_document():
    # Built on first use, after every blueprint (the app's own and any added later) is registered,
    # and kept once the engine is ready (its vocabulary size is part of the document).
    spec = current_app.extensions.get("openapi_document")
    if spec is None:
        spec = build_spec(current_app)
        if current_app.extensions["engine_bridge"].state is EngineState.READY:
            current_app.extensions["openapi_document"] = spec
    return jsonify(spec)
