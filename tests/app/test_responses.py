"""/v1/responses edge cases on the stand-in engine: the stores (memory and a real Redis), roles, stream errors."""

import json
import time

import pytest

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
    ({"type": "function_call_output", "call_id": "c", "output": "1"}, "input[0].type"),
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
