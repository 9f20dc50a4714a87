"""POST /v1/chat/completions."""

from flask import Blueprint, current_app

from app import protocol
from app.openapi import documented
from app.routes.helpers import client_gone_probe, json_object, request_id, respond
from app.telemetry import current_record

bp = Blueprint("chat", __name__)


@bp.post("/v1/chat/completions")
@documented("Create a chat completion (streamed as Server-Sent Events when stream is true).",
            request=protocol.ChatCompletionRequestSchema, response=protocol.ChatCompletionSchema,
            stream=protocol.ChatCompletionChunkSchema, tags=("OpenAI",))
def create_chat_completion():
    serving = current_app.extensions["serving_chat"]
    return respond(serving.create(json_object(), request_id(), current_record(), client_gone_probe()))
