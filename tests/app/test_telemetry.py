"""One log line and the HTTP metrics per request, with a stand-in engine."""

import logging

import pytest

from tests.conftest import STAND_IN_MODEL, make_stand_in_bridge
from tests.prometheus import scrape_text, value
from tests.stand_in import StandInEngine

CHAT = "/v1/chat/completions"


def chat(max_tokens=3, **extra):
    return {"model": STAND_IN_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
            **extra}


# Buffered: the test client then reads the whole response and closes it, as a WSGI server does.
def post(client, path, **kwargs):
    return client.post(path, buffered=True, **kwargs)


def get(client, path):
    return client.get(path, buffered=True)


def request_lines(caplog):
    return [r.fields for r in caplog.records if r.name == "app.requests"]


def metrics(client):
    return scrape_text(get(client, "/metrics").get_data(as_text=True))


@pytest.fixture
def caplog_requests(caplog):
    caplog.set_level(logging.INFO, logger="app.requests")
    return caplog


def test_a_completion_logs_one_line_with_tokens_and_timings(client, caplog_requests):
    response = post(client, CHAT, json=chat(), headers={"X-Request-Id": "req-1"},
                           environ_base={"REMOTE_ADDR": "10.1.2.3"})
    usage = response.get_json()["usage"]
    [line] = request_lines(caplog_requests)
    assert line["event"] == "request"
    assert line["request_id"] == "req-1"
    assert (line["method"], line["path"], line["status"]) == ("POST", CHAT, 200)
    assert line["model"] == STAND_IN_MODEL
    assert line["prompt_tokens"] == usage["prompt_tokens"]
    assert line["completion_tokens"] == usage["completion_tokens"] == 3
    assert 0 <= line["ttft_s"] <= line["duration_s"]
    assert line["client"] == "10.1.2.3"
    assert "aborted" not in line and "error_code" not in line


def test_a_stream_is_logged_when_its_last_event_is_sent(client, caplog_requests):
    response = client.post(CHAT, json=chat(stream=True), buffered=False)
    assert request_lines(caplog_requests) == []  # the view has returned, the stream has not ended
    body = response.get_data(as_text=True)
    response.close()
    assert body.endswith("data: [DONE]\n\n")
    [line] = request_lines(caplog_requests)
    assert line["status"] == 200 and line["completion_tokens"] == 3 and "aborted" not in line


def test_errors_are_logged_with_their_code(client, caplog_requests):
    post(client, CHAT, json=chat(model="nope"))
    get(client, "/no/such/path")
    bad_model, unknown_path = request_lines(caplog_requests)
    assert (bad_model["status"], bad_model["error_code"], bad_model["model"]) == (404, "model_not_found", "nope")
    assert (unknown_path["status"], unknown_path["error_code"]) == (404, "not_found")


def test_requests_are_counted_by_route_and_status_and_timed(client):
    post(client, CHAT, json=chat())
    post(client, CHAT, json=chat(max_tokens=-1))
    get(client, "/v1/models/../../etc/passwd")
    samples = metrics(client)
    assert value(samples, "http_requests_total", endpoint=CHAT, method="POST", status="200") == 1
    assert value(samples, "http_requests_total", endpoint=CHAT, method="POST", status="400") == 1
    # Paths that match no route share one label, whatever a scanner sends.
    assert value(samples, "http_requests_total", endpoint="unmatched", status="404") == 1
    assert value(samples, "http_request_duration_seconds_count", endpoint=CHAT) == 2
    # The scrape itself is the one request in flight.
    assert value(samples, "http_requests_in_flight") == 1
    assert value(samples, "http_requests_generating") == 0


def test_rate_limit_and_concurrency_rejections_are_counted(make_client):
    limited = make_client(RATE_LIMIT="2/minute")
    for _ in range(3):
        get(limited, "/v1/models")
    assert value(metrics(limited), "http_rate_limit_rejections_total", limit="rate") == 1

    engine = StandInEngine(answer=" ".join(["w"] * 100), step_delay=0.01, max_model_len=4096)
    capped = make_client(make_stand_in_bridge(engine), MAX_CONCURRENT=1)
    stream = capped.post(CHAT, json=chat(max_tokens=100, stream=True), buffered=False)
    assert post(capped, CHAT, json=chat()).status_code == 429
    samples = metrics(capped)
    assert value(samples, "http_rate_limit_rejections_total", limit="concurrency") == 1
    assert value(samples, "http_rate_limit_rejections_total", limit="rate") == 0
    assert value(samples, "http_requests_generating") == 1
    stream.close()


def test_a_client_that_leaves_early_is_counted_and_logged_as_aborted(make_client, caplog_requests):
    engine = StandInEngine(answer=" ".join(["w"] * 1000), step_delay=0.005, max_model_len=4096)
    client = make_client(make_stand_in_bridge(engine))
    response = client.post(CHAT, json=chat(max_tokens=1000, stream=True), buffered=False)
    events = iter(response.response)
    next(events), next(events)
    response.close()  # what the WSGI server does when the client disconnects
    [line] = request_lines(caplog_requests)
    assert line["aborted"] is True and line["status"] == 200
    assert 0 < line["completion_tokens"] < 1000
    assert value(metrics(client), "http_client_aborts_total", endpoint=CHAT) == 1
