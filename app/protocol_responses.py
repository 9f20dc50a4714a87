"""Schemas of OpenAI's Responses API (POST /v1/responses), beside those of app/protocol.py.

The request schema loads into the fields the shared serving code reads (max_tokens,
response_format...), so a response is generated exactly as a chat completion is.
"""

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from app.protocol import (
    MAX_TOOLS,
    TOOL_CHOICES,
    FunctionName,
    FunctionParameters,
    SamplingSchema,
    StrictBoolean,
    StrictFloat,
    StrictInteger,
    StrictString,
    _OpenAISchema,
    excerpt_text,
)

INPUT_ROLES = ("user", "system", "developer", "assistant")
# Text parts a message may carry: input_text from clients, output_text in assistant items that
# a client sends back from an earlier response.
TEXT_PART_TYPES = ("input_text", "output_text")
MAX_METADATA_KEYS = 16

_INPUT_PART = {"type": "object", "required": ["type", "text"], "properties": {
    "type": {"type": "string", "enum": list(TEXT_PART_TYPES)}, "text": {"type": "string"}}}
_INPUT_MESSAGE = {"type": "object", "required": ["role", "content"], "properties": {
    "type": {"type": "string", "enum": ["message"]},
    "role": {"type": "string", "enum": list(INPUT_ROLES)},
    "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": _INPUT_PART}]}}}
_NON_EMPTY = {"type": "string", "minLength": 1}
_FUNCTION_CALL_ITEM = {"type": "object", "required": ["type", "call_id", "name", "arguments"], "properties": {
    "type": {"type": "string", "enum": ["function_call"]}, "call_id": _NON_EMPTY, "name": _NON_EMPTY,
    "arguments": {"type": "string"}, "id": {"type": "string"}, "status": {"type": "string"}}}
_FUNCTION_CALL_OUTPUT_ITEM = {"type": "object", "required": ["type", "call_id", "output"], "properties": {
    "type": {"type": "string", "enum": ["function_call_output"]}, "call_id": _NON_EMPTY,
    "output": {"oneOf": [{"type": "string"}, {"type": "array", "items": _INPUT_PART}]}}}


def _message_text(content, path: list, key: str = "content") -> str:
    """A message's content (or a call's output, key) as one string: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValidationError(_nested(path + [key], "Must be a string or a list of input_text parts."))
    texts = []
    for i, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in TEXT_PART_TYPES:
            raise ValidationError(_nested(path + [key, i, "type"],
                                          "Only input_text (and output_text) parts are supported."))
        if not isinstance(part.get("text"), str):
            raise ValidationError(_nested(path + [key, i, "text"], "Must be a string."))
        texts.append(part["text"])
    return "".join(texts)


def _nested(path: list, message: str) -> dict:
    """Marshmallow's error dict for a message at path (e.g. [2, "role"]): what names the param."""
    error: dict | list = [message]
    for key in reversed(path):
        error = {key: error}
    return error


class ResponseInput(fields.Field):
    """`input`: a string (one user message) or a list of items; loaded as chat messages.

    function_call items become an assistant message's tool_calls (joined to the assistant message
    just before them, as chat carries text and calls in one message), function_call_output items
    tool messages: the chat template then renders them as it renders chat's.
    """

    json_schema = {"oneOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {
        "oneOf": [_INPUT_MESSAGE, _FUNCTION_CALL_ITEM, _FUNCTION_CALL_OUTPUT_ITEM]}}]}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            return [{"role": "user", "content": value}]
        if not isinstance(value, list) or not value:
            raise ValidationError("Must be a string or a non-empty list of message items.")
        messages: list[dict] = []
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise ValidationError(_nested([i], "Each item must be an object."))
            kind = item.get("type", "message")
            if kind == "function_call":
                _append_call(messages, _function_call(item, i))
            elif kind == "function_call_output":
                messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", i),
                                 "content": _output_text(item.get("output"), i)})
            elif kind == "message":
                role = item.get("role")
                if role not in INPUT_ROLES:
                    raise ValidationError(_nested([i, "role"], "Must be one of: user, system, developer, assistant."))
                if "content" not in item:
                    raise ValidationError(_nested([i, "content"], "Missing data for required field."))
                messages.append({"role": role, "content": _message_text(item["content"], [i])})
            else:
                raise ValidationError(_nested([i, "type"], f"Items of type {str(kind)[:40]!r} are not supported "
                                                           "by this server; only message, function_call and "
                                                           "function_call_output items are."))
        return messages


