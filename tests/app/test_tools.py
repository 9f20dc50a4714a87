"""Tool calls through the chat route, with a stand-in engine that writes a Hermes tool call on demand.

The real model rarely writes a call by itself (tests/test_server_tools.py covers the real engine);
here the parsing of "auto" output, whole and streamed, is checked on text known in advance.
"""

import json

import pytest
from openapi_schema_validator import OAS30Validator

from tests.conftest import STAND_IN_MODEL, make_stand_in_bridge
from tests.stand_in import StandInEngine

CHAT = "/v1/chat/completions"
CALLING = 'Checking. <tool_call> {"name": "get_weather", "arguments": {"city": "Paris"}} </tool_call>'
TWICE = CALLING + ' <tool_call> {"name": "get_weather", "arguments": {"city": "Rome"}} </tool_call>'
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
BODY = {"model": STAND_IN_MODEL, "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [WEATHER], "max_tokens": 50}


@pytest.fixture
def calling_client(make_client):
    return make_client(make_stand_in_bridge(StandInEngine(answer=CALLING)))


@pytest.fixture
def schemas(calling_client):
    components = calling_client.get("/openapi.json").get_json()["components"]
    return lambda name: OAS30Validator({"$ref": f"#/components/schemas/{name}", "components": components})


def events(response) -> list[dict]:
    lines = response.get_data(as_text=True).split("\n\n")
    assert lines[-2] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-2] if line.startswith("data: {")]


def test_auto_returns_the_parsed_call(calling_client, schemas):
    body = calling_client.post(CHAT, json=BODY).get_json()
    schemas("ChatCompletion").validate(body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"].strip() == "Checking."
    [call] = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_auto_streams_the_call_in_openais_shape(calling_client, schemas):
    chunks = events(calling_client.post(CHAT, json={**BODY, "stream": True}))
    for chunk in chunks:
        schemas("ChatCompletionChunk").validate(chunk)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    pieces = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    opening, rest = pieces[0], pieces[1:]
    assert opening["index"] == 0 and opening["id"].startswith("call_") and opening["type"] == "function"
    assert opening["function"] == {"name": "get_weather", "arguments": ""}
    assert all(set(p) == {"index", "function"} and set(p["function"]) == {"arguments"} for p in rest)
    assert json.loads("".join(p["function"]["arguments"] for p in rest)) == {"city": "Paris"}
    assert "".join(d.get("content") or "" for d in deltas).strip() == "Checking."
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]] == ["tool_calls"]


def test_tool_choice_none_leaves_the_text_alone(calling_client):
    choice = calling_client.post(CHAT, json={**BODY, "tool_choice": "none"}).get_json()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": CALLING}
    assert choice["finish_reason"] == "stop"


def test_a_call_cut_by_max_tokens_keeps_length_as_its_reason(calling_client):
    choice = calling_client.post(CHAT, json={**BODY, "max_tokens": 3}).get_json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert "tool_calls" not in choice["message"]


def test_each_choice_has_its_own_calls(calling_client):
    chunks = events(calling_client.post(CHAT, json={**BODY, "n": 2, "stream": True}))
    for index in (0, 1):
        openings = [d["tool_calls"][0] for c in chunks for d in [c["choices"][0]["delta"]]
                    if c["choices"][0]["index"] == index and "tool_calls" in d and "id" in d["tool_calls"][0]]
        assert [o["function"]["name"] for o in openings] == ["get_weather"]


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_calls_false_keeps_the_first_call_of_auto(make_client, stream):
    client = make_client(make_stand_in_bridge(StandInEngine(answer=TWICE)))
    cities = []
    for parallel in (True, False):
        response = client.post(CHAT, json={**BODY, "max_tokens": 80, "stream": stream, "parallel_tool_calls": parallel})
        if stream:
            pieces = [d["tool_calls"][0] for c in events(response) for d in [c["choices"][0]["delta"]]
                      if "tool_calls" in d]
            arguments = {}
            for piece in pieces:
                arguments[piece["index"]] = arguments.get(piece["index"], "") + piece["function"]["arguments"]
            cities.append([json.loads(arguments[i])["city"] for i in sorted(arguments)])
        else:
            calls = response.get_json()["choices"][0]["message"]["tool_calls"]
            cities.append([json.loads(c["function"]["arguments"])["city"] for c in calls])
    assert cities == [["Paris", "Rome"], ["Paris"]]
