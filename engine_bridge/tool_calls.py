"""Tool calling with vLLM's own pieces: its tool-call parsers, its JSON schema for forced calls.

The app hands over the request's `tools` and `tool_choice` as plain dicts and gets back a
ToolCalling: the JSON schema the engine must follow (for "required" and a named function) and,
per choice, a ToolCallParser that turns the generated text into content and tool calls, whole
or delta by delta. No vLLM type leaves this module.
"""

import json
import uuid
from dataclasses import dataclass

from engine_bridge.errors import RequestRejected

# Where a model's chat template has no tool format, the tools, the calls and their results are
# written in the Hermes format (as Qwen2.5's and Hermes 2 Pro's templates do), which the default
# "hermes" parser reads back.
_HERMES_TOOLS_PROMPT = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


@dataclass(frozen=True)
class ToolCall:
    """One complete tool call: arguments is a JSON text, as OpenAI sends it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a streamed tool call: the first piece of each call has its id and name."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class MessageDelta:
    """What one generation step added to a message: text, and/or pieces of tool calls."""

    content: str | None
    tool_calls: tuple[ToolCallDelta, ...] = ()


def new_tool_call_id() -> str:
    """An id in OpenAI's form: call_ and 24 letters or digits."""
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_parser_class(name: str):
    """vLLM's parser (reasoning and tools) around the tool-call parser registered under name.

    Raises ValueError for a name vLLM does not know. "required" and a named tool_choice always go
    through vLLM's JSON-schema path, so the arguments match the tool's schema whatever its
    `strict` says: vLLM's structural tags (its default for parsers with a tag format, such as
    hermes) pin the arguments only for tools marked strict.
    """
    from vllm.parser.abstract_parser import DelegatingParser
    from vllm.tool_parsers import ToolParserManager

    try:
        base = ToolParserManager.get_tool_parser(name)
    except Exception as exc:
        raise ValueError(f"unknown tool call parser {name!r}") from exc
    forced_json = type(f"JSONSchema{base.__name__}", (base,),
                       {"structural_tag_model": None, "supports_required_and_named": True})
    return type(f"{base.__name__}Parser", (DelegatingParser,), {"tool_parser_cls": forced_json})


class ToolCallParser:
    """Content and tool calls of one choice's text; one instance per choice (it keeps stream state)."""

    def __init__(self, parser, request):
        self._parser = parser
        self._request = request
        # Our own ids, one per call index, so the streamed and whole forms agree in shape.
        self._ids: dict[int, str] = {}

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """The content (None if there is none) and the tool calls in a whole generated text."""
        _, content, calls = self._parser.parse(text, self._request, enable_auto_tools=True)
        calls = [ToolCall(new_tool_call_id(), c.name, c.arguments or "{}") for c in calls or ()]
        if calls and content is not None and not content.strip():
            content = None
        return content, calls

    def parse_delta(self, text: str, token_ids, finished: bool) -> MessageDelta | None:
        """What a step's new text adds; None while the parser holds it back (a tag being read)."""
        # A prompt is passed only so that vLLM starts in its tool phase (no reasoning parser here).
        message = self._parser.parse_delta(text, list(token_ids), self._request, prompt_token_ids=[],
                                           finished=finished)
        if message is None:
            return None
        deltas = []
        for call in message.tool_calls or ():
            function = call.function
            name = getattr(function, "name", None) if function is not None else None
            arguments = (getattr(function, "arguments", None) if function is not None else None) or ""
            call_id = None
            if call.id is not None and call.index not in self._ids:
                call_id = self._ids[call.index] = new_tool_call_id()
            deltas.append(ToolCallDelta(call.index, call_id, name, arguments))
        if not message.content and not deltas:
            return None
        return MessageDelta(message.content or None, tuple(deltas))


class ToolCalling:
    """A request's tools as the engine needs them: a schema to follow, and parsers of its output."""

    def __init__(self, parser_class, tokenizer, tools: list[dict], tool_choice, parallel_tool_calls: bool):
        from pydantic import ValidationError
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        from engine_bridge.conversion import client_errors, rejection

        self._parser_class = parser_class
        self._tokenizer = tokenizer
        try:
            request = ChatCompletionRequest(messages=[], tools=tools, tool_choice=tool_choice,
                                            parallel_tool_calls=parallel_tool_calls)
            self._request = parser_class(tokenizer, request.tools).adjust_request(request)
        except ValidationError as exc:
            raise RequestRejected(f"Invalid tools: {exc.errors()[0].get('msg')}", param="tools") from exc
        except client_errors() as exc:
            rejected = rejection(exc)
            raise RequestRejected(str(rejected), param=rejected.param or "tools") from exc
        structured = self._request.structured_outputs
        # "required" and a named function: vLLM's JSON schema (an array of {name, parameters},
        # or the named function's parameters), enforced by structured outputs.
        self.json_schema: dict | None = structured.json if structured is not None else None

    def parser(self) -> ToolCallParser:
        """A fresh parser for one choice."""
        return ToolCallParser(self._parser_class(self._tokenizer, self._request.tools), self._request)


def template_supports_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template reads `tools` (and so has a tool format of its own)."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return False
    import jinja2
    import jinja2.meta

    try:
        return "tools" in jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(template))
    except jinja2.TemplateError:
        return "tools" in template


def _arguments_object(arguments) -> dict:
    """A tool call's arguments as a mapping, as chat templates expect; {} if they are not one.

    As vLLM does: a malformed history entry must not make every later turn fail.
    """
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = json.loads(arguments) if arguments else {}
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def messages_for_tool_template(messages: list[dict]) -> list[dict]:
    """Messages for a template with a tool format: tool call arguments as mappings, as HF templates expect."""
    result = []
    for message in messages:
        if message.get("tool_calls"):
            message = {**message, "tool_calls": [
                {**call, "function": {**call["function"],
                                      "arguments": _arguments_object(call["function"].get("arguments"))}}
                for call in message["tool_calls"]]}
        result.append(message)
    return result


def hermes_messages(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """Messages with only system/user/assistant text, tools and calls written in the Hermes format.

    For chat templates without a tool format: the tool definitions join the system message (one
    is added if there is none), an assistant's calls become <tool_call> blocks after its text, and
    consecutive tool results become one user message of <tool_response> blocks.
    """
    result: list[dict] = []
    previous_role = None
    for message in messages:
        role = message["role"]
        follows_tool, previous_role = previous_role == "tool", role
        if role == "assistant" and message.get("tool_calls"):
            blocks = [json.dumps({"name": c["function"]["name"],
                                  "arguments": _arguments_object(c["function"].get("arguments"))},
                                 ensure_ascii=False)
                      for c in message["tool_calls"]]
            text = "\n".join([message.get("content") or "", *(f"<tool_call>\n{b}\n</tool_call>" for b in blocks)])
            result.append({"role": "assistant", "content": text.lstrip("\n")})
        elif role == "tool":
            block = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            if follows_tool:
                result[-1]["content"] += "\n" + block
            else:
                result.append({"role": "user", "content": block})
        else:
            result.append({k: v for k, v in message.items() if k in ("role", "content", "name")})
    if tools:
        definitions = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
        tools_text = _HERMES_TOOLS_PROMPT.format(tools=definitions)
        if result and result[0]["role"] == "system":
            result[0] = {**result[0], "content": f"{result[0]['content']}\n\n{tools_text}"}
        else:
            result.insert(0, {"role": "system", "content": tools_text})
    return result
