"""The endpoints' shapes, with a stand-in engine."""

import json
from datetime import datetime

from engine_bridge import EngineBridge, EngineSettings
from tests.conftest import STAND_IN_MODEL, make_stand_in_bridge
from tests.stand_in import DEFAULT_ANSWER, StandInEngine, StandInTokenizer

CHAT = "/v1/chat/completions"


def events_of(response):
    chunks = [e for e in response.get_data(as_text=True).split("\n\n") if e]
    assert chunks[-1] == "data: [DONE]"
    assert all(c.startswith("data: ") for c in chunks)
    return [json.loads(c.removeprefix("data: ")) for c in chunks[:-1]]


def test_health_is_healthy_when_the_engine_is_ready(client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "healthy"
    assert body["version"]
    assert datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")).tzinfo is not None


def test_health_is_503_while_the_engine_loads(make_client):
    response = make_client(make_stand_in_bridge(load=False)).get("/health")
    assert response.status_code == 503
    assert response.get_json()["status"] == "loading"
    assert set(response.get_json()) == {"status", "timestamp", "version"}


def test_health_is_503_while_draining(make_client):
    bridge = make_stand_in_bridge()
    client = make_client(bridge)
    bridge.begin_drain()
    response = client.get("/health")
    assert response.status_code == 503
    assert response.get_json()["status"] == "draining"


def test_models_lists_the_served_model(client):
    body = client.get("/v1/models").get_json()
    assert body["object"] == "list"
    [model] = body["data"]
    assert model["id"] == STAND_IN_MODEL
    assert model["object"] == "model"
    assert isinstance(model["created"], int) and model["owned_by"]
    assert (model["root"], model["parent"]) == (STAND_IN_MODEL, None)


def test_models_lists_lora_adapters_after_the_base_model(make_client):
    settings = EngineSettings(model="stand-in", served_model_name=STAND_IN_MODEL,
                              lora_modules=(("sql", "/adapters/sql"), ("chat", "/adapters/chat")))
    engine = StandInEngine()
    bridge = EngineBridge(settings, engine_factory=lambda s: engine, tokenizer_factory=lambda model: StandInTokenizer())
    bridge.load()
    client = make_client(bridge)
    models = client.get("/v1/models").get_json()["data"]
    assert [(m["id"], m["root"], m["parent"]) for m in models] == [
        (STAND_IN_MODEL, STAND_IN_MODEL, None), ("sql", STAND_IN_MODEL, STAND_IN_MODEL),
        ("chat", STAND_IN_MODEL, STAND_IN_MODEL)]
    unknown = client.post(CHAT, json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
    assert unknown.status_code == 404
    assert "'sql'" in unknown.get_json()["error"]["message"]
    # Each generation endpoint hands the engine the adapter's LoRARequest (none for the base model).
    client.post(CHAT, json={"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    client.post("/v1/completions", json={"model": STAND_IN_MODEL, "prompt": "hi", "max_tokens": 1})
    client.post("/v1/responses", json={"model": "sql", "input": "hi", "max_output_tokens": 1})
    chat, completion, response = engine.added
    assert (engine.lora_requests[chat].lora_name, engine.lora_requests[chat].lora_int_id) == ("chat", 2)
    assert engine.lora_requests[completion] is None
    assert engine.lora_requests[response].lora_path == "/adapters/sql"


def test_chat_completion_shape(client):
    body = client.post(CHAT, json={"model": STAND_IN_MODEL, "max_tokens": 50,
                                   "messages": [{"role": "user", "content": "Say hello"}]}).get_json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == STAND_IN_MODEL
    assert isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"] == {"role": "assistant", "content": DEFAULT_ANSWER}
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    # The stand-in tokenizer has one token per word: "user: Say hello" + "assistant:".
    assert usage["prompt_tokens"] == 4
    assert usage["completion_tokens"] == len(DEFAULT_ANSWER.split())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_completion_stops_at_max_tokens_with_length(client):
    body = client.post(CHAT, json={"model": STAND_IN_MODEL, "max_tokens": 2,
                                   "messages": [{"role": "user", "content": "x"}]}).get_json()
    assert body["choices"][0]["message"]["content"] == "Hello from"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


def test_chat_stream_shape(client):
    response = client.post(CHAT, json={"model": STAND_IN_MODEL, "max_tokens": 50, "stream": True,
                                       "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    chunks = events_of(response)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    contents = [c["choices"][0]["delta"].get("content", "") for c in chunks]
    assert "".join(contents) == DEFAULT_ANSWER
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_completion_shape(client):
    body = client.post("/v1/completions", json={"model": STAND_IN_MODEL, "prompt": "Once upon",
                                                 "max_tokens": 50}).get_json()
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    [choice] = body["choices"]
    assert choice["text"] == DEFAULT_ANSWER and choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 2
    assert body["usage"]["total_tokens"] == 2 + len(DEFAULT_ANSWER.split())


def test_completion_stream_shape(client):
    response = client.post("/v1/completions", json={"model": STAND_IN_MODEL, "prompt": "Once upon",
                                                     "max_tokens": 3, "stream": True})
    chunks = events_of(response)
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Hello from the"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_a_client_that_leaves_a_stream_aborts_the_request(make_client):
    from tests.stand_in import StandInEngine

    engine = StandInEngine(answer=" ".join(["w"] * 1000), step_delay=0.005, max_model_len=4096)
    client = make_client(make_stand_in_bridge(engine))
    response = client.post(CHAT, json={"model": STAND_IN_MODEL, "max_tokens": 1000, "stream": True,
                                       "messages": [{"role": "user", "content": "x"}]}, buffered=False)
    events = iter(response.response)
    next(events), next(events)
    response.close()  # what the WSGI server does when the client disconnects
    import gevent
    for _ in range(200):
        if engine.aborted:
            break
        gevent.sleep(0.01)
    assert len(engine.aborted) == 1
    assert not engine.has_unfinished_requests()


def test_n_choices_each_get_an_index(client):
    body = client.post(CHAT, json={"model": STAND_IN_MODEL, "max_tokens": 50, "n": 3,
                                   "messages": [{"role": "user", "content": "x"}]}).get_json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == DEFAULT_ANSWER for c in body["choices"])
    assert body["usage"]["completion_tokens"] == 3 * len(DEFAULT_ANSWER.split())


def test_n_choices_stream_each_with_role_and_finish_chunks(client):
    response = client.post(CHAT, json={"model": STAND_IN_MODEL, "max_tokens": 50, "n": 2, "stream": True,
                                       "messages": [{"role": "user", "content": "x"}]})
    chunks = events_of(response)
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert "".join(c["delta"].get("content", "") for c in mine) == DEFAULT_ANSWER
        assert [c["finish_reason"] for c in mine].count("stop") == 1
        assert mine[-1]["finish_reason"] == "stop"


def test_stream_include_usage_adds_a_last_chunk_with_the_totals(client):
    response = client.post(CHAT, json={"model": STAND_IN_MODEL, "max_tokens": 3, "stream": True,
                                       "stream_options": {"include_usage": True},
                                       "messages": [{"role": "user", "content": "x"}]})
    chunks = events_of(response)
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6,
                             "prompt_tokens_details": {"cached_tokens": 0}}


def test_stream_without_include_usage_has_no_usage_field(client):
    response = client.post(CHAT, json={"model": STAND_IN_MODEL, "max_tokens": 3, "stream": True,
                                       "messages": [{"role": "user", "content": "x"}]})
    assert all("usage" not in c for c in events_of(response))


def test_a_list_of_prompts_gives_one_choice_per_prompt_in_order(client):
    body = client.post("/v1/completions", json={"model": STAND_IN_MODEL, "max_tokens": 2, "n": 2,
                                                 "prompt": ["one", "two words", [7, 7, 7]]}).get_json()
    assert [c["index"] for c in body["choices"]] == list(range(6))
    assert all(c["text"] == "Hello from" for c in body["choices"])
    assert body["usage"]["prompt_tokens"] == 1 + 2 + 3
    assert body["usage"]["completion_tokens"] == 6 * 2


def test_echo_prepends_the_prompt(client):
    body = client.post("/v1/completions", json={"model": STAND_IN_MODEL, "max_tokens": 2, "echo": True,
                                                 "prompt": "Once upon"}).get_json()
    assert body["choices"][0]["text"] == "Once uponHello from"
