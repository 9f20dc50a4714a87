"""The response cache on the real server with the real engine (RESPONSE_CACHE=memory)."""

import time
import uuid

import openai
import pytest
import requests

from engine_bridge.default_model import DEFAULT_MODEL_NAME
from tests.conftest import ServerProcess
from tests.prometheus import scrape, value

KEYS = ("sk-cache-team-a", "sk-cache-team-b")
CHAT = "/v1/chat/completions"
# The engine's own counters: a hit must leave every one of them as it was.
ENGINE_COUNTERS = ("vllm:request_success_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total")


@pytest.fixture(scope="module")
def cached_server():
    proc = ServerProcess(env={"RESPONSE_CACHE": "memory", "API_KEYS": ",".join(KEYS)}).start()
    yield proc
    proc.stop()


def question() -> str:
    """A prompt no earlier run has cached."""
    return f"Request {uuid.uuid4().hex[:8]}: name three rivers of Europe and say one thing about each."


def chat_body(**overrides) -> dict:
    return {"model": DEFAULT_MODEL_NAME, "messages": [{"role": "user", "content": question()}],
            "max_tokens": 32, "temperature": 0, **overrides}


def post(server, body, key=KEYS[0], path=CHAT, **headers) -> tuple[requests.Response, float]:
    """The response and its time in seconds, from send to the last byte."""
    started = time.perf_counter()
    response = requests.post(server.base_url + path, json=body, timeout=600,
                             headers={"Authorization": f"Bearer {key}", **headers})
    response.content
    return response, time.perf_counter() - started


def engine_counters(server) -> tuple[float, ...]:
    samples = scrape(server.base_url)
    return tuple(value(samples, name, default=0) for name in ENGINE_COUNTERS)


def without_id(body: dict) -> dict:
    return {k: v for k, v in body.items() if k not in ("id", "created")}


def test_a_repeated_greedy_request_is_a_fast_hit_that_leaves_the_engine_alone(cached_server):
    body = chat_body(ignore_eos=True)
    first, generated_in = post(cached_server, body)
    assert first.status_code == 200 and first.headers["X-Cache"] == "miss"
    before = scrape(cached_server.base_url)
    second, hit_in = post(cached_server, body)
    after = scrape(cached_server.base_url)
    assert second.status_code == 200 and second.headers["X-Cache"] == "hit"
    assert without_id(second.json()) == without_id(first.json())
    assert second.json()["id"] != first.json()["id"]
    assert second.json()["usage"] == first.json()["usage"]
    for name in ENGINE_COUNTERS:
        assert value(after, name) == value(before, name), name
    assert value(after, "http_response_cache_lookups_total", endpoint=CHAT, result="hit") == \
        value(before, "http_response_cache_lookups_total", endpoint=CHAT, result="hit", default=0) + 1
    # Generous: a hit takes milliseconds, a generation of 32 tokens most of a second or more.
    assert hit_in < generated_in / 5, (hit_in, generated_in)


def test_sampling_without_a_seed_is_never_cached_and_with_one_it_is(cached_server):
    body = chat_body(temperature=0.7, max_tokens=8)
    for _ in range(2):
        before = engine_counters(cached_server)
        response, _ = post(cached_server, body)
        assert response.headers["X-Cache"] == "bypass"
        assert engine_counters(cached_server)[0] == before[0] + 1
    seeded = chat_body(temperature=0.7, max_tokens=8, seed=42)
    first, _ = post(cached_server, seeded)
    before = engine_counters(cached_server)
    second, _ = post(cached_server, seeded)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("miss", "hit")
    assert second.json()["choices"] == first.json()["choices"]
    assert engine_counters(cached_server) == before


def test_two_api_keys_never_share_an_entry(cached_server):
    body = chat_body(max_tokens=8)
    assert post(cached_server, body, key=KEYS[0])[0].headers["X-Cache"] == "miss"
    before = engine_counters(cached_server)
    other, _ = post(cached_server, body, key=KEYS[1])
    assert other.headers["X-Cache"] == "miss"
    assert engine_counters(cached_server)[0] == before[0] + 1
    assert post(cached_server, body, key=KEYS[1])[0].headers["X-Cache"] == "hit"


def test_a_stream_replays_the_streamed_original_through_the_sdk(cached_server):
    client = openai.OpenAI(base_url=cached_server.base_url + "/v1", api_key=KEYS[0], max_retries=0)
    messages = [{"role": "user", "content": question()}]

    def stream():
        raw = client.chat.completions.with_raw_response.create(
            model=DEFAULT_MODEL_NAME, messages=messages, max_tokens=32, temperature=0, stream=True,
            stream_options={"include_usage": True})
        return raw.headers["X-Cache"], list(raw.parse())

    first_verdict, original = stream()
    before = engine_counters(cached_server)
    replay_verdict, replayed = stream()
    assert (first_verdict, replay_verdict) == ("miss", "hit")
    assert engine_counters(cached_server) == before

    def text(chunks):
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert text(replayed) == text(original) and text(original)
    assert len(replayed) == len(original)
    assert replayed[-1].usage == original[-1].usage
    assert {c.id for c in replayed} != {c.id for c in original}


def test_completions_hit_too(cached_server):
    body = {"model": DEFAULT_MODEL_NAME, "prompt": question(), "max_tokens": 16, "temperature": 0, "logprobs": 2}
    first, _ = post(cached_server, body, path="/v1/completions")
    second, _ = post(cached_server, body, path="/v1/completions")
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("miss", "hit")
    assert without_id(second.json()) == without_id(first.json())


def test_cache_control_no_cache_generates_afresh(cached_server):
    body = chat_body(max_tokens=8)
    post(cached_server, body)
    before = engine_counters(cached_server)
    fresh, _ = post(cached_server, body, **{"Cache-Control": "no-cache"})
    assert fresh.headers["X-Cache"] == "miss"
    assert engine_counters(cached_server)[0] == before[0] + 1


def test_the_log_line_says_hit_and_the_original_cost(cached_server):
    body = chat_body(max_tokens=6)
    post(cached_server, body)
    response, _ = post(cached_server, body, **{"X-Request-Id": "cache-hit-1"})
    line = cached_server.request_log_line("cache-hit-1")
    assert line["cache"] == "hit" and line["status"] == 200
    assert line["completion_tokens"] == response.json()["usage"]["completion_tokens"]