def _string(item: dict, key: str, index: int) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise ValidationError(_nested([index, key], "Must be a non-empty string."))
    return value


def _function_call(item: dict, index: int) -> dict:
    """A function_call item as a chat tool call."""
    for optional in ("id", "status"):  # sent back from an output item; not used
        if item.get(optional) is not None and not isinstance(item[optional], str):
            raise ValidationError(_nested([index, optional], "Must be a string."))
    arguments = item.get("arguments")
    if not isinstance(arguments, str):
        raise ValidationError(_nested([index, "arguments"], "Must be a string (the arguments as JSON text)."))
    return {"id": _string(item, "call_id", index), "type": "function",
            "function": {"name": _string(item, "name", index), "arguments": arguments}}


def _append_call(messages: list[dict], call: dict) -> None:
    """Adds call to the assistant message just before it, or to a new one."""
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _output_text(output, index: int) -> str:
    """A function_call_output's output: a string, or input_text parts joined."""
    if output is None:
        raise ValidationError(_nested([index, "output"], "Must be a string or a list of input_text parts."))
    return _message_text(output, [index], "output")


def chat_tools(tools: list[dict]) -> list[dict]:
    """Responses tools (flat) in chat's form, without the fields sent as null."""
    return [{"type": "function", "function": {k: v for k, v in tool.items() if k != "type" and v is not None}}
            for tool in tools]


def chat_tool_choice(choice):
    """tool_choice in chat's form ({"type": "function", "function": {"name": ...}} for a named one)."""
    return {"type": "function", "function": {"name": choice["name"]}} if isinstance(choice, dict) else choice


class ResponseToolSchema(_OpenAISchema):
    """A function tool, flat as the Responses API has it (chat nests it under "function")."""

    type = StrictString(required=True, validate=validate.OneOf(["function"], error='Must be "function": '
                                                                "this server offers function tools only."))
    name = FunctionName(required=True)
    description = StrictString(allow_none=True)
    parameters = FunctionParameters(allow_none=True)
    strict = StrictBoolean(allow_none=True, metadata={
        "description": "Accepted; with tool_choice required or a named function the arguments always "
                       "match the schema, strict or not."})


class ResponseToolChoice(fields.Field):
    """`tool_choice`: "none", "auto", "required", or {"type": "function", "name": ...}."""

    json_schema = {"oneOf": [
        {"type": "string", "enum": list(TOOL_CHOICES)},
        {"type": "object", "required": ["type", "name"], "properties": {
            "type": {"type": "string", "enum": ["function"]}, "name": {"type": "string"}}},
    ]}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            if value not in TOOL_CHOICES:
                raise ValidationError('Must be "none", "auto", "required" or {"type": "function", "name": ...}.')
            return value
        if not isinstance(value, dict):
            raise ValidationError('Must be a string or {"type": "function", "name": ...}.')
        if value.get("type") != "function":
            raise ValidationError({"type": ['Must be "function".']})
        if not isinstance(value.get("name"), str):
            raise ValidationError({"name": ["Must be the name of a function in tools."]})
        return {"type": "function", "name": value["name"]}


class TextFormatSchema(_OpenAISchema):
    """text.format: plain text, any JSON object, or JSON matching a schema (flat, unlike chat's)."""

    type = StrictString(required=True, validate=validate.OneOf(("text", "json_object", "json_schema")))
    name = StrictString(allow_none=True)
    description = StrictString(allow_none=True)
    schema = fields.Dict(allow_none=True)
    strict = StrictBoolean(allow_none=True, metadata={
        "description": "Accepted; the schema is always enforced by constrained decoding, strict or not."})

    @validates_schema
    def _schema_given(self, data, **kwargs):
        if data.get("type") == "json_schema" and not isinstance(data.get("schema"), dict):
            raise ValidationError("Required when type is json_schema.", "schema")


class TextConfigSchema(_OpenAISchema):
    format = fields.Nested(TextFormatSchema, allow_none=True)
    verbosity = StrictString(allow_none=True, validate=validate.OneOf(("low", "medium", "high")))


