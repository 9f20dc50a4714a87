"""/v1/responses edge cases on the stand-in engine: stores (memory and a real Redis), roles, stream errors, tools."""

import json
import time

import pytest

from openapi_schema_validator import OAS30Validator

from app.response_store import MemoryResponseStore
from tests.conftest import STAND_IN_MODEL, free_port, make_stand_in_bridge
from tests.stand_in import StandInEngine


def prompt_tokens(client, messages) -> int:
    """How many tokens the stand-in's chat template makes of messages."""
    return client.post("/tokenize", json={"messages": messages}).get_json()["count"]


def create(client, **body):
    return client.post("/v1/responses", json={"model": STAND_IN_MODEL, "max_output_tokens": 3, **body})


def test_the_memory_store_forgets_after_its_ttl_and_drops_the_oldest_when_full():
    store = MemoryResponseStore(ttl_seconds=0.3, max_bytes=10)
    store.put("a", "12345")
    store.put("b", "67890")
    assert (store.get("a"), store.get("b")) == ("12345", "67890")
    store.put("c", "abc")  # 13 bytes: the oldest goes
    assert (store.get("a"), store.get("b"), store.get("c")) == (None, "67890", "abc")
    store.put("huge", "x" * 11)  # larger than the whole store: not kept
    assert store.get("huge") is None and store.get("b") == "67890"
    time.sleep(0.4)
    assert (store.get("b"), store.get("c")) == (None, None)


def test_developer_messages_and_instructions_become_the_system_prompt(client):
    developer = create(client, input=[{"role": "developer", "content": "be brief"},
                                      {"role": "user", "content": "hello there"}]).get_json()
    system = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    assert developer["usage"]["input_tokens"] == prompt_tokens(client, system)
    instructed = create(client, input="hello there", instructions="be brief").get_json()
    assert instructed["usage"]["input_tokens"] == prompt_tokens(client, system)


def test_replicas_share_conversations_through_redis(make_client, redis_url):
    config = {"RESPONSE_STORE_URI": redis_url, "RESPONSE_STORE_TTL_SECONDS": 60}
    first_replica, second_replica = make_client(**config), make_client(**config)
    first = create(first_replica, input="my name is ada", instructions="be brief").get_json()
    follow_up = create(second_replica, input="what is my name", previous_response_id=first["id"]).get_json()
    answer = first["output"][0]["content"][0]["text"]
    conversation = [{"role": "user", "content": "my name is ada"}, {"role": "assistant", "content": answer},
                    {"role": "user", "content": "what is my name"}]
    # The whole conversation, without the first response's instructions.
    assert follow_up["usage"]["input_tokens"] == prompt_tokens(second_replica, conversation)
    assert second_replica.get(f"/v1/responses/{first['id']}").get_json() == first
    assert second_replica.delete(f"/v1/responses/{first['id']}").get_json()["deleted"] is True
    gone = create(first_replica, input="again", previous_response_id=first["id"])
    assert gone.status_code == 404 and gone.get_json()["error"]["code"] == "previous_response_not_found"


def test_an_unreachable_redis_still_answers_but_cannot_continue(make_client):
    client = make_client(RESPONSE_STORE_URI=f"redis://127.0.0.1:{free_port()}/0")
    response = create(client, input="hello")
    assert response.status_code == 200
    follow_up = create(client, input="again", previous_response_id=response.get_json()["id"])
    assert follow_up.status_code == 503
    assert follow_up.get_json()["error"]["code"] == "response_store_unavailable"


def test_an_engine_failure_mid_stream_ends_with_an_error_event(make_client):
    client = make_client(make_stand_in_bridge(StandInEngine(fail_after_steps=2)))
    body = create(client, input="hello", stream=True, max_output_tokens=10).get_data(as_text=True)
    events = [json.loads(block.split("data: ", 1)[1]) for block in body.split("\n\n") if "data: " in block]
    assert events[-1]["type"] == "error"
    assert events[-1]["code"] == "engine_failed" and events[-1]["error"]["type"] == "server_error"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    # The engine answers the next request again only after its restart; this one failed cleanly.
    assert "response.completed" not in [e["type"] for e in events]


