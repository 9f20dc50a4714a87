"""/openapi.json: a valid OpenAPI 3 document that agrees with the schemas the server validates with."""

import json

import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from tests.conftest import STAND_IN_MODEL
from tests.stand_in import VOCAB_SIZE

CHAT = "/v1/chat/completions"


@pytest.fixture
def document(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def validator(document, name):
    """A validator for components.schemas[name], resolving its $refs inside the document."""
    return OAS30Validator({"$ref": f"#/components/schemas/{name}", "components": document["components"]})


def test_the_document_is_valid_openapi_3(document):
    validate(document)
    assert document["openapi"].startswith("3.")


def test_every_route_is_documented_with_the_error_envelope(client, document):
    routes = {rule.rule.replace("<", "{").replace(">", "}")
              for rule in client.application.url_map.iter_rules() if rule.endpoint != "static"}
    # The chat page and its files are for browsers, not part of the API.
    routes -= {"/", "/playground/{path:filename}"}
    assert routes == set(document["paths"])
    [parameter] = document["paths"]["/v1/responses/{response_id}"]["get"]["parameters"]
    assert (parameter["name"], parameter["in"], parameter["required"]) == ("response_id", "path", True)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "200" in operation["responses"], (method, path)
            error = operation["responses"]["500"]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path)
    chat = document["paths"][CHAT]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"}
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}


def test_request_schemas_carry_the_validation_rules_and_the_servers_limits(document):
    schemas = document["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]
    assert set(chat["required"]) == {"model", "messages"}
    assert chat["properties"]["model"]["enum"] == [STAND_IN_MODEL]
    assert chat["properties"]["temperature"] == {"type": "number", "minimum": 0, "maximum": 2, "nullable": True,
                                                       "default": 1.0}
    assert chat["properties"]["max_tokens"]["maximum"] == 4096
    assert chat["properties"]["top_p"]["exclusiveMinimum"] is True
    assert schemas["ChatMessage"]["properties"]["role"]["enum"] == ["system", "user", "assistant", "tool"]
    token_ids = schemas["CompletionRequest"]["properties"]["prompt"]["oneOf"][2]
    assert token_ids["items"]["maximum"] == VOCAB_SIZE - 1


def test_logit_bias_tools_and_the_refused_function_fields_are_documented(document):
    schemas = document["components"]["schemas"]
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        logit_bias = schemas[name]["properties"]["logit_bias"]
        assert logit_bias["maxProperties"] == 300
        assert logit_bias["additionalProperties"] == {"type": "number", "minimum": -100, "maximum": 100}
    chat = schemas["ChatCompletionRequest"]["properties"]
    assert chat["tools"]["maxItems"] == 128 and chat["functions"]["maxItems"] == 0
    assert chat["function_call"]["enum"] == ["none", None]
    assert chat["tool_choice"]["oneOf"][0]["enum"] == ["none", "auto", "required"]
    function = schemas["FunctionDefinition"]
    assert function["required"] == ["name"] and function["properties"]["name"]["pattern"] == "^[a-zA-Z0-9_-]{1,64}$"
    assert "tool_calls" in schemas["AssistantMessage"]["properties"]
    assert schemas["ToolCallDelta"]["required"] == ["index"]
    assert "always enforced" in schemas["JsonSchemaSpec"]["properties"]["strict"]["description"]


def test_the_documented_schemas_accept_and_refuse_what_the_server_does(client, document):
    check = validator(document, "ChatCompletionRequest")
    good = {"model": STAND_IN_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    bad = [{**good, "temperature": 3}, {**good, "messages": []}, {**good, "n": "2"},
           {**good, "messages": [{"role": "robot", "content": "x"}]}, {**good, "stop": ["a"] * 5},
           {**good, "logit_bias": {"5": 101}}, {**good, "tools": [{"type": "function"}]},
           {**good, "tool_choice": "maybe"}, {**good, "tools": [{"type": "function", "function": {"name": "a b"}}]}]
    assert check.is_valid(good)
    assert client.post(CHAT, json=good).status_code == 200
    also_good = {**good, "logit_bias": {"5": -100}, "tools": [], "tool_choice": "none", "function_call": None}
    assert check.is_valid(also_good)
    assert client.post(CHAT, json=also_good).status_code == 200
    for body in bad:
        assert not check.is_valid(body), body
        assert client.post(CHAT, json=body).status_code == 400, body
    tokenize = validator(document, "TokenizeRequest")
    assert not tokenize.is_valid({"prompt": "a", "messages": [{"role": "user", "content": "b"}]})
    assert not tokenize.is_valid({})


def test_responses_match_their_documented_schemas(client, document):
    body = {"model": STAND_IN_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
            "logprobs": True, "top_logprobs": 2}
    validator(document, "ChatCompletion").validate(client.post(CHAT, json=body).get_json())
    stream = client.post(CHAT, json={**body, "stream": True, "stream_options": {"include_usage": True}})
    events = [e.removeprefix("data: ") for e in stream.get_data(as_text=True).split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunk = validator(document, "ChatCompletionChunk")
    for event in events[:-1]:
        chunk.validate(json.loads(event))
    completion = client.post("/v1/completions", json={"model": STAND_IN_MODEL, "prompt": "a b", "max_tokens": 2,
                                                      "logprobs": 1, "echo": True})
    validator(document, "Completion").validate(completion.get_json())
    validator(document, "ErrorResponse").validate(client.post(CHAT, json={}).get_json())
    validator(document, "ModelList").validate(client.get("/v1/models").get_json())
    validator(document, "Health").validate(client.get("/health").get_json())
    validator(document, "TokenizeResponse").validate(client.post("/tokenize", json={"prompt": "a bb"}).get_json())


def test_the_responses_api_matches_its_documented_schemas(client, document):
    body = {"model": STAND_IN_MODEL, "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
            "max_output_tokens": 3, "text": {"format": {"type": "json_object"}}, "metadata": {"k": "v"}}
    request = validator(document, "ResponseRequest")
    assert request.is_valid(body)
    for bad in ({**body, "input": []}, {**body, "input": [{"role": "tool", "content": "x"}]},
                {**body, "tools": [{"type": "function"}]}, {**body, "max_output_tokens": 0}):
        assert not request.is_valid(bad), bad
        assert client.post("/v1/responses", json=bad).status_code == 400, bad
    answer = client.post("/v1/responses", json=body).get_json()
    validator(document, "Response").validate(answer)
    validator(document, "Response").validate(client.get(f"/v1/responses/{answer['id']}").get_json())
    stream = client.post("/v1/responses", json={**body, "stream": True}).get_data(as_text=True)
    event = validator(document, "ResponseStreamEvent")
    for block in stream.split("\n\n"):
        if block:
            event.validate(json.loads(block.split("\ndata: ", 1)[1]))
    validator(document, "ResponseDeleted").validate(client.delete(f"/v1/responses/{answer['id']}").get_json())
