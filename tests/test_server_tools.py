"""Tool calling on the real server with the real engine, through the official openai client."""

import json

import jsonschema
import openai
import pytest

from engine_bridge.default_model import DEFAULT_MODEL_NAME

MODEL = DEFAULT_MODEL_NAME
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_PARAMETERS = {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 30}},
                   "required": ["timezone"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city.",
                                            "parameters": WEATHER_PARAMETERS}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The local time in a time zone.",
                                         "parameters": TIME_PARAMETERS}}
SCHEMAS = {"get_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}
QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="not-needed", max_retries=0)


def chat(client, **kwargs):
    kwargs.setdefault("messages", QUESTION)
    kwargs.setdefault("tools", [WEATHER, TIME])
    return client.chat.completions.create(model=MODEL, temperature=0, **kwargs)


def assert_valid_call(call):
    """An OpenAI tool call whose arguments are JSON matching its function's schema."""
    assert call.type == "function" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def reassemble(chunks):
    """The content, tool calls and finish reason a stream adds up to (one choice)."""
    content, calls, finish_reasons = "", {}, []
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for piece in choice.delta.tool_calls or ():
                if piece.id is not None:
                    # Each call opens with its index, id, type and name, and arguments "".
                    assert piece.index not in calls and piece.type == "function"
                    assert piece.function.name and piece.function.arguments == ""
                    calls[piece.index] = {"id": piece.id, "name": piece.function.name, "arguments": ""}
                else:
                    assert piece.function.name is None
                    calls[piece.index]["arguments"] += piece.function.arguments
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
    return content, [calls[i] for i in sorted(calls)], finish_reasons


def test_a_named_function_is_called_with_arguments_matching_its_schema(client):
    choice = chat(client, tool_choice=NAMED, max_tokens=60).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert_valid_call(call)


def test_required_calls_match_their_schemas(client):
    choice = chat(client, tool_choice="required", parallel_tool_calls=False, max_tokens=60).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls  # parallel_tool_calls false: exactly one call
    assert_valid_call(call)


def test_required_allows_several_calls(client):
    question = [{"role": "user", "content": "What time is it in Tokyo, and what is the weather in Oslo?"}]
    choice = chat(client, messages=question, tool_choice="required", max_tokens=120).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) >= 1
    for call in choice.message.tool_calls:
        assert_valid_call(call)
    assert len({call.id for call in choice.message.tool_calls}) == len(choice.message.tool_calls)


@pytest.mark.parametrize("tool_choice", [NAMED, "required"], ids=["named", "required"])
def test_streamed_deltas_add_up_to_the_call_made_without_streaming(client, tool_choice):
    whole = chat(client, tool_choice=tool_choice, parallel_tool_calls=False, max_tokens=60).choices[0]
    chunks = list(chat(client, tool_choice=tool_choice, parallel_tool_calls=False, max_tokens=60, stream=True))
    content, calls, finish_reasons = reassemble(chunks)
    assert content == "" and finish_reasons == ["tool_calls"]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == \
           [(c.function.name, json.loads(c.function.arguments)) for c in whole.message.tool_calls]
    assert all(c["id"].startswith("call_") for c in calls)


def test_a_round_trip_call_result_answer(client):
    first = chat(client, tool_choice=NAMED, max_tokens=60)
    assistant = first.choices[0].message
    [call] = assistant.tool_calls
    history = [*QUESTION, assistant.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id,
                "content": json.dumps({"temperature": 18, "unit": "celsius", "sky": "clear"})}]
    answer = chat(client, messages=history, max_tokens=30)
    choice = answer.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.content and not choice.message.tool_calls
    # The call and its result reached the model: the prompt holds them on top of the first one's.
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens + 20
    # The same history, streamed, gives the same answer.
    streamed = list(chat(client, messages=history, max_tokens=30, stream=True))
    assert reassemble(streamed)[0] == choice.message.content


def test_auto_gives_content_or_well_formed_calls(client):
    for stream in (False, True):
        response = chat(client, tool_choice="auto", max_tokens=40, stream=stream)
        if stream:
            content, calls, finish_reasons = reassemble(list(response))
            names_and_arguments = [(c["name"], c["arguments"]) for c in calls]
        else:
            choice = response.choices[0]
            content, finish_reasons = choice.message.content, [choice.finish_reason]
            names_and_arguments = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or ()]
        assert content or names_and_arguments
        for name, arguments in names_and_arguments:
            assert name in SCHEMAS and isinstance(json.loads(arguments), dict)
        assert finish_reasons == ["tool_calls" if names_and_arguments else finish_reasons[0]]


def test_tool_choice_none_gives_plain_text(client):
    choice = chat(client, tool_choice="none", max_tokens=20).choices[0]
    assert choice.message.content and not choice.message.tool_calls
    assert choice.finish_reason in ("stop", "length")


@pytest.mark.parametrize("kwargs, param", [
    ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools[0].function.name"),
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                                      "required": "city"}}}]},
     "tools[1].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools[0].function.parameters"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_stock_price"}}}, "tool_choice.function.name"),
    ({"tools": [], "tool_choice": "required"}, "tool_choice"),
    ({"messages": [*QUESTION, {"role": "tool", "tool_call_id": "call_x", "content": "18"}]},
     "messages[1].tool_call_id"),
])
def test_bad_tool_definitions_are_a_400_naming_the_field(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, max_tokens=5, **kwargs)
    assert info.value.body["param"] == param
    assert info.value.body["type"] == "invalid_request_error"
