"""Production guards against the real gunicorn + gevent server: keys, limits, disconnects, bounds."""

import re
import statistics
import time

import pytest
import requests

from engine_bridge.default_model import DEFAULT_MODEL_NAME
from tests.conftest import ServerProcess
from tests.prometheus import scrape, value

KEYS = {name: f"sk-test-{name}-{i}x" for i, name in enumerate(
    ("auth", "rate", "shared", "concurrency", "keepalive", "spare"))}


def chat_body(**overrides):
    return {"model": DEFAULT_MODEL_NAME, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 8, **overrides}


def auth(name):
    return {"Authorization": f"Bearer {KEYS[name]}"}


def guarded_env(redis_url):
    return {"API_KEYS": ",".join(KEYS.values()), "RATE_LIMIT": "10/minute", "MAX_CONCURRENT": "2",
            "RATELIMIT_STORAGE_URI": redis_url, "SSE_KEEPALIVE_SECONDS": "0.3"}


@pytest.fixture(scope="module")
def guarded(redis_url):
    proc = ServerProcess(env=guarded_env(redis_url)).start()
    yield proc
    proc.stop()


def assert_envelope(response, status, code):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


def test_api_keys_are_required_on_v1_and_never_logged(guarded):
    url = guarded.base_url + "/v1/models"
    assert_envelope(requests.get(url, timeout=10), 401, "invalid_api_key")
    assert_envelope(requests.get(url, headers={"Authorization": "Bearer sk-wrong"}, timeout=10), 401,
                    "invalid_api_key")
    assert_envelope(requests.get(url, headers={"Authorization": KEYS["auth"]}, timeout=10), 401, "invalid_api_key")
    assert requests.get(url, headers=auth("auth"), timeout=10).status_code == 200
    assert requests.get(guarded.base_url + "/health", timeout=10).status_code == 200
    response = requests.post(guarded.base_url + "/v1/chat/completions", json=chat_body(), headers=auth("auth"),
                             timeout=60)
    assert response.status_code == 200
    log = guarded.log_path.read_text(errors="replace")
    assert "API keys are required" in log
    assert not any(key in log for key in KEYS.values())


def test_rate_limit_per_key_with_openai_envelope_and_headers(guarded):
    url = guarded.base_url + "/v1/models"
    rejected_before = metric(guarded.base_url, "http_rate_limit_rejections_total", limit="rate")
    for i in range(10):
        response = requests.get(url, headers=auth("rate"), timeout=10)
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "10"
        assert response.headers["X-RateLimit-Remaining"] == str(9 - i)
    limited = requests.get(url, headers=auth("rate"), timeout=10)
    assert_envelope(limited, 429, "rate_limit_exceeded")
    assert int(limited.headers["Retry-After"]) > 0
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert metric(guarded.base_url, "http_rate_limit_rejections_total", limit="rate") == rejected_before + 1
    # Other keys have their own budget, and /health counts against none.
    assert requests.get(url, headers=auth("spare"), timeout=10).status_code == 200
    assert all(requests.get(guarded.base_url + "/health", timeout=10).status_code == 200 for _ in range(15))


def test_replicas_share_one_budget_through_redis(guarded, redis_url):
    replica = ServerProcess(env=guarded_env(redis_url)).start()
    try:
        for i in range(10):
            base = (guarded, replica)[i % 2].base_url
            assert requests.get(base + "/v1/models", headers=auth("shared"), timeout=10).status_code == 200
        for base in (guarded.base_url, replica.base_url):
            assert_envelope(requests.get(base + "/v1/models", headers=auth("shared"), timeout=10), 429,
                            "rate_limit_exceeded")
    finally:
        replica.stop()


class OpenStream:
    """A streaming response and its line iterator, kept together: dropping the iterator closes the connection."""

    def __init__(self, response, lines):
        self.response, self.lines = response, lines

    def close(self):
        self.response.close()


def open_stream(base_url, headers=None, max_tokens=2000, chunks=3):
    """Start a long streaming chat and read a few events; returns it still open."""
    response = requests.post(base_url + "/v1/chat/completions", headers=headers, stream=True, timeout=120,
                             json=chat_body(max_tokens=max_tokens, stream=True, ignore_eos=True))
    assert response.status_code == 200
    lines = response.iter_lines()
    seen = 0
    while seen < chunks:
        if next(lines).startswith(b"data: {"):
            seen += 1
    return OpenStream(response, lines)


