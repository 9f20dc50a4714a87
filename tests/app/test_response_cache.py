"""The response cache with a stand-in engine: what is cached, keyed, replayed, bounded and survived."""

import json
import logging
import time

import pytest

from app.response_cache import MemoryStore
from tests.app.test_routes import events_of
from tests.conftest import STAND_IN_MODEL, free_port, make_stand_in_bridge
from tests.prometheus import scrape_text, value
from tests.stand_in import DEFAULT_ANSWER, StandInEngine

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
GREEDY = {"model": STAND_IN_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
          "temperature": 0}


@pytest.fixture
def engine():
    return StandInEngine()


@pytest.fixture
def cached_client(make_client, engine):
    return make_client(make_stand_in_bridge(engine), RESPONSE_CACHE="memory")


def without_id(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in ("id", "created")}


def metric(client, name, **labels):
    return value(scrape_text(client.get("/metrics").get_data(as_text=True)), name, default=0, **labels)


def test_off_by_default(client):
    first, second = (client.post(CHAT, json=GREEDY) for _ in range(2))
    assert "X-Cache" not in first.headers and "X-Cache" not in second.headers
    assert first.get_json()["id"] != second.get_json()["id"]


def test_a_repeated_greedy_request_is_answered_without_the_engine(cached_client, engine):
    first = cached_client.post(CHAT, json=GREEDY)
    added = len(engine.added)
    second = cached_client.post(CHAT, json=GREEDY)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("miss", "hit")
    assert len(engine.added) == added
    assert without_id(second.get_json()) == without_id(first.get_json())
    assert second.get_json()["id"] != first.get_json()["id"]
    assert second.get_json()["id"].startswith("chatcmpl-")
    assert metric(cached_client, "http_response_cache_lookups_total", endpoint=CHAT, result="hit") == 1
    assert metric(cached_client, "http_response_cache_lookups_total", endpoint=CHAT, result="miss") == 1


def test_the_same_request_written_differently_is_the_same_entry(cached_client, engine):
    cached_client.post(CHAT, json=GREEDY)
    added = len(engine.added)
    rewritten = [
        # Fields in another order, defaults spelled out, nulls for absent optional fields.
        {"temperature": 0.0, "max_tokens": 4, "messages": GREEDY["messages"], "model": STAND_IN_MODEL,
         "top_p": 1, "n": 1, "seed": None, "stop": None, "logit_bias": None},
        # Content as text parts, max_tokens under its newer name, an unknown field.
        {**GREEDY, "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
         "max_tokens": None, "max_completion_tokens": 4, "unknown_field": 1},
    ]
    for body in rewritten:
        assert cached_client.post(CHAT, json=body).headers["X-Cache"] == "hit"
    assert len(engine.added) == added
    # Anything that changes the answer is another entry.
    for change in ({"max_tokens": 5}, {"stop": ["."]}, {"messages": [{"role": "user", "content": "Hi!"}]},
                   {"top_k": 5}, {"logprobs": True}):
        assert cached_client.post(CHAT, json={**GREEDY, **change}).headers["X-Cache"] == "miss", change


def test_only_reproducible_requests_are_cached(cached_client):
    def verdicts(body):
        return [cached_client.post(CHAT, json={**GREEDY, **body}).headers["X-Cache"] for _ in range(2)]

    assert verdicts({"temperature": 0.7}) == ["bypass", "bypass"]
    assert verdicts({"temperature": 0.7, "seed": 11}) == ["miss", "hit"]
    assert verdicts({"temperature": 0.7, "seed": 11, "n": 2}) == ["bypass", "bypass"]
    assert verdicts({"logprobs": True, "top_logprobs": 2}) == ["miss", "hit"]
    assert metric(cached_client, "http_response_cache_lookups_total", result="bypass") == 4


def test_completions_are_cached_too(cached_client, engine):
    body = {"model": STAND_IN_MODEL, "prompt": ["a b", "c"], "max_tokens": 3, "temperature": 0, "echo": True}
    first = cached_client.post(COMPLETIONS, json=body)
    second = cached_client.post(COMPLETIONS, json=body)
    assert second.headers["X-Cache"] == "hit"
    assert second.get_json()["id"].startswith("cmpl-")
    assert without_id(second.get_json()) == without_id(first.get_json())
    # Chat and completions never share an entry.
    assert cached_client.post(CHAT, json=GREEDY).headers["X-Cache"] == "miss"


