"""The request schemas: defaults, strict types, and what OpenAI clients send."""

import pytest
from marshmallow import ValidationError

from app.protocol import chat_completion_request, completion_request

MESSAGES = [{"role": "user", "content": "Hi"}]


def test_chat_defaults_follow_the_spec():
    req = chat_completion_request.load({"model": "m", "messages": MESSAGES})
    assert req["temperature"] == 1.0
    assert req["top_p"] == 1.0
    assert req["max_tokens"] == 16
    assert req["stream"] is False
    assert req["frequency_penalty"] == 0.0
    assert req["presence_penalty"] == 0.0


def test_null_optional_fields_take_their_defaults():
    req = chat_completion_request.load({"model": "m", "messages": MESSAGES, "temperature": None,
                                        "max_tokens": None, "stream": None})
    assert (req["temperature"], req["max_tokens"], req["stream"]) == (1.0, 16, False)


def test_unknown_fields_are_ignored():
    req = chat_completion_request.load({"model": "m", "messages": MESSAGES, "not_a_field": 1})
    assert "not_a_field" not in req


def test_content_parts_are_joined_into_text():
    req = chat_completion_request.load({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]}]})
    assert req["messages"][0]["content"] == "Hello, world"


def test_non_text_content_parts_are_refused():
    with pytest.raises(ValidationError):
        chat_completion_request.load({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})


@pytest.mark.parametrize("value", [0, 2, 0.7, 1])
def test_temperature_range_is_inclusive(value):
    assert chat_completion_request.load({"model": "m", "messages": MESSAGES, "temperature": value})["temperature"] == value


@pytest.mark.parametrize("value, loaded", [
    ("Once", ["Once"]),
    (["a", "b"], ["a", "b"]),
    ([1, 2, 3], [[1, 2, 3]]),
    ([[1, 2], [3]], [[1, 2], [3]]),
    (["a", [1]], ["a", [1]]),
])
def test_prompt_forms(value, loaded):
    assert completion_request.load({"model": "m", "prompt": value})["prompt"] == loaded


@pytest.mark.parametrize("value", [1, True, None, [], [[]], [1.5], [-1], [True], [["a"]], {"a": 1}])
def test_invalid_prompts_are_refused(value):
    with pytest.raises(ValidationError) as info:
        completion_request.load({"model": "m", "prompt": value})
    assert "prompt" in info.value.messages


def test_too_many_prompts_are_refused():
    with pytest.raises(ValidationError):
        completion_request.load({"model": "m", "prompt": ["x"] * 129})


@pytest.mark.parametrize("value, loaded", [("END", ("END",)), (["a", "b"], ("a", "b")), (None, ())])
def test_stop_forms(value, loaded):
    assert chat_completion_request.load({"model": "m", "messages": MESSAGES, "stop": value})["stop"] == loaded


@pytest.mark.parametrize("value", [["a", "b", "c", "d", "e"], [1], 5, [""]])
def test_invalid_stop_is_refused(value):
    with pytest.raises(ValidationError) as info:
        chat_completion_request.load({"model": "m", "messages": MESSAGES, "stop": value})
    assert "stop" in info.value.messages


def test_max_completion_tokens_wins_over_max_tokens():
    req = chat_completion_request.load({"model": "m", "messages": MESSAGES, "max_tokens": 5,
                                        "max_completion_tokens": 9})
    assert req["max_tokens"] == 9


def test_top_logprobs_needs_logprobs():
    with pytest.raises(ValidationError) as info:
        chat_completion_request.load({"model": "m", "messages": MESSAGES, "top_logprobs": 2})
    assert "top_logprobs" in info.value.messages


def test_stream_options_need_stream():
    with pytest.raises(ValidationError) as info:
        chat_completion_request.load({"model": "m", "messages": MESSAGES,
                                      "stream_options": {"include_usage": True}})
    assert "stream_options" in info.value.messages


def test_json_schema_format_needs_a_schema():
    with pytest.raises(ValidationError) as info:
        chat_completion_request.load({"model": "m", "messages": MESSAGES,
                                      "response_format": {"type": "json_schema"}})
    assert "response_format" in info.value.messages


def test_max_tokens_zero_only_with_echo():
    with pytest.raises(ValidationError):
        completion_request.load({"model": "m", "prompt": "x", "max_tokens": 0})
    assert completion_request.load({"model": "m", "prompt": "x", "max_tokens": 0, "echo": True})["max_tokens"] == 0


def test_user_is_accepted():
    assert chat_completion_request.load({"model": "m", "messages": MESSAGES, "user": "u-1"})["user"] == "u-1"


def test_vllm_extensions_have_neutral_defaults():
    req = completion_request.load({"model": "m", "prompt": "x"})
    assert (req["top_k"], req["min_p"], req["repetition_penalty"], req["ignore_eos"]) == (0, 0.0, 1.0, False)


def test_logit_bias_loads_as_token_ids_to_floats():
    req = completion_request.load({"model": "m", "prompt": "x", "logit_bias": {"42": -100, "7": 2.5, "0": 100}})
    assert req["logit_bias"] == {42: -100.0, 7: 2.5, 0: 100.0}
    assert completion_request.load({"model": "m", "prompt": "x", "logit_bias": None}).get("logit_bias") is None