def test_concurrency_cap_answers_429_at_once(guarded):
    rejected_before = metric(guarded.base_url, "http_rate_limit_rejections_total", limit="concurrency")
    streams = [open_stream(guarded.base_url, auth("concurrency")) for _ in range(2)]
    try:
        started = time.monotonic()
        refused = requests.post(guarded.base_url + "/v1/chat/completions", json=chat_body(),
                                headers=auth("concurrency"), timeout=30)
        assert time.monotonic() - started < 2
        assert_envelope(refused, 429, "concurrency_limit_exceeded")
        assert refused.headers["Retry-After"]
        assert metric(guarded.base_url, "http_rate_limit_rejections_total", limit="concurrency") == rejected_before + 1
    finally:
        for stream in streams:
            stream.close()
    deadline = time.monotonic() + 10
    while True:
        response = requests.post(guarded.base_url + "/v1/chat/completions", json=chat_body(),
                                 headers=auth("concurrency"), timeout=60)
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert response.status_code == 200


def test_streams_send_keepalives_while_waiting_and_proxy_headers(guarded):
    # A long prompt keeps the request in prefill for longer than the 0.3 s keep-alive interval.
    body = chat_body(messages=[{"role": "user", "content": "hello " * 3000}], max_tokens=3, stream=True,
                     temperature=0, ignore_eos=True)
    with requests.post(guarded.base_url + "/v1/chat/completions", json=body, headers=auth("keepalive"),
                       stream=True, timeout=120) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        lines = [line for line in response.iter_lines() if line]
    first_token = next((i for i, line in enumerate(lines) if b'"delta":{"content"' in line), None)
    assert first_token is not None, lines
    assert b": keep-alive" in lines[:first_token]
    assert lines[-1] == b"data: [DONE]"


def metric(base_url, name, default=None, **labels):
    samples = scrape(base_url)
    return value(samples, name, **labels) if default is None else value(samples, name, default=default, **labels)


def short_request_seconds(base_url):
    started = time.monotonic()
    response = requests.post(base_url + "/v1/chat/completions", timeout=60,
                             json=chat_body(max_tokens=8, temperature=0, ignore_eos=True))
    assert response.status_code == 200
    return time.monotonic() - started


def wait_until_nothing_runs(base_url: str, timeout: float) -> None:
    """Wait until vLLM's scheduler runs no request, or timeout has passed (the caller asserts)."""
    deadline = time.monotonic() + timeout
    while metric(base_url, "vllm:num_requests_running") and time.monotonic() < deadline:
        time.sleep(0.1)


def test_client_disconnect_aborts_generation(server):
    idle = statistics.median(short_request_seconds(server.base_url) for _ in range(3))
    aborts_before = metric(server.base_url, "http_client_aborts_total", default=0, endpoint="/v1/chat/completions")
    streams = [open_stream(server.base_url, max_tokens=4000) for _ in range(4)]
    assert metric(server.base_url, "vllm:num_requests_running") == 4
    for stream in streams:
        stream.close()
    # The server notices on its next write to the closed connection and the engine aborts after its
    # step: well under a second on an idle machine. The bound leaves room for a loaded CI machine,
    # and is far below the minutes the 4 x 4000 tokens would take if nothing were aborted.
    wait_until_nothing_runs(server.base_url, timeout=10)
    assert metric(server.base_url, "vllm:num_requests_running") == 0
    assert metric(server.base_url, "vllm:num_requests_waiting") == 0
    assert metric(server.base_url, "http_client_aborts_total", endpoint="/v1/chat/completions") == aborts_before + 4
    after = statistics.median(short_request_seconds(server.base_url) for _ in range(3))
    print(f"short request: idle {idle:.2f} s, after dropped streams {after:.2f} s")
    assert after < idle * 1.5 + 0.2


def test_request_ids_are_kept_or_made_and_logged(server):
    response = requests.get(server.base_url + "/v1/models", headers={"X-Request-Id": "client-id-42"}, timeout=10)
    assert response.headers["X-Request-Id"] == "client-id-42"
    made = requests.get(server.base_url + "/v1/models", timeout=10).headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    error = requests.post(server.base_url + "/v1/chat/completions", json={}, timeout=10,
                          headers={"X-Request-Id": "bad-request-7"})
    assert error.status_code == 400 and error.headers["X-Request-Id"] == "bad-request-7"
    kept = server.request_log_line("client-id-42")
    assert kept["path"] == "/v1/models" and kept["status"] == 200
    assert server.request_log_line(made)["path"] == "/v1/models"
    assert server.request_log_line("bad-request-7")["status"] == 400


def test_request_body_over_the_limit_is_a_413(server):
    body = b'{"model": "x", "prompt": "' + b"a" * (5 * 1024 * 1024) + b'"}'
    response = requests.post(server.base_url + "/v1/completions", data=body, timeout=30,
                             headers={"Content-Type": "application/json"})
    assert_envelope(response, 413, "request_too_large")