def test_api_keys_never_share_an_entry(make_client):
    client = make_client(RESPONSE_CACHE="memory", API_KEYS="sk-one,sk-two")
    one, two = ({"Authorization": f"Bearer {key}"} for key in ("sk-one", "sk-two"))
    assert client.post(CHAT, json=GREEDY, headers=one).headers["X-Cache"] == "miss"
    assert client.post(CHAT, json=GREEDY, headers=two).headers["X-Cache"] == "miss"
    assert client.post(CHAT, json=GREEDY, headers=two).headers["X-Cache"] == "hit"
    assert client.post(CHAT, json=GREEDY, headers=one).headers["X-Cache"] == "hit"
    assert client.post(CHAT, json=GREEDY).status_code == 401


def test_a_stream_replays_as_the_stream_it_was(cached_client, engine):
    body = {**GREEDY, "stream": True, "max_tokens": 50}
    first = cached_client.post(CHAT, json=body)
    original = events_of(first)  # the test client runs a stream as it is read
    added = len(engine.added)
    second = cached_client.post(CHAT, json=body)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("miss", "hit")
    assert second.mimetype == "text/event-stream"
    replayed = events_of(second)
    assert len(engine.added) == added
    assert [without_id(c) for c in replayed] == [without_id(c) for c in original]
    assert len({c["id"] for c in replayed}) == 1 and replayed[0]["id"] != original[0]["id"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in replayed) == DEFAULT_ANSWER
    # The usage chunk is added when this request asks for it, with the original's counts.
    with_usage = events_of(cached_client.post(CHAT, json={**body, "stream_options": {"include_usage": True}}))
    assert all(c["usage"] is None for c in with_usage[:-1])
    assert with_usage[-1]["choices"] == [] and with_usage[-1]["usage"]["completion_tokens"] == len(original) - 2
    assert [without_id(c) | {"usage": None} for c in with_usage[:-1]] == [without_id(c) | {"usage": None}
                                                                         for c in original]
    # A streamed and a non-streamed request are separate entries, each replayed as it was sent.
    assert cached_client.post(CHAT, json={**body, "stream": False}).headers["X-Cache"] == "miss"


def test_a_stream_that_did_not_end_normally_is_not_stored(make_client):
    engine = StandInEngine(answer=" ".join(["w"] * 200), step_delay=0.005, max_model_len=4096)
    client = make_client(make_stand_in_bridge(engine), RESPONSE_CACHE="memory")
    body = {**GREEDY, "stream": True, "max_tokens": 200}
    left = client.post(CHAT, json=body, buffered=False)
    events = iter(left.response)
    next(events)
    left.close()  # the client went away
    assert client.post(CHAT, json=body).headers["X-Cache"] == "miss"


def test_a_failed_generation_is_not_stored(make_client):
    client = make_client(make_stand_in_bridge(StandInEngine(fail_after_steps=1)), RESPONSE_CACHE="memory")
    stream = client.post(CHAT, json={**GREEDY, "stream": True})
    assert stream.headers["X-Cache"] == "miss" and "error" in events_of(stream)[-1]
    assert client.post(CHAT, json={**GREEDY, "stream": True}).headers["X-Cache"] == "miss"


def test_cache_control_no_cache_skips_the_entry_and_no_store_keeps_none(cached_client, engine):
    cached_client.post(CHAT, json=GREEDY)
    added = len(engine.added)
    fresh = cached_client.post(CHAT, json=GREEDY, headers={"Cache-Control": "no-cache"})
    assert fresh.headers["X-Cache"] == "miss" and len(engine.added) == added + 1
    assert cached_client.post(CHAT, json=GREEDY, headers={"Cache-Control": "max-age=0, no-cache"}
                              ).headers["X-Cache"] == "miss"
    private = {**GREEDY, "max_tokens": 2}
    assert cached_client.post(CHAT, json=private, headers={"Cache-Control": "no-store"}).headers["X-Cache"] == "miss"
    assert cached_client.post(CHAT, json=private).headers["X-Cache"] == "miss"


