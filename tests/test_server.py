"""The real server: gunicorn + gevent + the real engine on the default model, driven by the openai client."""

import json
import statistics
import threading
import time

import openai
import pytest
import requests
from transformers import AutoTokenizer

from engine_bridge.default_model import DEFAULT_MODEL_NAME, default_model_dir

CAPITAL_QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="not-needed", max_retries=0)


def test_models_lists_the_default_model(client):
    assert [m.id for m in client.models.list().data] == [DEFAULT_MODEL_NAME]


def test_chat_answers_the_capital_of_france(client):
    response = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=CAPITAL_QUESTION,
                                              temperature=0, max_tokens=30)
    choice = response.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert response.id.startswith("chatcmpl-")
    assert response.object == "chat.completion"


def test_usage_is_counted_by_the_engine(client):
    response = client.chat.completions.create(model=DEFAULT_MODEL_NAME, temperature=0, max_tokens=10,
                                              messages=[{"role": "user", "content": "Tell me a long story."}])
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    expected_prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tell me a long story."}], add_generation_prompt=True, tokenize=True,
        return_dict=False)
    usage = response.usage
    assert usage.prompt_tokens == len(expected_prompt)
    assert response.choices[0].finish_reason == "length"
    assert usage.completion_tokens == 10
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert len(tokenizer.encode(response.choices[0].message.content, add_special_tokens=False)) in range(8, 13)


def test_streamed_text_equals_the_non_streamed_text(client):
    messages = [{"role": "user", "content": "Write a sentence about the sea."}]
    whole = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=messages, temperature=0, max_tokens=40)
    stream = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=messages, temperature=0,
                                            max_tokens=40, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_completions_continue_the_prompt(client):
    response = client.completions.create(model=DEFAULT_MODEL_NAME, prompt="The capital of France is",
                                         temperature=0, max_tokens=8)
    assert response.object == "text_completion"
    assert "Paris" in response.choices[0].text
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_streamed_completions_equal_the_non_streamed(client):
    kwargs = dict(model=DEFAULT_MODEL_NAME, prompt="Once upon a time", temperature=0, max_tokens=20)
    whole = client.completions.create(**kwargs)
    text = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs))
    assert text == whole.choices[0].text


def test_errors_reach_the_client_as_openai_errors(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=CAPITAL_QUESTION)
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=CAPITAL_QUESTION, temperature=3)
    assert info.value.body["param"] == "temperature"


def test_malformed_json_is_an_envelope_from_the_real_server(server):
    response = requests.post(server.base_url + "/v1/chat/completions", data="{oops",
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def stream_chat(base_url, max_tokens, arrivals, prompt="Write a very long story about a dragon."):
    """Stream a chat completion with requests, recording the arrival time of each content event."""
    body = {"model": DEFAULT_MODEL_NAME, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 1.0, "stream": True, "ignore_eos": True}
    with requests.post(base_url + "/v1/chat/completions", json=body, stream=True, timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith(b"data: {") and b'"content"' in line:
                arrivals.append(time.monotonic())


def test_stream_events_arrive_as_they_are_generated(server):
    arrivals = []
    stream_chat(server.base_url, 40, arrivals)
    assert len(arrivals) >= 10
    # Not buffered to the end: the events are spread over the generation, not one burst.
    span = arrivals[-1] - arrivals[0]
    assert span > 0.2
    assert max(b - a for a, b in zip(arrivals, arrivals[1:])) < span / 2


def test_health_answers_quickly_while_the_engine_is_busy(server):
    arrivals = [[] for _ in range(4)]
    streams = [threading.Thread(target=stream_chat, args=(server.base_url, 300, arrivals[i]))
               for i in range(4)]
    for thread in streams:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while not all(arrivals) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(arrivals), "the streams did not start"
        latencies = []
        session = requests.Session()
        for _ in range(20):
            started = time.monotonic()
            response = session.get(server.base_url + "/health", timeout=5)
            latencies.append(time.monotonic() - started)
            assert response.status_code == 200
            time.sleep(0.05)
        probes_done = time.monotonic()
    finally:
        for thread in streams:
            thread.join(timeout=300)
    # The engine was generating during every probe: tokens kept arriving after the last one.
    assert sum(1 for a in arrivals for t in a if t > probes_done) > 0
    print(f"/health while busy: median {statistics.median(latencies) * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms")
    assert max(latencies) < 0.100


def test_tokenize_matches_the_models_tokenizer_and_the_engines_count(server, client):
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    text = "The quick brown fox jumps over the lazy dog."
    tokens = requests.post(server.base_url + "/tokenize", json={"prompt": text}, timeout=30).json()
    assert tokens["tokens"] == tokenizer.encode(text)
    assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == 8192
    detokenized = requests.post(server.base_url + "/detokenize", json={"tokens": tokens["tokens"]}, timeout=30)
    assert detokenized.json() == {"prompt": text}
    # The chat template renders the same prompt the chat endpoint counts.
    chat_tokens = requests.post(server.base_url + "/tokenize", timeout=30,
                                json={"model": DEFAULT_MODEL_NAME, "messages": CAPITAL_QUESTION}).json()
    response = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=CAPITAL_QUESTION, max_tokens=1)
    assert chat_tokens["count"] == response.usage.prompt_tokens
    outside = requests.post(server.base_url + "/detokenize", json={"tokens": [len(tokenizer)]}, timeout=30)
    assert outside.status_code == 400 and outside.json()["error"]["param"] == "tokens[0]"
