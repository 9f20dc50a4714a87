"""A request's weight (sequences and tokens) is bounded before it reaches the engine, and the
concurrency cap counts sequences."""

from tests.conftest import STAND_IN_MODEL, make_stand_in_bridge
from tests.stand_in import StandInEngine

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def completion(prompts, **overrides):
    return {"model": STAND_IN_MODEL, "prompt": prompts, "max_tokens": 3, **overrides}


def refused(response, param):
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    return error


def test_too_many_sequences_is_a_400_before_any_tokenizing(make_client):
    bridge = make_stand_in_bridge()
    calls = []
    original = bridge.tokenize
    bridge.tokenize = lambda *a, **k: calls.append(a) or original(*a, **k)
    client = make_client(bridge)
    # 128 prompts x n=16 = 2,048 sequences: the request that used to swamp the engine.
    error = refused(client.post(COMPLETIONS, json=completion(["hi"] * 128, n=16)), "prompt")
    assert "2048 sequences" in error["message"] and "at most 16" in error["message"]
    refused(client.post(COMPLETIONS, json=completion(["hi"] * 4, n=5)), "n")
    refused(client.post(CHAT, json={"model": STAND_IN_MODEL, "n": 17, "max_tokens": 3,
                                    "messages": [{"role": "user", "content": "hi"}]}), "n")
    assert calls == []
    assert bridge.engine_for_tests.added == []
    ok = client.post(COMPLETIONS, json=completion(["hi"] * 4, n=4))
    assert ok.status_code == 200 and len(ok.get_json()["choices"]) == 16


def test_the_sequence_bound_is_configurable(make_client):
    client = make_client(MAX_SEQUENCES_PER_REQUEST=64)
    assert client.post(COMPLETIONS, json=completion(["hi"] * 8, n=8)).status_code == 200
    refused(client.post(COMPLETIONS, json=completion(["hi"] * 8, n=9)), "n")


def test_the_token_bound_names_max_tokens_or_the_prompt(make_client):
    engine = StandInEngine(max_model_len=100_000)
    client = make_client(make_stand_in_bridge(engine), MAX_REQUEST_TOKENS=100)
    # 4 sequences x 30 tokens to generate: over the bound before any prompt is read.
    error = refused(client.post(COMPLETIONS, json=completion(["a"] * 2, n=2, max_tokens=30)), "max_tokens")
    assert "120" in error["message"] and "at most 100" in error["message"]
    refused(client.post(CHAT, json={"model": STAND_IN_MODEL, "n": 4, "max_completion_tokens": 30,
                                    "messages": [{"role": "user", "content": "hi"}]}), "max_completion_tokens")
    # 90 prompt tokens + 2 x 10 to generate.
    refused(client.post(COMPLETIONS, json=completion(["a " * 45] * 2, max_tokens=10)), "prompt")
    assert engine.added == []
    assert client.post(COMPLETIONS, json=completion(["a " * 40] * 2, max_tokens=10)).status_code == 200


def test_the_concurrency_cap_counts_sequences(make_client):
    engine = StandInEngine(answer=" ".join(["w"] * 1000), step_delay=0.01, max_model_len=4096)
    client = make_client(make_stand_in_bridge(engine), MAX_CONCURRENT=4)
    stream = client.post(COMPLETIONS, json=completion(["hi"], n=3, max_tokens=1000, stream=True), buffered=False)
    events = iter(stream.response)
    next(events)
    assert client.get("/metrics").get_data(as_text=True).count("http_requests_generating 3.0") == 1
    # Three of four slots are taken: a request for two sequences does not fit, one for one does.
    busy = client.post(COMPLETIONS, json=completion(["hi", "ho"]))
    assert busy.status_code == 429 and busy.get_json()["error"]["code"] == "concurrency_limit_exceeded"
    assert client.post(COMPLETIONS, json=completion(["hi"])).status_code == 200
    # Over the whole cap is never admissible: a 400, not a 429 to retry forever.
    refused(client.post(COMPLETIONS, json=completion(["hi"] * 5)), "prompt")
    stream.close()
    assert client.post(COMPLETIONS, json=completion(["hi"] * 4)).status_code == 200