def test_the_deprecated_function_fields_are_refused_unless_off():
    off = {"tools": [], "tool_choice": "none", "functions": [], "function_call": "none"}
    chat_completion_request.load({"model": "m", "messages": MESSAGES, **off})
    chat_completion_request.load({"model": "m", "messages": MESSAGES, **dict.fromkeys(off)})
    for field, value in (("functions", [{"name": "f"}]), ("function_call", {"name": "f"}), ("tools", {})):
        with pytest.raises(ValidationError) as info:
            chat_completion_request.load({"model": "m", "messages": MESSAGES, field: value})
        assert field in info.value.messages


def test_message_names_and_strict_json_schemas_are_kept():
    req = chat_completion_request.load({
        "model": "m", "messages": [{"role": "user", "name": "alice", "content": "Hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "strict": True}}})
    assert req["messages"][0]["name"] == "alice"
    assert req["response_format"]["json_schema"]["strict"] is True


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def chat_with(**fields):
    return chat_completion_request.load({"model": "m", "messages": MESSAGES, **fields})


def first_error(info) -> tuple[str, str]:
    """The dotted path of the first error and its message."""
    from app.errors import to_api_error

    error = to_api_error(info.value)
    return error.param, error.message


def test_tool_choice_defaults_to_auto_with_tools_and_none_without():
    assert chat_with(tools=[WEATHER])["tool_choice"] == "auto"
    assert chat_with()["tool_choice"] == "none"
    assert chat_with(tools=None, tool_choice=None)["tool_choice"] == "none"
    assert chat_with(tools=[WEATHER])["parallel_tool_calls"] is True


def test_tool_choice_forms():
    for choice in ("none", "auto", "required"):
        assert chat_with(tools=[WEATHER], tool_choice=choice)["tool_choice"] == choice
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert chat_with(tools=[WEATHER], tool_choice=named)["tool_choice"] == named
    # "auto" with no tools asks for nothing impossible: the model just answers.
    assert chat_with(tool_choice="auto")["tool_choice"] == "auto"


@pytest.mark.parametrize("fields, param", [
    ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f\n"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0].type"),
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
     "tools[1].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"required": "city"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "description": 3}}]}, "tools[0].function.description"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"tools": [WEATHER] * 129}, "tools"),
    ({"tools": WEATHER}, "tools"),
    ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
     "tool_choice.function.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function"}}, "tool_choice.function.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "code", "function": {"name": "get_weather"}}}, "tool_choice.type"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
])
def test_bad_tools_name_the_field(fields, param):
    with pytest.raises(ValidationError) as info:
        chat_with(**fields)
    assert first_error(info)[0] == param


def test_a_parameters_schema_is_checked_as_json_schema():
    ok = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}, "tags": {"type": "array"}},
          "$defs": {"x": {"type": "string"}}}
    assert chat_with(tools=[{"type": "function", "function": {"name": "f", "parameters": ok}}])
    # No type at all is an object schema too; no parameters means no arguments.
    assert chat_with(tools=[{"type": "function", "function": {"name": "f", "parameters": {"properties": {}}}}])
    assert chat_with(tools=[{"type": "function", "function": {"name": "f"}}])
    with pytest.raises(ValidationError) as info:
        chat_with(tools=[{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"n": {"type": "integer", "minimum": "zero"}}}}}])
    param, message = first_error(info)
    assert param == "tools[0].function.parameters" and "Not a valid JSON Schema" in message


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def test_a_conversation_with_tool_calls_and_results_loads():
    messages = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "18 C"}]},
                {"role": "assistant", "content": "It is 18 C."}]
    req = chat_completion_request.load({"model": "m", "messages": messages, "tools": [WEATHER]})
    assert req["messages"][1]["tool_calls"] == [CALL] and req["messages"][1]["content"] is None
    assert req["messages"][2] == {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}
    # An assistant message with calls may leave content out altogether.
    chat_completion_request.load({"model": "m", "messages": [*MESSAGES, {"role": "assistant", "tool_calls": [CALL]}]})


@pytest.mark.parametrize("messages, param", [
    ([{"role": "tool", "content": "18 C"}], "messages[0].tool_call_id"),
    ([*MESSAGES, {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}], "messages[1].tool_call_id"),
    ([*MESSAGES, {"role": "assistant", "tool_calls": [CALL]}, {"role": "user", "content": "and?"},
      {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}], "messages[3].tool_call_id"),
    ([*MESSAGES, {"role": "assistant", "tool_calls": [CALL]}, {"role": "tool", "tool_call_id": "call_2",
                                                                "content": "18 C"}], "messages[2].tool_call_id"),
    ([{"role": "user", "content": "hi", "tool_calls": [CALL]}], "messages[0].tool_calls"),
    ([{"role": "user", "content": "hi", "tool_call_id": "call_1"}], "messages[0].tool_call_id"),
    ([{"role": "assistant", "content": None}], "messages[0].content"),
    ([{"role": "assistant", "tool_calls": []}], "messages[0].content"),
    ([{"role": "tool", "tool_call_id": "call_1"}], "messages[0].content"),
    ([{"role": "assistant", "tool_calls": [{**CALL, "id": None}]}], "messages[0].tool_calls[0].id"),
    ([{"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": {"a": 1}}}]}],
     "messages[0].tool_calls[0].function.arguments"),
    ([{"role": "assistant", "tool_calls": [{**CALL, "type": "code"}]}], "messages[0].tool_calls[0].type"),
])
def test_bad_tool_messages_name_the_field(messages, param):
    with pytest.raises(ValidationError) as info:
        chat_completion_request.load({"model": "m", "messages": messages})
    assert first_error(info)[0] == param
