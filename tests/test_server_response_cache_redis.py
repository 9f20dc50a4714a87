"""The response cache in Redis, shared by two replicas; and a Redis that goes away."""

import json
import uuid

import pytest
import requests

from engine_bridge.default_model import DEFAULT_MODEL_NAME
from tests.conftest import ServerProcess
from tests.stand_in import DEFAULT_ANSWER

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def replicas(redis_server):
    """Two replicas sharing one Redis: the real engine, and one whose stand-in engine never answers
    as the model does (started together, each loads while the other does)."""
    url = redis_server.url
    real = ServerProcess(env={"RESPONSE_CACHE": url}).launch()
    stand_in = ServerProcess(env={"RESPONSE_CACHE": url,
                                  "ENGINE_FACTORY": "tests.stand_in:stand_in_with_model_tokenizer"}).launch()
    try:
        yield real.wait_healthy(), stand_in.wait_healthy()
    finally:
        real.stop()
        stand_in.stop()


def chat_body(**overrides) -> dict:
    question = f"Request {uuid.uuid4().hex[:8]}: what is the capital of France?"
    return {"model": DEFAULT_MODEL_NAME, "messages": [{"role": "user", "content": question}],
            "max_tokens": 12, "temperature": 0, **overrides}


def post(server, body) -> requests.Response:
    response = requests.post(server.base_url + CHAT, json=body, timeout=600)
    assert response.status_code == 200, response.text
    return response


def without_id(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in ("id", "created")}


def test_a_replica_answers_from_what_another_stored(replicas):
    real, stand_in = replicas
    body = chat_body()
    original = post(real, body)
    assert original.headers["X-Cache"] == "miss"
    assert post(real, body).headers["X-Cache"] == "hit"
    shared = post(stand_in, body)
    assert shared.headers["X-Cache"] == "hit"
    assert without_id(shared.json()) == without_id(original.json())
    # What that replica's own engine says when it has to generate:
    own = post(stand_in, chat_body())
    assert own.headers["X-Cache"] == "miss"
    assert own.json()["choices"][0]["message"]["content"] != original.json()["choices"][0]["message"]["content"]
    assert DEFAULT_ANSWER.startswith(own.json()["choices"][0]["message"]["content"])


def test_a_stream_stored_by_one_replica_replays_on_the_other(replicas):
    real, stand_in = replicas
    body = chat_body(stream=True)

    def text(response):
        events = [line for line in response.text.split("\n\n") if line.startswith("data: {")]
        return "".join(json.loads(e[6:])["choices"][0]["delta"].get("content", "")
                       for e in events)

    original = post(real, body)
    replayed = post(stand_in, body)
    assert (original.headers["X-Cache"], replayed.headers["X-Cache"]) == ("miss", "hit")
    assert text(replayed) == text(original) and text(original)


def test_without_redis_requests_are_answered_as_misses(replicas, redis_server):
    real, _ = replicas
    redis_server.stop()
    body = chat_body()
    responses = [post(real, body) for _ in range(2)]
    assert [r.headers["X-Cache"] for r in responses] == ["miss", "miss"]
    assert responses[0].json()["choices"] == responses[1].json()["choices"]
    warnings = [r for r in real.log_records() if r.get("event") == "response_cache_unavailable"]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"
