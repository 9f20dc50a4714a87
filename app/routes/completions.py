"""POST /v1/completions."""

from flask import Blueprint, current_app

from app import protocol
from app.openapi import documented
from app.routes.helpers import client_gone_probe, json_object, request_id, respond
from app.telemetry import current_record

bp = Blueprint("completions", __name__)


@bp.post("/v1/completions")
@documented("Create a text completion (streamed as Server-Sent Events when stream is true).",
            request=protocol.CompletionRequestSchema, response=protocol.CompletionSchema,
            stream=protocol.CompletionSchema, tags=("OpenAI",))
def create_completion():
    serving = current_app.extensions["serving_completion"]
    return respond(serving.create(json_object(), request_id(), current_record(), client_gone_probe()))
