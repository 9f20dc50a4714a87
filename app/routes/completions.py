"""POST /v1/completions."""

from flask import Blueprint, current_app

from app.routes._json import json_object, request_id, respond
from app.telemetry import current_record

bp = Blueprint("completions", __name__)


@bp.post("/v1/completions")
def create_completion():
    serving = current_app.extensions["serving_completion"]
    return respond(serving.create(json_object(), request_id(), current_record()))
