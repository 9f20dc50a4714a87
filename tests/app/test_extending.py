"""A team's own blueprint, added as the README's "Extending" section shows, gets the server's machinery."""

import pytest
from flask import Blueprint, current_app
from marshmallow import Schema, fields, validate

from app.openapi import documented
from app.routes.helpers import json_object, respond
from app.telemetry import current_record
from tests.prometheus import scrape_text, value


# -- the README's example, as a team would write it ---------------------------------------------

class CountTokensRequest(Schema):
    text = fields.String(required=True, validate=validate.Length(min=1))


class CountTokensResponse(Schema):
    tokens = fields.Integer(required=True)


bp = Blueprint("count_tokens", __name__)


@bp.post("/v1/count_tokens")
@documented("How many tokens a text is.", request=CountTokensRequest, response=CountTokensResponse)
def count_tokens():
    req = CountTokensRequest().load(json_object())
    result = current_app.extensions["serving_tokenization"].tokenize({"prompt": req["text"]}, current_record())
    return respond({"tokens": result["count"]})

# -----------------------------------------------------------------------------------------------


@pytest.fixture
def extended(make_client):
    def build(**config):
        client = make_client(**config)
        client.application.register_blueprint(bp)
        return client
    return build


def test_it_works_and_bad_input_gets_the_envelope(extended):
    client = extended()
    assert client.post("/v1/count_tokens", json={"text": "a bb ccc"}).get_json() == {"tokens": 3}
    error = client.post("/v1/count_tokens", json={"text": ""}).get_json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "text"
    assert client.post("/v1/count_tokens", data="{not json").status_code == 400


def test_it_is_in_the_openapi_document(extended):
    document = extended().get("/openapi.json").get_json()
    operation = document["paths"]["/v1/count_tokens"]["post"]
    assert operation["summary"] == "How many tokens a text is."
    assert document["components"]["schemas"]["CountTokensRequest"]["required"] == ["text"]
    assert "429" in operation["responses"] and "400" in operation["responses"]


def test_keys_rate_limits_metrics_and_logs_apply(extended, caplog):
    caplog.set_level("INFO", logger="app.requests")
    client = extended(API_KEYS="sk-team", RATE_LIMIT="2/minute")
    assert client.post("/v1/count_tokens", json={"text": "a"}, buffered=True).status_code == 401
    headers = {"Authorization": "Bearer sk-team"}
    statuses = [client.post("/v1/count_tokens", json={"text": "a"}, headers=headers, buffered=True).status_code
                for _ in range(3)]
    assert statuses == [200, 200, 429]
    samples = scrape_text(client.get("/metrics", buffered=True).get_data(as_text=True))
    assert value(samples, "http_requests_total", endpoint="/v1/count_tokens", status="200") == 2
    assert value(samples, "http_rate_limit_rejections_total", limit="rate") == 1
    logged = [r.fields for r in caplog.records if r.name == "app.requests"]
    assert [line["status"] for line in logged if line["path"] == "/v1/count_tokens"] == [401, 200, 200, 429]
