"""POST /v1/completions."""

from flask import Blueprint, current_app

from app.routes._json import json_object, request_id, respond

bp = Blueprint("completions", __name__)


@bp.post("/v1/completions")
def create_completion():
    return respond(current_app.extensions["serving_completion"].create(json_object(), request_id()))
