"""POST /v1/responses through the official openai SDK against the real server and engine."""

import json
import time

import jsonschema
import openai
import pytest
import requests
from openai import OpenAI

from engine_bridge.default_model import DEFAULT_MODEL_NAME
from tests.prometheus import scrape, value
from tests.test_server_tools import WEATHER_PARAMETERS

QUESTION = "What is the capital of France?"
STREAM_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
                 "response.content_part.added"]
CLOSING_EVENTS = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_a_response_answers_with_usage_and_a_log_line(client, server):
    response = client.responses.create(model=DEFAULT_MODEL_NAME, input=QUESTION, temperature=0,
                                       max_output_tokens=30, extra_headers={"X-Request-Id": "responses-1"})
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed" and response.incomplete_details is None
    assert response.model == DEFAULT_MODEL_NAME
    assert "Paris" in response.output_text
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    usage = response.usage
    assert usage.input_tokens > 5 and 0 < usage.output_tokens <= 30
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert usage.input_tokens_details.cached_tokens >= 0
    line = server.request_log_line("responses-1")
    assert (line["path"], line["status"], line["model"]) == ("/v1/responses", 200, DEFAULT_MODEL_NAME)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (usage.input_tokens, usage.output_tokens)


def test_input_items_and_instructions_reach_the_chat_template(client):
    as_string = client.responses.create(model=DEFAULT_MODEL_NAME, input=QUESTION, temperature=0,
                                        max_output_tokens=20)
    as_items = client.responses.create(
        model=DEFAULT_MODEL_NAME, temperature=0, max_output_tokens=20,
        input=[{"role": "user", "content": [{"type": "input_text", "text": QUESTION}]}])
    assert as_items.output_text == as_string.output_text
    assert as_items.usage.input_tokens == as_string.usage.input_tokens
    instructed = client.responses.create(model=DEFAULT_MODEL_NAME, input=QUESTION, temperature=0,
                                         max_output_tokens=20, instructions="Answer in one word.")
    assert instructed.instructions == "Answer in one word."
    # The instructions replace the template's own default system prompt.
    assert instructed.usage.input_tokens != as_string.usage.input_tokens


def test_streaming_sends_typed_events_in_order(client):
    plain = client.responses.create(model=DEFAULT_MODEL_NAME, input=QUESTION, temperature=0, max_output_tokens=20)
    events = list(client.responses.create(model=DEFAULT_MODEL_NAME, input=QUESTION, temperature=0,
                                          max_output_tokens=20, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == STREAM_EVENTS
    assert kinds[-4:] == CLOSING_EVENTS + ["response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == plain.output_text
    assert events[-4].text == text
    final = events[-1].response
    assert final.status == "completed" and final.output_text == text
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert events[0].response.id == final.id and events[0].response.status == "in_progress"


def test_the_sdk_stream_helper_assembles_the_response(client):
    with client.responses.stream(model=DEFAULT_MODEL_NAME, input=QUESTION, temperature=0,
                                 max_output_tokens=20) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) and "Paris" in final.output_text


def test_event_lines_name_each_event_as_openai_sends_them(server):
    answer = requests.post(server.base_url + "/v1/responses", stream=True, timeout=300, json={
        "model": DEFAULT_MODEL_NAME, "input": QUESTION, "max_output_tokens": 4, "stream": True})
    assert answer.headers["Content-Type"].startswith("text/event-stream")
    blocks = [b for b in answer.text.split("\n\n") if b.strip() and not b.startswith(":")]
    for block in blocks:
        event_line, data_line = block.split("\n")
        assert event_line.removeprefix("event: ") == json.loads(data_line.removeprefix("data: "))["type"]
    # Cut short by max_output_tokens: the last event says so.
    last = json.loads(blocks[-1].split("\n")[1].removeprefix("data: "))
    assert last["type"] == "response.incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert last["response"]["usage"]["output_tokens"] == 4


def test_max_output_tokens_makes_an_incomplete_response(client):
    response = client.responses.create(model=DEFAULT_MODEL_NAME, input="Tell me a long story.", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"
    assert response.usage.output_tokens == 3


def test_previous_response_id_continues_the_conversation(client):
    first = client.responses.create(model=DEFAULT_MODEL_NAME, input="My name is Ada. Please remember it.",
                                    temperature=0, max_output_tokens=24, instructions="Be brief.")
    follow_up = client.responses.create(model=DEFAULT_MODEL_NAME, input="What is my name?",
                                        previous_response_id=first.id, temperature=0, max_output_tokens=24)
    assert follow_up.previous_response_id == first.id
    # The same conversation sent in full gives the same greedy answer from the same prompt
    # (instructions do not carry over to the next response, as in OpenAI's API).
    explicit = client.responses.create(model=DEFAULT_MODEL_NAME, temperature=0, max_output_tokens=24, input=[
        {"role": "user", "content": "My name is Ada. Please remember it."},
        {"role": "assistant", "content": [{"type": "output_text", "text": first.output_text}]},
        {"role": "user", "content": "What is my name?"}])
    assert follow_up.usage.input_tokens == explicit.usage.input_tokens
    assert follow_up.output_text == explicit.output_text
    assert follow_up.usage.input_tokens > first.usage.output_tokens + 10
    # The stored response comes back as it was answered.
    assert client.responses.retrieve(first.id).output_text == first.output_text


def test_a_response_not_stored_cannot_be_continued(client):
    unstored = client.responses.create(model=DEFAULT_MODEL_NAME, input="Hi", max_output_tokens=4, store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError) as raised:
        client.responses.create(model=DEFAULT_MODEL_NAME, input="Hi again", previous_response_id=unstored.id)
    assert raised.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_json_schema_output_parses_and_validates(client):
    schema = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Berlin"]},
                                               "founded": {"type": "integer", "minimum": 0, "maximum": 3000}},
              "required": ["city", "founded"], "additionalProperties": False}
    response = client.responses.create(
        model=DEFAULT_MODEL_NAME, input="Name the capital of France and the year it was founded, as JSON.",
        max_output_tokens=40, temperature=0,
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}})
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), schema)
    assert response.text.format.type == "json_schema" and response.text.format.name == "city"


