"""Every error, from every layer, is OpenAI's envelope with the right status."""

import pytest

from engine_bridge import EngineState
from tests.conftest import STAND_IN_MODEL, make_stand_in_bridge
from tests.stand_in import StandInEngine

CHAT = "/v1/chat/completions"


def chat_body(**overrides):
    return {"model": STAND_IN_MODEL, "messages": [{"role": "user", "content": "Hi"}], **overrides}


def assert_envelope(response, status, param=None, code=None, type_="invalid_request_error"):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == type_
    assert error["param"] == param
    assert error["code"] == code
    return error


def test_malformed_json_is_a_400(client):
    response = client.post(CHAT, data="{not json", content_type="application/json")
    assert_envelope(response, 400)


def test_a_json_body_that_is_not_an_object_is_a_400(client):
    assert_envelope(client.post(CHAT, json=[1, 2]), 400)


def test_unknown_route_is_a_404(client):
    error = assert_envelope(client.get("/v1/nothing-here"), 404, code="not_found")
    assert "/v1/nothing-here" in error["message"]


def test_wrong_method_is_a_405(client):
    assert_envelope(client.get(CHAT), 405, code="method_not_allowed")
    assert_envelope(client.post("/health"), 405, code="method_not_allowed")


def test_body_over_the_limit_is_a_413(make_client):
    client = make_client(MAX_CONTENT_LENGTH=1000)
    response = client.post(CHAT, json=chat_body(messages=[{"role": "user", "content": "x" * 5000}]))
    assert_envelope(response, 413, code="request_too_large")