def test_a_hit_takes_no_concurrency_slot_but_counts_against_the_rate_limit(make_client):
    engine = StandInEngine(answer=" ".join(["w"] * 1000), step_delay=0.01, max_model_len=4096)
    client = make_client(make_stand_in_bridge(engine), RESPONSE_CACHE="memory", MAX_CONCURRENT=1,
                         RATE_LIMIT="4/minute")
    assert client.post(CHAT, json=GREEDY).headers["X-Cache"] == "miss"
    busy = client.post(CHAT, json={**GREEDY, "max_tokens": 1000, "stream": True, "temperature": 1}, buffered=False)
    next(iter(busy.response))
    assert client.post(CHAT, json={**GREEDY, "max_tokens": 3}).status_code == 429  # the cap
    assert client.post(CHAT, json=GREEDY).headers["X-Cache"] == "hit"
    busy.close()
    refused = client.post(CHAT, json=GREEDY)  # the fifth request in the minute
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "rate_limit_exceeded"


def test_invalid_requests_are_refused_as_without_the_cache(cached_client):
    cached_client.post(CHAT, json=GREEDY)
    response = cached_client.post(CHAT, json={**GREEDY, "model": "other"})
    assert response.status_code == 404 and "X-Cache" not in response.headers
    response = cached_client.post(CHAT, json={**GREEDY, "max_tokens": 10**6})
    assert response.status_code == 400 and response.get_json()["error"]["param"] == "max_tokens"


def test_an_unreachable_redis_is_a_miss_with_a_warning(make_client, engine, caplog):
    client = make_client(make_stand_in_bridge(engine), RESPONSE_CACHE=f"redis://127.0.0.1:{free_port()}/0")
    with caplog.at_level(logging.WARNING, logger="app.response_cache"):
        responses = [client.post(CHAT, json=GREEDY) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert [r.headers["X-Cache"] for r in responses] == ["miss"] * 3
    assert [r.get_json()["choices"][0]["message"]["content"] for r in responses] == ["Hello from the stand-in"] * 3
    # One warning for the outage, not one per request.
    assert len([r for r in caplog.records if "response cache unavailable" in r.getMessage()]) == 1
    assert metric(client, "http_response_cache_errors_total") >= 1


def test_an_unknown_setting_stops_the_app(make_client):
    with pytest.raises(ValueError, match="RESPONSE_CACHE"):
        make_client(RESPONSE_CACHE="memcached://x")


def test_the_memory_store_is_bounded_in_entries_bytes_and_time():
    store = MemoryStore(max_entries=2, max_bytes=10)
    store.set("a", b"1234", ttl=60)
    store.set("b", b"1234", ttl=60)
    assert store.get("a") == b"1234"  # a is now the most recently used
    store.set("c", b"1", ttl=60)
    assert (store.get("a"), store.get("b"), store.get("c")) == (b"1234", None, b"1")
    store.set("d", b"12345678", ttl=60)  # over 10 bytes with a: a goes
    assert store.get("a") is None and store.get("d") == b"12345678" and store.bytes <= 10
    store.set("e", b"x", ttl=0.05)
    time.sleep(0.1)
    assert store.get("e") is None


def test_answers_over_the_entry_size_are_not_stored(make_client):
    client = make_client(RESPONSE_CACHE="memory", RESPONSE_CACHE_MAX_ENTRY_BYTES=200)
    assert [client.post(CHAT, json=GREEDY).headers["X-Cache"] for _ in range(2)] == ["miss", "miss"]


def test_the_request_log_line_says_hit(cached_client, caplog):
    with caplog.at_level(logging.INFO, logger="app.requests"):
        for _ in range(2):
            cached_client.post(CHAT, json=GREEDY, buffered=True)  # read and closed, as by a WSGI server
    lines = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event") == "request"]
    assert [line["cache"] for line in lines] == ["miss", "hit"]
    assert lines[1]["completion_tokens"] == lines[0]["completion_tokens"] == 4
    assert json.dumps(lines[1])