@pytest.mark.parametrize("body, status, param", [
    ({"input": [{"role": "robot", "content": "hi"}]}, 400, "input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, 400,
     "input[0].content[0].type"),
    ({"input": []}, 400, "input"),
    ({"input": "hi", "max_output_tokens": 100000}, 400, "max_output_tokens"),
    ({"input": "hi", "temperature": 3}, 400, "temperature"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, 400, "text.format.schema"),
    ({"input": "hi", "tools": [{"type": "function", "name": "no spaces", "parameters": {}}]}, 400, "tools[0].name"),
    ({"input": "hi", "previous_response_id": "resp_unknown"}, 404, "previous_response_id"),
    ({"input": "hi", "model": "no-such-model"}, 404, "model"),
])
def test_bad_requests_get_the_envelope_naming_the_field(server, body, status, param):
    answer = requests.post(server.base_url + "/v1/responses", json={"model": DEFAULT_MODEL_NAME, **body}, timeout=60)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["message"]


WEATHER = {"type": "function", "name": "get_weather", "description": "The current weather in a city.",
           "parameters": WEATHER_PARAMETERS}
WEATHER_QUESTION = "What is the weather like in Paris today?"
NAMED = {"type": "function", "name": "get_weather"}


def call_weather(client, **kwargs):
    return client.responses.create(model=DEFAULT_MODEL_NAME, input=WEATHER_QUESTION, tools=[WEATHER],
                                   temperature=0, max_output_tokens=60, **kwargs)


@pytest.mark.parametrize("tool_choice", [NAMED, "required"], ids=["named", "required"])
def test_a_forced_call_is_a_function_call_matching_its_schema(client, tool_choice):
    response = call_weather(client, tool_choice=tool_choice, parallel_tool_calls=False)
    assert response.status == "completed"
    [call] = response.output
    assert call.type == "function_call" and call.status == "completed" and call.name == "get_weather"
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER_PARAMETERS)
    assert response.tools[0].name == "get_weather"


def test_a_round_trip_call_output_answer(client):
    first = call_weather(client, tool_choice=NAMED)
    [call] = first.output
    answer = client.responses.create(
        model=DEFAULT_MODEL_NAME, previous_response_id=first.id, tools=[WEATHER], temperature=0,
        max_output_tokens=30, input=[{"type": "function_call_output", "call_id": call.call_id,
                                      "output": json.dumps({"temperature": 18, "unit": "celsius", "sky": "clear"})}])
    assert [item.type for item in answer.output] == ["message"] and answer.output_text
    # The stored call and its output reached the model, on top of the first prompt.
    assert answer.usage.input_tokens > first.usage.input_tokens + 20


def test_streamed_argument_deltas_add_up_to_the_call_made_without_streaming(client):
    whole = call_weather(client, tool_choice=NAMED)
    events = list(call_weather(client, tool_choice=NAMED, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                          "response.completed"]
    # Only the call's item: no message item for a forced call.
    assert set(kinds[3:-3]) == {"response.function_call_arguments.delta"}
    opened = events[2].item
    assert opened.type == "function_call" and opened.name == "get_weather" and opened.arguments == ""
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert {(e.item_id, e.output_index) for e in deltas} == {(opened.id, 0)}
    arguments = "".join(e.delta for e in deltas)
    assert arguments == events[-3].arguments == events[-1].response.output[0].arguments
    assert json.loads(arguments) == json.loads(whole.output[0].arguments)


def test_a_stream_whose_client_leaves_is_aborted(server):
    """A long response stream that its client closes stops generating at once, as chat streams do."""
    endpoint = "/v1/responses"
    aborts_before = value(scrape(server.base_url), "http_client_aborts_total", default=0, endpoint=endpoint)
    with requests.post(server.base_url + endpoint, stream=True, timeout=300,
                       headers={"X-Request-Id": "responses-leaves"}, json={
                           "model": DEFAULT_MODEL_NAME, "input": "Tell me a long story.", "stream": True,
                           "max_output_tokens": 3000}) as answer:
        lines = answer.iter_lines()
        while b"response.output_text.delta" not in next(lines):
            pass
    line = server.request_log_line("responses-leaves", timeout=30)
    assert line["aborted"] is True and line["completion_tokens"] < 3000
    assert value(scrape(server.base_url), "http_client_aborts_total", endpoint=endpoint) == aborts_before + 1
    deadline = time.monotonic() + 30
    while value(scrape(server.base_url), "vllm:num_requests_running") != 0:
        assert time.monotonic() < deadline, "the engine still runs the abandoned response"
        time.sleep(0.1)
