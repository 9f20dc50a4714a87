"""engine_bridge.tool_calls: vLLM's parsers behind plain types, and tools in a template without a tool format."""

import json

import pytest
from transformers import AutoTokenizer

from engine_bridge import RequestRejected
from engine_bridge.default_model import default_model_dir
from engine_bridge.tool_calls import (
    ToolCalling,
    hermes_messages,
    messages_for_tool_template,
    template_supports_tools,
    tool_parser_class,
)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
HERMES_OUTPUT = 'Let me look.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(default_model_dir()))


@pytest.fixture(scope="module")
def hermes():
    return tool_parser_class("hermes")


def stream(parser, tokenizer, text):
    """Feed text to parser token by token, as the engine's deltas come."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    deltas = []
    for i, token_id in enumerate(ids):
        delta = parser.parse_delta(tokenizer.decode([token_id]), [token_id], finished=i == len(ids) - 1)
        if delta is not None:
            deltas.append(delta)
    return deltas


def reassemble(deltas):
    content = "".join(d.content or "" for d in deltas)
    calls = {}
    for delta in deltas:
        for piece in delta.tool_calls:
            call = calls.setdefault(piece.index, {"id": None, "name": None, "arguments": ""})
            if piece.id is not None:
                assert call["id"] is None, "a call's id comes once"
                call["id"], call["name"] = piece.id, piece.name
            call["arguments"] += piece.arguments
    return content, [calls[i] for i in sorted(calls)]


def test_an_unknown_parser_name_is_refused():
    with pytest.raises(ValueError, match="no_such_parser"):
        tool_parser_class("no_such_parser")


def test_auto_reads_hermes_calls_whole_and_streamed(hermes, tokenizer):
    tools = ToolCalling(hermes, tokenizer, [WEATHER, TIME], "auto", True)
    assert tools.json_schema is None  # the model's own text, read afterwards
    content, calls = tools.parser().parse(HERMES_OUTPUT)
    assert content == "Let me look."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert calls[0].id.startswith("call_") and len(calls[0].id) == 29
    streamed_content, streamed = reassemble(stream(tools.parser(), tokenizer, HERMES_OUTPUT))
    assert streamed_content == "Let me look."
    assert [(c["name"], json.loads(c["arguments"])) for c in streamed] == [("get_weather", {"city": "Paris"})]
    assert streamed[0]["id"].startswith("call_")


def test_auto_without_a_call_is_all_content(hermes, tokenizer):
    tools = ToolCalling(hermes, tokenizer, [WEATHER], "auto", True)
    assert tools.parser().parse("It is sunny.") == ("It is sunny.", [])
    assert reassemble(stream(tools.parser(), tokenizer, "It is sunny.")) == ("It is sunny.", [])


def test_required_gets_vllms_array_schema_and_reads_its_output(hermes, tokenizer):
    tools = ToolCalling(hermes, tokenizer, [WEATHER, TIME], "required", True)
    schema = tools.json_schema
    assert schema["type"] == "array" and schema["minItems"] == 1 and "maxItems" not in schema
    names = [option["properties"]["name"]["enum"] for option in schema["items"]["anyOf"]]
    assert names == [["get_weather"], ["get_time"]]
    assert schema["items"]["anyOf"][0]["properties"]["parameters"] == WEATHER["function"]["parameters"]
    output = '[{"name": "get_weather", "parameters": {"city": "Rome"}}, {"name": "get_time", "parameters": {}}]'
    content, calls = tools.parser().parse(output)
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Rome"}), ("get_time", {})]
    _, streamed = reassemble(stream(tools.parser(), tokenizer, output))
    assert [(c["name"], json.loads(c["arguments"])) for c in streamed] == [("get_weather", {"city": "Rome"}),
                                                                          ("get_time", {})]
    assert ToolCalling(hermes, tokenizer, [WEATHER], "required", False).json_schema["maxItems"] == 1


def test_a_named_function_gets_its_parameters_as_the_schema(hermes, tokenizer):
    tools = ToolCalling(hermes, tokenizer, [WEATHER, TIME], {"type": "function", "function": {"name": "get_weather"}},
                        True)
    assert tools.json_schema == WEATHER["function"]["parameters"]
    content, calls = tools.parser().parse('{"city": "Oslo"}')
    assert content is None and [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city": "Oslo"}')]
    deltas = stream(tools.parser(), tokenizer, '{"city": "Oslo"}')
    first = deltas[0].tool_calls[0]
    assert first.id.startswith("call_") and first.name == "get_weather"
    assert reassemble(deltas)[1][0]["arguments"] == '{"city": "Oslo"}'
    # A function without parameters still gets a JSON object.
    named_time = ToolCalling(hermes, tokenizer, [TIME], {"type": "function", "function": {"name": "get_time"}}, True)
    assert named_time.json_schema["type"] == "object"


def test_tools_vllm_refuses_are_a_rejection_naming_tools(hermes, tokenizer):
    clash = [{"type": "function", "function": {"name": n, "parameters": {
        "type": "object", "$defs": {"x": {"type": kind}}}}} for n, kind in (("a", "string"), ("b", "integer"))]
    with pytest.raises(RequestRejected) as info:
        ToolCalling(hermes, tokenizer, clash, "required", True)
    assert info.value.param == "tools"


def test_smollm2s_template_has_no_tool_format(tokenizer):
    assert not template_supports_tools(tokenizer)

    class WithTools:
        chat_template = "{% for tool in tools %}{{ tool }}{% endfor %}"
    assert template_supports_tools(WithTools())


def test_a_conversation_with_tools_in_the_hermes_format(tokenizer):
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "not json"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "21 C"},
    ]
    plain = hermes_messages(messages, [WEATHER])
    assert [m["role"] for m in plain] == ["system", "user", "assistant", "user"]
    assert "<tools>\n" + json.dumps(WEATHER) + "\n</tools>" in plain[0]["content"]
    assert plain[2]["content"] == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
                                   '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>')
    assert plain[3]["content"] == "<tool_response>\n18 C\n</tool_response>\n<tool_response>\n21 C\n</tool_response>"
    # SmolLM2's own template renders the result; a system message of the client's keeps its text first.
    text = tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>assistant\n<tool_call>" in text and text.endswith("<|im_start|>assistant\n")
    with_system = hermes_messages([{"role": "system", "content": "Be brief."}, *messages[:1]], [WEATHER])
    assert with_system[0]["content"].startswith("Be brief.\n\n# Tools")


def test_templates_with_a_tool_format_get_arguments_as_mappings():
    messages = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}]
    assert messages_for_tool_template(messages)[0]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert messages[0]["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'  # the request is left alone