@pytest.mark.parametrize("item, param", [
    ({"type": "file_search_call", "id": "fs_1"}, "input[0].type"),
    ({"type": "function_call", "call_id": "call_1", "name": "f", "arguments": {}}, "input[0].arguments"),
    ({"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}", "status": 1}, "input[0].status"),
    ({"type": "function_call_output", "output": "1"}, "input[0].call_id"),
    ({"type": "function_call_output", "call_id": "call_1", "output": [{"type": "x"}]}, "input[0].output[0].type"),
    ({"type": "function_call_output", "call_id": "call_1", "output": "1"}, "input"),
    ({"role": "user"}, "input[0].content"),
    ({"role": "user", "content": [{"type": "input_text"}]}, "input[0].content[0].text"),
    ("just a string", "input[0]"),
])
def test_input_items_this_server_cannot_take_are_named(client, item, param):
    response = create(client, input=[item])
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == param


def test_a_response_stream_holds_a_concurrency_slot_until_it_ends(make_client):
    client = make_client(make_stand_in_bridge(StandInEngine(step_delay=0.05)), MAX_CONCURRENT=1)
    streaming = create(client, input="hello", stream=True, max_output_tokens=5)
    refused = create(client, input="hello")
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "concurrency_limit_exceeded"
    streaming.get_data()
    streaming.close()
    assert create(client, input="hello").status_code == 200


def test_responses_count_against_the_rate_limit(make_client):
    client = make_client(RATE_LIMIT="2/minute")
    assert [create(client, input="hi").status_code for _ in range(3)] == [200, 200, 429]


# -- tools ---------------------------------------------------------------------------------------

