"""POST /v1/chat/completions."""

from flask import Blueprint, current_app

from app.routes._json import json_object, request_id, respond
from app.telemetry import current_record

bp = Blueprint("chat", __name__)


@bp.post("/v1/chat/completions")
def create_chat_completion():
    serving = current_app.extensions["serving_chat"]
    return respond(serving.create(json_object(), request_id(), current_record()))
