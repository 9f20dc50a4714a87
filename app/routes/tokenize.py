"""POST /tokenize and /detokenize: the served model's tokenizer (vLLM's endpoints)."""

from flask import Blueprint, current_app

from app import protocol
from app.openapi import documented
from app.routes.helpers import json_object, json_response
from app.telemetry import current_record

bp = Blueprint("tokenize", __name__)


@bp.post("/tokenize")
@documented("Token ids of a prompt, or of chat messages rendered with the model's chat template.",
            request=protocol.TokenizeRequestSchema, response=protocol.TokenizeResponseSchema,
            tags=("vLLM",))
def tokenize():
    return json_response(current_app.extensions["serving_tokenization"].tokenize(json_object(), current_record()))


@bp.post("/detokenize")
@documented("The text of token ids.", request=protocol.DetokenizeRequestSchema,
            response=protocol.DetokenizeResponseSchema, tags=("vLLM",))
def detokenize():
    return json_response(current_app.extensions["serving_tokenization"].detokenize(json_object(), current_record()))