class Metadata(fields.Field):
    """Up to 16 string pairs, kept with the response and sent back."""

    json_schema = {"type": "object", "maxProperties": MAX_METADATA_KEYS,
                   "additionalProperties": {"type": "string", "maxLength": 512}}

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, dict) or len(value) > MAX_METADATA_KEYS:
            raise ValidationError(f"Must be an object of at most {MAX_METADATA_KEYS} string values.")
        for key, text in value.items():
            if len(key) > 64 or not isinstance(text, str) or len(text) > 512:
                raise ValidationError({key: ["Keys are at most 64 characters, values strings of at most 512."]})
        return value


class ResponseRequestSchema(_OpenAISchema):
    """POST /v1/responses."""

    model = StrictString(required=True, validate=validate.Length(min=1))
    input = ResponseInput(required=True)
    instructions = StrictString(allow_none=True)
    max_output_tokens = StrictInteger(allow_none=True, validate=validate.Range(min=1))
    temperature = StrictFloat(allow_none=True, validate=validate.Range(min=0, max=2))
    top_p = StrictFloat(allow_none=True, validate=validate.Range(min=0, max=1, min_inclusive=False))
    stream = StrictBoolean(allow_none=True)
    text = fields.Nested(TextConfigSchema, allow_none=True)
    previous_response_id = StrictString(allow_none=True, validate=validate.Length(min=1, max=128))
    store = StrictBoolean(allow_none=True, metadata={
        "description": "Keep the response for previous_response_id (for RESPONSE_STORE_TTL_SECONDS)."})
    metadata = Metadata(allow_none=True)
    user = StrictString(allow_none=True)
    parallel_tool_calls = StrictBoolean(allow_none=True)
    tools = fields.List(fields.Nested(ResponseToolSchema), allow_none=True, validate=validate.Length(max=MAX_TOOLS))
    # Default: "auto" when there are tools, else "none" (as OpenAI).
    tool_choice = ResponseToolChoice(allow_none=True)

    DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "stream": False, "store": True, "metadata": {},
                "parallel_tool_calls": True, "tools": []}

    @validates_schema
    def _tools_agree(self, data, **kwargs):
        names = set()
        for i, tool in enumerate(data.get("tools") or []):
            if tool["name"] in names:
                raise ValidationError({i: {"name": [f"Duplicate function name {tool['name']!r}."]}}, "tools")
            names.add(tool["name"])
        choice = data.get("tool_choice")
        if isinstance(choice, dict) and choice["name"] not in names:
            raise ValidationError({"name": [f"No function named {excerpt_text(choice['name'], 80)!r} in tools."]},
                                  "tool_choice")
        if choice == "required" and not names:
            raise ValidationError('"required" needs tools to call.', "tool_choice")

    @post_load
    def _as_sampling_request(self, data, **kwargs):
        """The fields the shared serving code reads, from the Responses API's own."""
        text_format = (data.get("text") or {}).get("format") or {"type": "text"}
        data["text_format"] = text_format
        data["response_format"] = {"type": text_format["type"]}
        if text_format["type"] == "json_schema":
            data["response_format"]["json_schema"] = {"name": text_format.get("name"),
                                                      "schema": text_format["schema"]}
        data["max_tokens"] = data.get("max_output_tokens")
        if data.get("tool_choice") is None:
            data["tool_choice"] = "auto" if data.get("tools") else "none"
        sampling_defaults = {name: value for name, value in SamplingSchema.DEFAULTS.items()
                             if name not in ("max_tokens", "temperature", "top_p", "stream")}
        for name, value in sampling_defaults.items():
            data.setdefault(name, value)
        return data


response_request = ResponseRequestSchema()


# -- responses ---------------------------------------------------------------------------------


class OutputTextSchema(Schema):
    type = fields.String(required=True, validate=validate.OneOf(["output_text"]))
    text = fields.String(required=True)
    annotations = fields.List(fields.Dict(), required=True)
    logprobs = fields.List(fields.Dict())


