"""POST /v1/responses (OpenAI's Responses API), and GET / DELETE of a stored response."""

from flask import Blueprint, current_app

from app import protocol, protocol_responses
from app.openapi import documented
from app.routes.helpers import client_gone_probe, json_object, json_response, request_id, respond
from app.telemetry import current_record

bp = Blueprint("responses", __name__)

_NOT_FOUND = {"404": ("No stored response with this id (never stored, expired or deleted).",
                      protocol.ErrorResponseSchema)}


@bp.post("/v1/responses")
@documented("Create a response (streamed as typed Server-Sent Events when stream is true).",
            request=protocol_responses.ResponseRequestSchema, response=protocol_responses.ResponseSchema,
            stream=protocol_responses.ResponseStreamEventSchema, tags=("OpenAI",))
def create_response():
    serving = current_app.extensions["serving_responses"]
    return respond(serving.create(json_object(), request_id(), current_record(), client_gone_probe()))


@bp.get("/v1/responses/<response_id>")
@documented("A stored response, as it was answered.", response=protocol_responses.ResponseSchema,
            responses=_NOT_FOUND, tags=("OpenAI",))
def retrieve_response(response_id):
    return json_response(current_app.extensions["serving_responses"].retrieve(response_id))


@bp.delete("/v1/responses/<response_id>")
@documented("Forget a stored response.", response=protocol_responses.ResponseDeletedSchema,
            responses=_NOT_FOUND, tags=("OpenAI",))
def delete_response(response_id):
    return json_response(current_app.extensions["serving_responses"].delete(response_id))