CALLING = 'Checking. <tool_call> {"name": "get_weather", "arguments": {"city": "Paris"}} </tool_call>'
ONLY_CALLING = '<tool_call> {"name": "get_weather", "arguments": {"city": "Paris"}} </tool_call>'
WEATHER = {"type": "function", "name": "get_weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def events(response) -> list[dict]:
    body = response.get_data(as_text=True)
    return [json.loads(block.split("data: ", 1)[1]) for block in body.split("\n\n") if "data: " in block]


def calling_client(make_client, answer=CALLING):
    return make_client(make_stand_in_bridge(StandInEngine(answer=answer)))


def validator(client, name):
    components = client.get("/openapi.json").get_json()["components"]
    return OAS30Validator({"$ref": f"#/components/schemas/{name}", "components": components})


@pytest.mark.parametrize("tools, tool_choice, param", [
    ([{"type": "function", "name": "bad name!"}], None, "tools[0].name"),
    ([{"type": "function", "function": {"name": "nested_as_chat"}}], None, "tools[0].name"),
    ([{"type": "web_search"}], None, "tools[0].type"),
    ([{**WEATHER, "parameters": {"type": "string"}}], None, "tools[0].parameters"),
    ([WEATHER, WEATHER], None, "tools[1].name"),
    ([WEATHER], {"type": "function", "name": "other"}, "tool_choice.name"),
    ([WEATHER], {"type": "function", "function": {"name": "get_weather"}}, "tool_choice.name"),
    ([], "required", "tool_choice"),
    ([WEATHER], "sometimes", "tool_choice"),
])
def test_bad_tools_are_named(client, tools, tool_choice, param):
    response = create(client, input="hi", tools=tools, tool_choice=tool_choice)
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == param


def test_a_call_is_a_function_call_item_after_the_message(make_client):
    client = calling_client(make_client)
    body = create(client, input="Weather in Paris?", tools=[WEATHER], max_output_tokens=50).get_json()
    validator(client, "Response").validate(body)
    message, function_call = body["output"]
    assert message["type"] == "message" and message["content"][0]["text"].strip() == "Checking."
    assert function_call["type"] == "function_call" and function_call["id"].startswith("fc_")
    assert function_call["call_id"].startswith("call_") and function_call["status"] == "completed"
    assert function_call["name"] == "get_weather" and json.loads(function_call["arguments"]) == {"city": "Paris"}
    assert body["tools"] == [{**WEATHER, "description": None, "strict": None}] and body["tool_choice"] == "auto"
    assert body["status"] == "completed"


def test_a_call_without_text_has_no_message_item(make_client):
    client = calling_client(make_client, ONLY_CALLING)
    body = create(client, input="Weather?", tools=[WEATHER], max_output_tokens=50).get_json()
    assert [item["type"] for item in body["output"]] == ["function_call"]


def test_tool_choice_none_leaves_the_text_alone(make_client):
    client = calling_client(make_client)
    body = create(client, input="Weather?", tools=[WEATHER], tool_choice="none", max_output_tokens=50).get_json()
    assert [item["type"] for item in body["output"]] == ["message"]
    assert body["output"][0]["content"][0]["text"] == CALLING


def test_a_call_streams_in_the_responses_apis_events(make_client):
    client = calling_client(make_client)
    whole = create(client, input="Weather?", tools=[WEATHER], max_output_tokens=50).get_json()
    streamed = events(create(client, input="Weather?", tools=[WEATHER], max_output_tokens=50, stream=True))
    event_schema = validator(client, "ResponseStreamEvent")
    for event in streamed:
        event_schema.validate(event)
    assert [e["sequence_number"] for e in streamed] == list(range(len(streamed)))
    added = [e for e in streamed if e["type"] == "response.output_item.added"]
    assert [(e["output_index"], e["item"]["type"]) for e in added] == [(0, "message"), (1, "function_call")]
    opened = added[1]["item"]
    assert opened["arguments"] == "" and opened["status"] == "in_progress" and opened["name"] == "get_weather"
    deltas = [e for e in streamed if e["type"] == "response.function_call_arguments.delta"]
    assert deltas and all(e["item_id"] == opened["id"] and e["output_index"] == 1 for e in deltas)
    [done] = [e for e in streamed if e["type"] == "response.function_call_arguments.done"]
    assert done["arguments"] == "".join(e["delta"] for e in deltas)
    assert json.loads(done["arguments"]) == {"city": "Paris"}
    items_done = [e for e in streamed if e["type"] == "response.output_item.done"]
    assert [e["output_index"] for e in items_done] == [0, 1]
    completed = streamed[-1]
    assert completed["type"] == "response.completed"
    assert [i["type"] for i in completed["response"]["output"]] == [i["type"] for i in whole["output"]]
    assert completed["response"]["output"][1] == {**items_done[1]["item"]}
    assert completed["response"]["output"][1]["arguments"] == whole["output"][1]["arguments"]


def test_a_streamed_call_without_text_opens_no_message(make_client):
    client = calling_client(make_client, ONLY_CALLING)
    streamed = events(create(client, input="Weather?", tools=[WEATHER], max_output_tokens=50, stream=True))
    added = [e for e in streamed if e["type"] == "response.output_item.added"]
    assert [(e["output_index"], e["item"]["type"]) for e in added] == [(0, "function_call")]
    assert not [e for e in streamed if e["type"].startswith("response.output_text")]


@pytest.mark.parametrize("stream", [False, True])
def test_a_stored_call_is_answered_by_its_output_in_the_next_request(make_client, stream):
    client = calling_client(make_client)
    first = create(client, input="Weather in Paris?", tools=[WEATHER], max_output_tokens=50, stream=stream)
    first = events(first)[-1]["response"] if stream else first.get_json()
    call = first["output"][1]
    # Without tools this time, so that the prompt is the conversation alone (as /tokenize renders it).
    follow_up = create(client, previous_response_id=first["id"],
                       input=[{"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}])
    assert follow_up.status_code == 200
    # The whole conversation: the question, the message with its call, and the call's output.
    conversation = [{"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": first["output"][0]["content"][0]["text"],
                     "tool_calls": [{"id": call["call_id"], "type": "function",
                                     "function": {"name": "get_weather", "arguments": call["arguments"]}}]},
                    {"role": "tool", "tool_call_id": call["call_id"], "content": "sunny"}]
    assert follow_up.get_json()["usage"]["input_tokens"] == prompt_tokens(client, conversation)
    unknown = create(client, previous_response_id=first["id"],
                     input=[{"type": "function_call_output", "call_id": "call_other", "output": "sunny"}])
    assert unknown.status_code == 400 and unknown.get_json()["error"]["param"] == "input"


def test_function_call_items_sent_back_join_the_assistant_message(client):
    call = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Rome"}',
            "id": "fc_1", "status": "completed"}
    items = [{"role": "user", "content": "Weather?"},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
             call, {**call, "call_id": "call_2"},
             {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
             {"type": "function_call_output", "call_id": "call_2", "output": "rainy"}]
    body = create(client, input=items).get_json()
    tool_calls = [{"id": cid, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}
                  for cid in ("call_1", "call_2")]
    conversation = [{"role": "user", "content": "Weather?"},
                    {"role": "assistant", "content": "Checking.", "tool_calls": tool_calls},
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                    {"role": "tool", "tool_call_id": "call_2", "content": "rainy"}]
    assert body["usage"]["input_tokens"] == prompt_tokens(client, conversation)