def test_unknown_model_is_a_404(client):
    error = assert_envelope(client.post(CHAT, json=chat_body(model="gpt-9")), 404, param="model",
                            code="model_not_found")
    assert "gpt-9" in error["message"]


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "Hi"}]}, "model"),
    ({"model": STAND_IN_MODEL}, "messages"),
    (chat_body(messages=[]), "messages"),
    (chat_body(messages="Hi"), "messages"),
    (chat_body(messages=[{"role": "robot", "content": "Hi"}]), "messages[0].role"),
    (chat_body(messages=[{"role": "user"}]), "messages[0].content"),
    (chat_body(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": 5}]), "messages[1].content"),
    (chat_body(temperature=2.5), "temperature"),
    (chat_body(temperature="hot"), "temperature"),
    (chat_body(top_p=0), "top_p"),
    (chat_body(top_p=1.5), "top_p"),
    (chat_body(max_tokens=0), "max_tokens"),
    (chat_body(max_tokens=2.5), "max_tokens"),
    (chat_body(max_tokens=True), "max_tokens"),
    (chat_body(frequency_penalty=-3), "frequency_penalty"),
    (chat_body(presence_penalty=2.1), "presence_penalty"),
    (chat_body(stream="yes"), "stream"),
    (chat_body(model=7), "model"),
    (chat_body(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
    (chat_body(messages=[{"role": "tool", "content": "x"}]), "messages[0].tool_call_id"),
    (chat_body(n=0), "n"),
    (chat_body(n=17), "n"),
    (chat_body(stop=["a", "b", "c", "d", "e"]), "stop"),
    (chat_body(stop=[1]), "stop"),
    (chat_body(seed="42"), "seed"),
    (chat_body(logprobs=3), "logprobs"),
    (chat_body(logprobs=True, top_logprobs=21), "top_logprobs"),
    (chat_body(top_logprobs=2), "top_logprobs"),
    (chat_body(stream=True, stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
    (chat_body(stream_options={"include_usage": True}), "stream_options"),
    (chat_body(response_format={"type": "xml"}), "response_format.type"),
    (chat_body(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
     "response_format.json_schema.schema"),
    (chat_body(max_completion_tokens=0), "max_completion_tokens"),
    (chat_body(top_k=-2), "top_k"),
    (chat_body(min_p=1.5), "min_p"),
    (chat_body(repetition_penalty=0), "repetition_penalty"),
    (chat_body(ignore_eos="no"), "ignore_eos"),
    (chat_body(user=5), "user"),
    (chat_body(logit_bias=[1, 2]), "logit_bias"),
    (chat_body(logit_bias={"x": 1}), "logit_bias"),
    (chat_body(logit_bias={"-1": 1}), "logit_bias"),
    (chat_body(logit_bias={"5": 100.5}), "logit_bias.5"),
    (chat_body(logit_bias={"5": "1"}), "logit_bias.5"),
    (chat_body(logit_bias={"5": True}), "logit_bias.5"),
    (chat_body(logit_bias={str(i): 1 for i in range(301)}), "logit_bias"),
    (chat_body(logit_bias={"1000": -100}), "logit_bias.1000"),  # the stand-in's vocabulary is 0..999
    (chat_body(tools=[{"type": "function", "function": {"name": "f g"}}]), "tools[0].function.name"),
    (chat_body(tool_choice="required"), "tool_choice"),
    (chat_body(tool_choice={"type": "function", "function": {"name": "f"}}), "tool_choice.function.name"),
    (chat_body(functions=[{"name": "f", "parameters": {}}]), "functions"),
    (chat_body(function_call="auto"), "function_call"),
])
def test_invalid_chat_fields_name_the_param(client, body, param):
    error = assert_envelope(client.post(CHAT, json=body), 400, param=param)
    assert param in error["message"]


@pytest.mark.parametrize("body, param", [
    ({"model": STAND_IN_MODEL}, "prompt"),
    ({"model": STAND_IN_MODEL, "prompt": 12}, "prompt"),
    ({"model": STAND_IN_MODEL, "prompt": "x", "temperature": -0.1}, "temperature"),
    ({"model": STAND_IN_MODEL, "prompt": [[1, "a"]]}, "prompt"),
    ({"model": STAND_IN_MODEL, "prompt": "x", "logprobs": 6}, "logprobs"),
    ({"model": STAND_IN_MODEL, "prompt": "x", "logprobs": True}, "logprobs"),
    ({"model": STAND_IN_MODEL, "prompt": "x", "echo": 1}, "echo"),
    ({"model": STAND_IN_MODEL, "prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"model": STAND_IN_MODEL, "prompt": "x", "logit_bias": {"7": -101}}, "logit_bias.7"),
    ({"model": STAND_IN_MODEL, "prompt": "x", "logit_bias": {"123456789": 1}}, "logit_bias.123456789"),
    ({"model": STAND_IN_MODEL, "prompt": "x", "logit_bias": {"1234567890": 1}}, "logit_bias"),
])
def test_invalid_completion_fields_name_the_param(client, body, param):
    assert_envelope(client.post("/v1/completions", json=body), 400, param=param)


def test_max_tokens_over_the_server_limit_is_a_400(make_client):
    client = make_client(MAX_OUTPUT_TOKENS=100)
    error = assert_envelope(client.post(CHAT, json=chat_body(max_tokens=101)), 400, param="max_tokens")
    assert "100" in error["message"]
    assert_envelope(client.post(CHAT, json=chat_body(max_completion_tokens=101)), 400,
                    param="max_completion_tokens")


def test_the_default_output_limit_is_4096(client):
    assert_envelope(client.post(CHAT, json=chat_body(max_tokens=4097)), 400, param="max_tokens")


def test_prompt_over_the_context_is_a_400_with_the_counts(client):
    long_prompt = " ".join(["word"] * 300)  # the stand-in context is 256 tokens
    error = assert_envelope(client.post("/v1/completions", json={"model": STAND_IN_MODEL, "prompt": long_prompt}),
                            400, param="prompt", code="context_length_exceeded")
    assert "256" in error["message"] and "300" in error["message"]


def test_prompt_over_the_prompt_limit_is_a_400(make_client):
    client = make_client(MAX_PROMPT_TOKENS=10)
    body = chat_body(messages=[{"role": "user", "content": " ".join(["w"] * 20)}])
    assert_envelope(client.post(CHAT, json=body), 400, param="messages", code="context_length_exceeded")


def test_error_messages_quote_only_an_excerpt_of_the_input(client):
    huge_model = "m" * 10000
    error = assert_envelope(client.post(CHAT, json=chat_body(model=huge_model)), 404, param="model",
                            code="model_not_found")
    assert len(error["message"]) < 300


def test_an_uncaught_exception_is_a_500_without_a_stack_trace(make_client):
    bridge = make_stand_in_bridge()

    def explode(messages):
        raise RuntimeError("secret internal detail")

    bridge.render_chat = explode
    client = make_client(bridge)
    error = assert_envelope(client.post(CHAT, json=chat_body()), 500, type_="server_error")
    assert "secret" not in error["message"] and "Traceback" not in error["message"]


def test_requests_while_the_engine_loads_are_a_503(make_client):
    client = make_client(make_stand_in_bridge(load=False))
    response = client.post(CHAT, json=chat_body())
    assert_envelope(response, 503, type_="server_error", code="engine_not_ready")
    assert response.headers["Retry-After"]


def test_an_engine_failure_is_a_500_and_the_next_request_is_too(make_client):
    bridge = make_stand_in_bridge(StandInEngine(fail_after_steps=1))
    client = make_client(bridge)
    assert_envelope(client.post(CHAT, json=chat_body()), 500, type_="server_error", code="engine_failed")
    assert bridge.state is EngineState.FAILED
    assert_envelope(client.post(CHAT, json=chat_body()), 500, type_="server_error", code="engine_failed")


def test_an_engine_failure_mid_stream_is_an_error_event_then_done(make_client):
    client = make_client(make_stand_in_bridge(StandInEngine(fail_after_steps=2)))
    response = client.post(CHAT, json=chat_body(stream=True))
    assert response.status_code == 200
    events = [e for e in response.get_data(as_text=True).split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    import json

    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["type"] == "server_error" and error["code"] == "engine_failed"
    assert any('"content":"Hello"' in e for e in events)  # tokens before the failure arrived


def test_a_bad_request_does_not_disturb_one_in_flight(make_client):
    import gevent

    bridge = make_stand_in_bridge(StandInEngine(step_delay=0.02))
    client = make_client(bridge)
    good = gevent.spawn(client.post, CHAT, json=chat_body(max_tokens=50))
    bad = gevent.spawn(client.post, CHAT, json=chat_body(temperature=9))
    gevent.joinall([good, bad], raise_error=True)
    assert bad.value.status_code == 400
    assert good.value.status_code == 200
    assert good.value.get_json()["choices"][0]["message"]["content"] == "Hello from the stand-in engine ."


def test_only_refusals_before_any_work_are_503s(make_client):
    """A proxy may resend a 503 to another replica, so a request the server had started is never one."""
    import gevent

    engine = StandInEngine(answer=" ".join(["w"] * 1000), step_delay=0.01, max_model_len=4096)
    bridge = make_stand_in_bridge(engine)
    client = make_client(bridge)
    started = gevent.spawn(client.post, CHAT, json=chat_body(max_tokens=1000))
    while not engine.has_unfinished_requests():
        gevent.sleep(0.01)
    bridge.begin_drain()
    # Draining: a new request is refused before any work, with a 503.
    refused = client.post(CHAT, json=chat_body())
    assert_envelope(refused, 503, type_="server_error", code="engine_not_ready")
    # The drain time is up: the one that was generating ends with a 500, not a 503.
    gevent.get_hub().threadpool.apply(bridge.shutdown)
    interrupted = started.get(timeout=10)
    error = assert_envelope(interrupted, 500, type_="server_error", code="server_shutting_down")
    assert "retry" in error["message"]


def test_a_stream_cut_by_the_drain_ends_with_server_shutting_down(make_client):
    import json

    import gevent

    engine = StandInEngine(answer=" ".join(["w"] * 1000), step_delay=0.01, max_model_len=4096)
    bridge = make_stand_in_bridge(engine)
    client = make_client(bridge)
    response = client.post(CHAT, json=chat_body(max_tokens=1000, stream=True), buffered=False)
    events = iter(response.response)
    next(events)
    gevent.get_hub().threadpool.apply(bridge.shutdown)
    rest = b"".join(events).decode().split("\n\n")
    rest = [e for e in rest if e]
    assert rest[-1] == "data: [DONE]"
    error = json.loads(rest[-2].removeprefix("data: "))["error"]
    assert error["code"] == "server_shutting_down" and "shutting down" in error["message"]
