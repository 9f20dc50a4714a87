"""Metrics and logs of the real server, as Prometheus and a log pipeline see them."""

import re

import openai
import pytest

from engine_bridge.default_model import DEFAULT_MODEL_NAME
from tests.prometheus import scrape, value

CHAT = "/v1/chat/completions"
# Lines native libraries write to stderr themselves (torch's C++ warnings), which no Python
# logging configuration can reformat.
NATIVE_LINE = re.compile(r"^\[[WEIF]\d{4} ")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="not-needed", max_retries=0)


def test_a_generation_moves_vllms_metrics_and_the_http_metrics(server, client):
    before = scrape(server.base_url)
    response = client.chat.completions.create(
        model=DEFAULT_MODEL_NAME, temperature=0, max_tokens=12, extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": "Count to twenty."}])
    after = scrape(server.base_url)

    def delta(name, **labels):
        # A labelled series may first appear with this request; after it, it must exist.
        return value(after, name, **labels) - value(before, name, default=0, **labels)

    usage = response.usage
    assert usage.completion_tokens == 12
    assert delta("vllm:prompt_tokens_total") == usage.prompt_tokens
    assert delta("vllm:generation_tokens_total") == usage.completion_tokens
    for histogram in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
                      "vllm:request_queue_time_seconds"):
        assert delta(histogram + "_count") == 1, histogram
    # One gap between each pair of consecutive tokens.
    assert delta("vllm:inter_token_latency_seconds_count") == usage.completion_tokens - 1
    assert 0 < delta("vllm:time_to_first_token_seconds_sum") < delta("vllm:e2e_request_latency_seconds_sum")
    assert delta("vllm:request_success_total", finished_reason="length") == 1
    assert delta("http_requests_total", endpoint=CHAT, method="POST", status="200") == 1
    assert delta("http_request_duration_seconds_count", endpoint=CHAT) == 1
    # Between requests: nothing in the engine, only the scrape in flight.
    assert value(after, "vllm:num_requests_running", model_name=DEFAULT_MODEL_NAME) == 0
    assert value(after, "vllm:num_requests_waiting", model_name=DEFAULT_MODEL_NAME) == 0
    assert value(after, "http_requests_in_flight") == 1
    # Prometheus' process metrics come along.
    assert value(after, "process_resident_memory_bytes") > 0


def test_each_request_is_one_json_line(server, client):
    stream = client.chat.completions.create(
        model=DEFAULT_MODEL_NAME, temperature=0, max_tokens=6, stream=True,
        stream_options={"include_usage": True}, extra_headers={"X-Request-Id": "observe-1"},
        extra_body={"ignore_eos": True}, messages=[{"role": "user", "content": "Say hello."}])
    usage = [chunk.usage for chunk in stream][-1]
    line = server.request_log_line("observe-1")
    assert line["level"] == "info" and line["logger"] == "app.requests"
    assert (line["method"], line["path"], line["status"]) == ("POST", CHAT, 200)
    assert line["model"] == DEFAULT_MODEL_NAME
    assert (line["prompt_tokens"], line["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert 0 < line["ttft_s"] < line["duration_s"]
    assert line["client"] == "127.0.0.1"

    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=[], extra_headers={"X-Request-Id": "observe-2"})
    line = server.request_log_line("observe-2")
    assert (line["status"], line["error_code"]) == (400, "invalid_request_error")


def test_every_line_of_the_log_is_json_including_gunicorns_and_vllms(server, client):
    client.models.list()
    lines = server.log_path.read_text(errors="replace").splitlines()
    other = [line for line in lines if line.strip() and not line.startswith("{") and not NATIVE_LINE.match(line)]
    assert other == [], other[:10]
    records = server.log_records()
    loggers = {record["logger"] for record in records}
    assert "gunicorn.error" in loggers and "app.requests" in loggers
    assert any(name.startswith("vllm.") for name in loggers)
    assert all({"time", "level", "logger", "pid", "message"} <= set(record) for record in records)


def test_start_up_says_when_and_where_it_is_ready(server):
    events = {}
    for record in server.log_records():
        events.setdefault(record.get("event"), record)
    assert {"listening", "engine_loading", "engine_ready", "ready"} <= set(events)
    assert events["engine_ready"]["model"] == DEFAULT_MODEL_NAME
    assert events["ready"]["listen"] == [server.base_url]
    assert server.base_url in events["ready"]["message"]
