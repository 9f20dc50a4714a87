"""Guards with a stand-in engine: keys, limits, the concurrency cap, request ids and keep-alives."""

import gevent

from tests.conftest import STAND_IN_MODEL, make_stand_in_bridge
from tests.stand_in import StandInEngine

CHAT = "/v1/chat/completions"
BODY = {"model": STAND_IN_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


def test_keys_from_the_environment_list_and_a_file(make_client, tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("# team keys\nsk-from-file\n")
    client = make_client(API_KEYS="sk-a, sk-b", API_KEYS_FILE=str(key_file))
    for key in ("sk-a", "sk-b", "sk-from-file"):
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    response = client.get("/v1/models", headers={"Authorization": "Bearer sk-c"})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/models").status_code == 401
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_without_keys_the_api_is_open(client):
    assert client.get("/v1/models").status_code == 200


def test_rate_limit_in_memory_by_default(make_client):
    client = make_client(RATE_LIMIT="3/minute")
    statuses = [client.get("/v1/models").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = client.get("/v1/models")
    assert response.get_json()["error"]["code"] == "rate_limit_exceeded"
    assert response.headers["Retry-After"] and response.headers["X-RateLimit-Limit"] == "3"


def test_an_unreachable_rate_limit_store_does_not_stop_the_server(make_client):
    client = make_client(RATELIMIT_STORAGE_URI="redis://127.0.0.1:1/0", RATE_LIMIT="2/minute")
    statuses = [client.get("/v1/models").status_code for _ in range(3)]
    # Serving goes on, counted in memory instead.
    assert statuses == [200, 200, 429]


def test_the_concurrency_cap_refuses_at_once_and_frees_slots(make_client):
    engine = StandInEngine(answer=" ".join(["w"] * 1000), step_delay=0.01, max_model_len=4096)
    client = make_client(make_stand_in_bridge(engine), MAX_CONCURRENT=1)
    stream = client.post(CHAT, json={**BODY, "max_tokens": 1000, "stream": True}, buffered=False)
    events = iter(stream.response)
    next(events)
    refused = client.post(CHAT, json=BODY)
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "concurrency_limit_exceeded"
    assert refused.headers["Retry-After"] == "1"
    stream.close()
    assert client.post(CHAT, json=BODY).status_code == 200


def test_a_stream_closed_before_its_first_event_frees_its_slot(make_client):
    client = make_client(MAX_CONCURRENT=1)
    client.post(CHAT, json={**BODY, "stream": True}, buffered=False).close()
    assert client.post(CHAT, json=BODY).status_code == 200


def test_request_ids_are_kept_and_prefix_the_engine_request(make_client):
    bridge = make_stand_in_bridge()
    client = make_client(bridge)
    response = client.post(CHAT, json=BODY, headers={"X-Request-Id": "trace-123"})
    assert response.headers["X-Request-Id"] == "trace-123"
    assert bridge.engine_for_tests.added[-1].startswith("trace-123-")
    unsafe = client.get("/v1/models", headers={"X-Request-Id": "bad id; rm -rf"})
    assert unsafe.headers["X-Request-Id"] != "bad id; rm -rf"


def test_keepalive_comments_while_waiting_for_tokens(make_client):
    engine = StandInEngine(step_delay=0.15)
    client = make_client(make_stand_in_bridge(engine), SSE_KEEPALIVE_SECONDS=0.05)
    text = client.post(CHAT, json={**BODY, "stream": True}).get_data(as_text=True)
    assert ": keep-alive\n\n" in text
    assert text.endswith("data: [DONE]\n\n")


def test_a_draining_server_refuses_new_generations_with_503(make_client):
    bridge = make_stand_in_bridge()
    client = make_client(bridge)
    bridge.begin_drain()
    response = client.post(CHAT, json=BODY)
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "engine_not_ready"


def test_many_concurrent_requests_all_complete(make_client):
    client = make_client(make_stand_in_bridge(StandInEngine(step_delay=0.005)))
    jobs = [gevent.spawn(client.post, CHAT, json=BODY) for _ in range(20)]
    gevent.joinall(jobs, raise_error=True)
    assert [job.value.status_code for job in jobs] == [200] * 20
