"""Careless and hostile clients against the real server: bounded requests, clients that leave,
large inputs off the gevent hub."""

import statistics
import threading
import time

import openai
import pytest
import requests

from engine_bridge.default_model import DEFAULT_MODEL_NAME
from tests.prometheus import scrape, value

CHAT = "/v1/chat/completions"
LONG_STORY = [{"role": "user", "content": "Tell me a long story."}]


def engine_load(base_url) -> tuple[float, float]:
    samples = scrape(base_url)
    return value(samples, "vllm:num_requests_running"), value(samples, "vllm:num_requests_waiting")


def wait_until_engine_is_empty(base_url, timeout: float) -> float:
    """Seconds until the engine holds no request; fails after timeout."""
    started = time.monotonic()
    while engine_load(base_url) != (0, 0):
        assert time.monotonic() - started < timeout, f"engine still holds {engine_load(base_url)}"
        time.sleep(0.05)
    return time.monotonic() - started


def short_request_seconds(base_url) -> float:
    started = time.monotonic()
    response = requests.post(base_url + CHAT, timeout=60, json={
        "model": DEFAULT_MODEL_NAME, "messages": LONG_STORY, "max_tokens": 8, "temperature": 0,
        "ignore_eos": True})
    assert response.status_code == 200
    return time.monotonic() - started


def test_a_request_for_thousands_of_sequences_is_refused_at_once(server):
    started = time.monotonic()
    response = requests.post(server.base_url + "/v1/completions", timeout=30, json={
        "model": DEFAULT_MODEL_NAME, "prompt": ["Once upon a time " * 200] * 128, "n": 16,
        "max_tokens": 4096})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "prompt" and "2048 sequences" in error["message"]
    assert time.monotonic() - started < 5
    assert engine_load(server.base_url) == (0, 0)


def test_clients_that_leave_non_streaming_requests_stop_their_generation(server):
    idle = statistics.median(short_request_seconds(server.base_url) for _ in range(3))
    aborts_before = value(scrape(server.base_url), "http_client_aborts_total", default=0, endpoint=CHAT)
    impatient = openai.OpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0, timeout=1.5)
    gone_at = []

    def leave_early():
        with pytest.raises(openai.APITimeoutError):
            impatient.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=LONG_STORY, max_tokens=3000,
                                              extra_body={"ignore_eos": True})
        gone_at.append(time.monotonic())

    clients = [threading.Thread(target=leave_early) for _ in range(4)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    assert len(gone_at) == 4
    # 4 x 3,000 tokens would keep the engine busy for minutes; the server must notice the
    # closed connections and abort within about a second.
    emptied = wait_until_engine_is_empty(server.base_url, timeout=10) + (time.monotonic() - max(gone_at))
    print(f"engine empty {emptied:.2f} s after the last of 4 clients left")
    assert value(scrape(server.base_url), "http_client_aborts_total", endpoint=CHAT) == aborts_before + 4
    lines = [r for r in server.log_records() if r.get("event") == "request" and r.get("aborted")
             and r.get("status") == 499]
    assert len(lines) >= 4
    after = statistics.median(short_request_seconds(server.base_url) for _ in range(3))
    print(f"short request: idle {idle:.2f} s, after the dropped requests {after:.2f} s")
    assert after < idle * 1.5 + 0.2


def test_multi_megabyte_inputs_do_not_pause_running_streams(server):
    """Tokenizing and templating megabytes runs off the gevent hub: streams keep flowing."""
    huge = "The quick brown fox jumps over the lazy dog. " * 66_000  # about 3 MB, 660k tokens
    gaps: list[list[float]] = []
    window = {}

    def stream():
        arrivals = []
        with requests.post(server.base_url + CHAT, stream=True, timeout=300, json={
                "model": DEFAULT_MODEL_NAME, "messages": LONG_STORY, "max_tokens": 400, "stream": True,
                "ignore_eos": True}) as response:
            for line in response.iter_lines():
                if line.startswith(b"data: {"):
                    arrivals.append(time.monotonic())
        gaps.append(arrivals)

    streams = [threading.Thread(target=stream) for _ in range(3)]
    for thread in streams:
        thread.start()
    time.sleep(2)  # streams are generating
    window["quiet"] = time.monotonic()
    time.sleep(4)  # a baseline: how long streams pause on this machine with nothing else going on

    results = []

    def big(path, body):
        response = requests.post(server.base_url + path, json=body, timeout=120)
        results.append((path, response.status_code, response.json()))

    bigs = [threading.Thread(target=big, args=("/tokenize", {"prompt": huge})) for _ in range(3)]
    bigs += [threading.Thread(target=big, args=(CHAT, {"model": DEFAULT_MODEL_NAME, "max_tokens": 4,
                                                       "messages": [{"role": "user", "content": huge}]}))
             for _ in range(2)]
    window["start"] = time.monotonic()
    for thread in bigs:
        thread.start()
    for thread in bigs:
        thread.join()
    window["end"] = time.monotonic()
    for thread in streams:
        thread.join()

    for path, status, body in results:
        if path == "/tokenize":
            assert status == 200 and body["count"] > 600_000
        else:  # far over the context: refused after tokenizing, with the counts
            assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    assert len(gaps) == 3 and all(len(a) > 100 for a in gaps)
    def worst_pause(start, end):
        return max(b - a for arrivals in gaps for a, b in zip(arrivals, arrivals[1:]) if start <= b <= end)

    baseline = worst_pause(window["quiet"], window["start"])
    worst = worst_pause(window["start"], window["end"] + 0.5)
    print(f"5 multi-megabyte requests took {window['end'] - window['start']:.1f} s; longest pause of a "
          f"running stream meanwhile: {worst * 1000:.0f} ms (before them: {baseline * 1000:.0f} ms)")
    # Measured well under 200 ms here. Work on the hub paused every stream about 2 s per 3 MB
    # prompt; the bound leaves room for a busy machine (scaled by its own pauses before).
    assert worst < max(1.0, 3 * baseline)
