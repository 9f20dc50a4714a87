"""POST /v1/chat/completions."""

from flask import Blueprint, current_app

from app.routes._json import json_object, request_id, respond

bp = Blueprint("chat", __name__)


@bp.post("/v1/chat/completions")
def create_chat_completion():
    return respond(current_app.extensions["serving_chat"].create(json_object(), request_id()))