class OutputItemSchema(Schema):
    """An output item: the assistant's message, or a call of one of the request's functions."""

    type = fields.String(required=True, validate=validate.OneOf(["message", "function_call"]))
    id = fields.String(required=True, metadata={"description": "msg_... for a message, fc_... for a call."})
    status = fields.String(required=True, validate=validate.OneOf(["in_progress", "completed", "incomplete"]))
    role = fields.String(validate=validate.OneOf(["assistant"]), metadata={"description": "message only."})
    content = fields.List(fields.Nested(OutputTextSchema), metadata={"description": "message only."})
    call_id = fields.String(metadata={"description": "function_call only: the id a function_call_output "
                                                     "item answers (call_...)."})
    name = fields.String(metadata={"description": "function_call only: the function's name."})
    arguments = fields.String(metadata={"description": "function_call only: the arguments, a JSON object as "
                                                       "text (empty while it is being generated)."})


class InputTokensDetailsSchema(Schema):
    cached_tokens = fields.Integer(required=True)


class OutputTokensDetailsSchema(Schema):
    reasoning_tokens = fields.Integer(required=True)


class ResponseUsageSchema(Schema):
    input_tokens = fields.Integer(required=True)
    input_tokens_details = fields.Nested(InputTokensDetailsSchema, required=True)
    output_tokens = fields.Integer(required=True)
    output_tokens_details = fields.Nested(OutputTokensDetailsSchema, required=True)
    total_tokens = fields.Integer(required=True)


class IncompleteDetailsSchema(Schema):
    reason = fields.String(required=True, validate=validate.OneOf(["max_output_tokens"]))


class ResponseErrorSchema(Schema):
    code = fields.String(required=True, allow_none=True)
    message = fields.String(required=True)


class ResponseSchema(Schema):
    """A response: what POST /v1/responses answers, and what its stream's events carry."""

    id = fields.String(required=True)
    object = fields.String(required=True, validate=validate.OneOf(["response"]))
    created_at = fields.Integer(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["in_progress", "completed", "incomplete"]))
    error = fields.Nested(ResponseErrorSchema, required=True, allow_none=True)
    incomplete_details = fields.Nested(IncompleteDetailsSchema, required=True, allow_none=True)
    instructions = fields.String(required=True, allow_none=True)
    max_output_tokens = fields.Integer(required=True, allow_none=True)
    model = fields.String(required=True)
    output = fields.List(fields.Nested(OutputItemSchema), required=True)
    parallel_tool_calls = fields.Boolean(required=True)
    previous_response_id = fields.String(required=True, allow_none=True)
    store = fields.Boolean(required=True)
    temperature = fields.Float(required=True)
    top_p = fields.Float(required=True)
    text = fields.Dict(required=True)
    tool_choice = fields.Raw(required=True, metadata={
        "description": '"none", "auto", "required" or {"type": "function", "name": ...}, as requested.'})
    tools = fields.List(fields.Dict(), required=True, metadata={"description": "The request's tools."})
    truncation = fields.String(required=True)
    metadata = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    user = fields.String(required=True, allow_none=True)
    usage = fields.Nested(ResponseUsageSchema, required=True, allow_none=True)


class ResponseStreamEventSchema(Schema):
    """One event of a response stream: `event: <type>` then `data: {"type": <type>, ...}`."""

    sse_description = ("Server-Sent Events: `event: <type>` and `data: <ResponseStreamEvent>` per event, "
                       "numbered by sequence_number, ending with response.completed, response.incomplete "
                       "or error (no [DONE]); `: keep-alive` comments while waiting.")

    type = fields.String(required=True, validate=validate.OneOf([
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.completed",
        "response.incomplete", "error"]))
    sequence_number = fields.Integer(required=True)
    response = fields.Nested(ResponseSchema)
    output_index = fields.Integer()
    content_index = fields.Integer()
    item_id = fields.String()
    item = fields.Nested(OutputItemSchema)
    part = fields.Nested(OutputTextSchema)
    delta = fields.String()
    text = fields.String()
    arguments = fields.String(metadata={"description": "response.function_call_arguments.done: all of them."})
    logprobs = fields.List(fields.Dict())
    code = fields.String(allow_none=True)
    message = fields.String()
    param = fields.String(allow_none=True)


class ResponseDeletedSchema(Schema):
    id = fields.String(required=True)
    object = fields.String(required=True, validate=validate.OneOf(["response.deleted"]))
    deleted = fields.Boolean(required=True)
