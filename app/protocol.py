"""Schemas of the OpenAI API (Marshmallow), kept side by side.

The request schemas validate every request; the response schemas describe what the server sends
(for /openapi.json and the tests). Fields with a shape Marshmallow has no type for carry their
JSON Schema in `json_schema`, which the OpenAPI document uses.
"""

import json
import re

import jsonschema
from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

ROLES = ("system", "user", "assistant", "tool")
MAX_STOP_SEQUENCES = 4
MAX_N = 16
MAX_PROMPTS = 128
# OpenAI's bound on logit_bias entries.
MAX_LOGIT_BIAS = 300
LOGIT_BIAS_RANGE = 100
# OpenAI's bounds on tools: at most 128 per request, names of 1-64 letters, digits, _ and -.
MAX_TOOLS = 128
FUNCTION_NAME_PATTERN = "^[a-zA-Z0-9_-]{1,64}$"
_FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
TOOL_CHOICES = ("none", "auto", "required")


class StrictFloat(fields.Float):
    """A JSON number; strings and booleans are refused as OpenAI refuses them."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValidationError("Must be a number.")
        return super()._deserialize(value, attr, data, **kwargs)


class StrictInteger(fields.Integer):
    """A JSON integer; strings, booleans and fractions are refused."""

    def __init__(self, **kwargs):
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool):
            raise ValidationError("Must be an integer.")
        return super()._deserialize(value, attr, data, **kwargs)


class StrictBoolean(fields.Boolean):
    """A JSON true or false, nothing else."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise ValidationError("Must be a boolean.")
        return value


class StrictString(fields.String):
    """A JSON string, nothing else (Marshmallow's String would stringify numbers)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise ValidationError("Must be a string.")
        return value


_TEXT_PART = {"type": "object", "required": ["type", "text"],
              "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}}
_TOKEN_IDS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}


class MessageContent(fields.Field):
    """Message content: a string, or a list of {"type": "text", "text": ...} parts, joined."""

    json_schema = {"oneOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            texts = []
            for part in value:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValidationError('Each content part must be {"type": "text", "text": "..."}.')
                texts.append(part["text"])
            return "".join(texts)
        raise ValidationError("Must be a string or a list of text parts.")


class StopSequences(fields.Field):
    """`stop`: a string or a list of up to four strings; always loaded as a tuple."""

    json_schema = {"oneOf": [{"type": "string", "minLength": 1},
                             {"type": "array", "maxItems": MAX_STOP_SEQUENCES,
                              "items": {"type": "string", "minLength": 1}}]}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise ValidationError("Must be a string or a list of strings.")
        if len(value) > MAX_STOP_SEQUENCES:
            raise ValidationError(f"At most {MAX_STOP_SEQUENCES} stop sequences are allowed.")
        if any(s == "" for s in value):
            raise ValidationError("Stop sequences must not be empty.")
        return tuple(value)


class LogitBias(fields.Field):
    """`logit_bias`: {"<token id>": bias in -100..100}; loaded as {int: float}.

    Whether each id is in the model's vocabulary is checked by the serving layer, which knows it.
    """

    json_schema = {
        "type": "object", "maxProperties": MAX_LOGIT_BIAS,
        "additionalProperties": {"type": "number", "minimum": -LOGIT_BIAS_RANGE, "maximum": LOGIT_BIAS_RANGE},
        "description": "Token id (a decimal string, within the vocabulary) -> bias added to its logit "
                       "before sampling; -100 bans the token, 100 all but forces it.",
    }

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, dict):
            raise ValidationError("Must be an object mapping token ids to biases.")
        if len(value) > MAX_LOGIT_BIAS:
            raise ValidationError(f"At most {MAX_LOGIT_BIAS} entries are allowed.")
        biases = {}
        for key, bias in value.items():
            if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 9):
                raise ValidationError(f"Keys must be token ids (non-negative integers as strings), "
                                      f"not {repr(key)[:40]}.")
            if isinstance(bias, bool) or not isinstance(bias, (int, float)):
                raise ValidationError({key: ["Must be a number."]})
            if not -LOGIT_BIAS_RANGE <= bias <= LOGIT_BIAS_RANGE:
                raise ValidationError({key: [f"Must be between -{LOGIT_BIAS_RANGE} and {LOGIT_BIAS_RANGE}."]})
            biases[int(key)] = float(bias)
        return biases


class NotSupported(fields.Field):
    """An OpenAI field this server does not implement: only its "off" value is accepted, not ignored."""

    def __init__(self, off, message, **kwargs):
        self.off = off
        self.message = message
        self.json_schema = ({"type": "array", "maxItems": 0} if off == []
                            else {"type": "string", "enum": [off, None]})
        self.json_schema["description"] = f"{message} Only {json.dumps(off)} (or null) is accepted."
        super().__init__(allow_none=True, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if value != self.off:
            raise ValidationError(self.message)
        return value


_NO_FUNCTIONS = ("The deprecated functions and function_call are not supported; send tools and tool_choice "
                 "instead.")


class FunctionName(StrictString):
    """A function's name as OpenAI allows it: 1 to 64 letters, digits, underscores or dashes."""

    json_schema = {"type": "string", "pattern": FUNCTION_NAME_PATTERN}

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if not _FUNCTION_NAME.fullmatch(value):
            raise ValidationError("Must be 1 to 64 letters, digits, underscores or dashes.")
        return value


class FunctionParameters(fields.Field):
    """A function's `parameters`: a JSON Schema for its arguments object."""

    json_schema = {"type": "object", "description": "A JSON Schema of the arguments object (its type, if "
                                                    "given, must be \"object\"); omitted: no arguments."}

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, dict):
            raise ValidationError("Must be a JSON Schema object.")
        try:
            jsonschema.validators.validator_for(value, default=jsonschema.Draft202012Validator).check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValidationError(f"Not a valid JSON Schema: {excerpt_text(exc.message)}") from None
        except Exception:  # e.g. a $schema the library cannot read, or a pattern Python cannot compile
            raise ValidationError("Not a valid JSON Schema.") from None
        if "type" in value and value["type"] != "object":
            raise ValidationError('The arguments are a JSON object: the schema\'s type must be "object".')
        return value


def excerpt_text(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ToolChoice(fields.Field):
    """`tool_choice`: "none", "auto", "required", or {"type": "function", "function": {"name": ...}}."""

    json_schema = {"oneOf": [
        {"type": "string", "enum": list(TOOL_CHOICES)},
        {"type": "object", "required": ["type", "function"], "properties": {
            "type": {"type": "string", "enum": ["function"]},
            "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}},
    ]}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            if value not in TOOL_CHOICES:
                raise ValidationError('Must be "none", "auto", "required" or {"type": "function", '
                                      '"function": {"name": ...}}.')
            return value
        if not isinstance(value, dict):
            raise ValidationError('Must be a string or {"type": "function", "function": {"name": ...}}.')
        if value.get("type") != "function":
            raise ValidationError({"type": ['Must be "function".']})
        function = value.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValidationError({"function": {"name": ["Must be the name of a function in tools."]}})
        return {"type": "function", "function": {"name": function["name"]}}


def _is_token_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)


class Prompt(fields.Field):
    """`prompt`: a string, a list of strings, a list of token ids, or a list of such lists.

    Loaded as a list of prompts, each a string or a list of token ids.
    """

    json_schema = {"oneOf": [
        {"type": "string"},
        {"type": "array", "minItems": 1, "maxItems": MAX_PROMPTS, "items": {"type": "string"}},
        _TOKEN_IDS,
        {"type": "array", "minItems": 1, "maxItems": MAX_PROMPTS, "items": _TOKEN_IDS},
    ]}

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            return [value]
        if _is_token_ids(value):
            return [value]
        if isinstance(value, list) and value and all(isinstance(p, str) or _is_token_ids(p) for p in value):
            if len(value) > MAX_PROMPTS:
                raise ValidationError(f"At most {MAX_PROMPTS} prompts are allowed in one request.")
            return value
        raise ValidationError("Must be a string, a list of strings, a list of token ids "
                              "(non-negative integers) or a list of token id lists, and not empty.")


class _OpenAISchema(Schema):
    class Meta:
        # OpenAI ignores fields it does not know; so do we (the serving layer logs them at debug).
        unknown = EXCLUDE

    # Optional fields sent as null take their default, as OpenAI treats them.
    DEFAULTS: dict = {}

    @post_load
    def _fill_defaults(self, data, **kwargs):
        for name, default in self.DEFAULTS.items():
            if data.get(name) is None:
                data[name] = default
        return data


class FunctionDefinitionSchema(_OpenAISchema):
    name = FunctionName(required=True)
    description = StrictString(allow_none=True)
    parameters = FunctionParameters(allow_none=True)
    strict = StrictBoolean(allow_none=True, metadata={
        "description": "Accepted; with tool_choice required or a named function the arguments always "
                       "match the schema, strict or not."})


class ToolSchema(_OpenAISchema):
    type = StrictString(required=True, validate=validate.OneOf(["function"]))
    function = fields.Nested(FunctionDefinitionSchema, required=True)


class CalledFunctionSchema(_OpenAISchema):
    name = StrictString(required=True)
    # A JSON text, as the model produced it (not checked: a history entry must not fail every later turn).
    arguments = StrictString(required=True)


class MessageToolCallSchema(_OpenAISchema):
    """A tool call in an assistant message of the history."""

    id = StrictString(required=True)
    type = StrictString(required=True, validate=validate.OneOf(["function"]))
    function = fields.Nested(CalledFunctionSchema, required=True)


class ChatMessageSchema(_OpenAISchema):
    role = StrictString(required=True, validate=validate.OneOf(ROLES, error="Must be one of: " + ", ".join(ROLES) + "."))
    # Required, except for an assistant message with tool_calls (null or absent there).
    content = MessageContent(allow_none=True, metadata={
        "description": "Required, except in an assistant message with tool_calls."})
    name = StrictString(allow_none=True)
    tool_calls = fields.List(fields.Nested(MessageToolCallSchema), allow_none=True,
                             metadata={"description": "Assistant messages only: the calls the model made."})
    tool_call_id = StrictString(allow_none=True, metadata={
        "description": "Tool messages only (required there): the id of the call this is the result of."})

    @validates_schema
    def _fields_of_the_role(self, data, **kwargs):
        role = data.get("role")
        if data.get("tool_calls") and role != "assistant":
            raise ValidationError("Only assistant messages may carry tool_calls.", "tool_calls")
        if data.get("tool_call_id") is not None and role != "tool":
            raise ValidationError("Only tool messages may carry tool_call_id.", "tool_call_id")
        if role == "tool" and data.get("tool_call_id") is None:
            raise ValidationError("Required in a tool message: the id of the call this is the result of.",
                                  "tool_call_id")
        if data.get("content") is None and not (role == "assistant" and data.get("tool_calls")):
            raise ValidationError("Missing data for required field.", "content")


def check_tool_results(messages: list[dict]) -> None:
    """Each tool message must answer a call of the assistant message before it, as OpenAI requires."""
    open_calls: set[str] = set()
    for i, message in enumerate(messages):
        if message["role"] == "tool":
            if message["tool_call_id"] not in open_calls:
                raise ValidationError({i: {"tool_call_id": [
                    "A tool message must answer a tool call (by its id) of the assistant message before it."]}},
                    "messages")
        elif message["role"] == "assistant" and message.get("tool_calls"):
            open_calls = {call["id"] for call in message["tool_calls"]}
        else:
            open_calls = set()


class StreamOptionsSchema(_OpenAISchema):
    include_usage = StrictBoolean(allow_none=True)
    DEFAULTS = {"include_usage": False}


class JsonSchemaSpecSchema(_OpenAISchema):
    name = StrictString(allow_none=True)
    description = StrictString(allow_none=True)
    schema = fields.Dict(required=True)
    # vLLM's structured outputs constrain every token to the schema, so strict or not, the output
    # always matches it: strict: true is honoured by construction, and false gets more than it asks.
    strict = StrictBoolean(allow_none=True, metadata={
        "description": "Accepted; the schema is always enforced by constrained decoding, strict or not."})


class ResponseFormatSchema(_OpenAISchema):
    type = StrictString(required=True, validate=validate.OneOf(("text", "json_object", "json_schema")))
    json_schema = fields.Nested(JsonSchemaSpecSchema, allow_none=True)

    @validates_schema
    def _schema_given(self, data, **kwargs):
        if data.get("type") == "json_schema" and not data.get("json_schema"):
            raise ValidationError("Required when type is json_schema.", "json_schema")


class SamplingSchema(_OpenAISchema):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model = StrictString(required=True, validate=validate.Length(min=1))
    max_tokens = StrictInteger(allow_none=True, validate=validate.Range(min=1))
    temperature = StrictFloat(allow_none=True, validate=validate.Range(min=0, max=2))
    top_p = StrictFloat(allow_none=True, validate=validate.Range(min=0, max=1, min_inclusive=False))
    frequency_penalty = StrictFloat(allow_none=True, validate=validate.Range(min=-2, max=2))
    presence_penalty = StrictFloat(allow_none=True, validate=validate.Range(min=-2, max=2))
    stream = StrictBoolean(allow_none=True)
    stream_options = fields.Nested(StreamOptionsSchema, allow_none=True)
    n = StrictInteger(allow_none=True, validate=validate.Range(min=1, max=MAX_N))
    stop = StopSequences(allow_none=True)
    seed = StrictInteger(allow_none=True, validate=validate.Range(min=-(2**63), max=2**64 - 1))
    user = StrictString(allow_none=True)
    response_format = fields.Nested(ResponseFormatSchema, allow_none=True)
    logit_bias = LogitBias(allow_none=True)
    # vLLM's extensions.
    top_k = StrictInteger(allow_none=True, validate=validate.Range(min=-1))
    min_p = StrictFloat(allow_none=True, validate=validate.Range(min=0, max=1))
    repetition_penalty = StrictFloat(allow_none=True, validate=validate.Range(min=0, max=2, min_inclusive=False))
    ignore_eos = StrictBoolean(allow_none=True)

    DEFAULTS = {
        "max_tokens": 16,
        "temperature": 1.0,
        "top_p": 1.0,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "stream": False,
        "n": 1,
        "stop": (),
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "ignore_eos": False,
    }

    @validates_schema
    def _stream_options_need_stream(self, data, **kwargs):
        if data.get("stream_options") is not None and not data.get("stream"):
            raise ValidationError("Only allowed when stream is true.", "stream_options")


class ChatCompletionRequestSchema(SamplingSchema):
    messages = fields.List(fields.Nested(ChatMessageSchema), required=True,
                           validate=validate.Length(min=1, error="Must contain at least one message."))
    # OpenAI's newer name for max_tokens; it wins when both are given.
    max_completion_tokens = StrictInteger(allow_none=True, validate=validate.Range(min=1))
    logprobs = StrictBoolean(allow_none=True)
    top_logprobs = StrictInteger(allow_none=True, validate=validate.Range(min=0, max=20))
    tools = fields.List(fields.Nested(ToolSchema), allow_none=True, validate=validate.Length(max=MAX_TOOLS))
    # Default: "auto" when there are tools, else "none" (as OpenAI).
    tool_choice = ToolChoice(allow_none=True)
    parallel_tool_calls = StrictBoolean(allow_none=True)
    # The deprecated forms are refused rather than ignored: an ordinary text answer would look as
    # if the model chose not to call a function.
    functions = NotSupported([], _NO_FUNCTIONS)
    function_call = NotSupported("none", _NO_FUNCTIONS)

    DEFAULTS = {**SamplingSchema.DEFAULTS, "logprobs": False, "tools": [], "parallel_tool_calls": True}

    @validates_schema
    def _tools_agree(self, data, **kwargs):
        tools = data.get("tools") or []
        names = set()
        for i, tool in enumerate(tools):
            name = tool["function"]["name"]
            if name in names:
                raise ValidationError({i: {"function": {"name": [f"Duplicate function name {name!r}."]}}}, "tools")
            names.add(name)
        choice = data.get("tool_choice")
        if isinstance(choice, dict) and choice["function"]["name"] not in names:
            raise ValidationError({"function": {"name": [
                f"No function named {excerpt_text(choice['function']['name'], 80)!r} in tools."]}}, "tool_choice")
        if choice == "required" and not tools:
            raise ValidationError('"required" needs tools to call.', "tool_choice")
        check_tool_results(data.get("messages") or [])

    @validates_schema
    def _top_logprobs_need_logprobs(self, data, **kwargs):
        if data.get("top_logprobs") is not None and not data.get("logprobs"):
            raise ValidationError("Only allowed when logprobs is true.", "top_logprobs")

    @post_load
    def _prefer_max_completion_tokens(self, data, **kwargs):
        if data.get("max_completion_tokens") is not None:
            data["max_tokens"] = data["max_completion_tokens"]
        if data.get("tool_choice") is None:
            data["tool_choice"] = "auto" if data.get("tools") else "none"
        return data


class CompletionRequestSchema(SamplingSchema):
    prompt = Prompt(required=True)
    # Completions may ask for no new tokens at all when echoing (scoring a text).
    max_tokens = StrictInteger(allow_none=True, validate=validate.Range(min=0))
    logprobs = StrictInteger(allow_none=True, validate=validate.Range(min=0, max=5))
    echo = StrictBoolean(allow_none=True)

    DEFAULTS = {**SamplingSchema.DEFAULTS, "echo": False}

    @validates_schema
    def _zero_tokens_only_with_echo(self, data, **kwargs):
        if data.get("max_tokens") == 0 and not data.get("echo"):
            raise ValidationError("Must be at least 1 unless echo is true.", "max_tokens")


class TokenizeRequestSchema(_OpenAISchema):
    """POST /tokenize (vLLM's shape): a prompt, or chat messages rendered with the chat template."""

    model = StrictString(allow_none=True)
    prompt = StrictString()
    messages = fields.List(fields.Nested(ChatMessageSchema),
                           validate=validate.Length(min=1, error="Must contain at least one message."))
    add_generation_prompt = StrictBoolean(allow_none=True)
    # Default: true for a prompt, false for messages (the chat template has its own).
    add_special_tokens = StrictBoolean(allow_none=True)

    DEFAULTS = {"add_generation_prompt": True}
    json_schema_rules = {"oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}]}

    @validates_schema
    def _prompt_or_messages(self, data, **kwargs):
        if ("prompt" in data) == ("messages" in data):
            raise ValidationError("Send either prompt or messages.", "prompt")
        check_tool_results(data.get("messages") or [])


class DetokenizeRequestSchema(_OpenAISchema):
    """POST /detokenize: token ids back to text."""

    model = StrictString(allow_none=True)
    tokens = fields.List(StrictInteger(validate=validate.Range(min=0)), required=True)


chat_completion_request = ChatCompletionRequestSchema()
completion_request = CompletionRequestSchema()
tokenize_request = TokenizeRequestSchema()
detokenize_request = DetokenizeRequestSchema()


# -- responses ---------------------------------------------------------------------------------
# What the server sends, for /openapi.json; nullable where OpenAI sends null.


class ErrorSchema(Schema):
    message = fields.String(required=True)
    type = fields.String(required=True)
    param = fields.String(required=True, allow_none=True)
    code = fields.String(required=True, allow_none=True)


class ErrorResponseSchema(Schema):
    """OpenAI's error envelope, for every error of every endpoint."""

    error = fields.Nested(ErrorSchema, required=True)


class PromptTokensDetailsSchema(Schema):
    cached_tokens = fields.Integer(required=True, metadata={
        "description": "Prompt tokens the engine's prefix cache already held (their KV cache was reused, "
                       "not computed again); a multiple of the engine's KV block size."})


class UsageSchema(Schema):
    prompt_tokens = fields.Integer(required=True)
    completion_tokens = fields.Integer(required=True)
    total_tokens = fields.Integer(required=True)
    prompt_tokens_details = fields.Nested(PromptTokensDetailsSchema, required=True)


class TopLogprobSchema(Schema):
    token = fields.String(required=True)
    logprob = fields.Float(required=True)
    bytes = fields.List(fields.Integer(), required=True)


class TokenLogprobSchema(TopLogprobSchema):
    top_logprobs = fields.List(fields.Nested(TopLogprobSchema), required=True)


class ChatLogprobsSchema(Schema):
    content = fields.List(fields.Nested(TokenLogprobSchema), required=True)


class CalledFunctionResponseSchema(Schema):
    name = fields.String(required=True)
    arguments = fields.String(required=True, metadata={"description": "The arguments, a JSON object as text."})


class ToolCallSchema(Schema):
    id = fields.String(required=True)
    type = fields.String(required=True, validate=validate.OneOf(["function"]))
    function = fields.Nested(CalledFunctionResponseSchema, required=True)


class AssistantMessageSchema(Schema):
    role = fields.String(required=True, validate=validate.OneOf(["assistant"]))
    content = fields.String(required=True, allow_none=True,
                            metadata={"description": "null when the model only called tools."})
    tool_calls = fields.List(fields.Nested(ToolCallSchema), metadata={"description": "Present when the model "
                                                                                    "called tools."})


class ChatChoiceSchema(Schema):
    index = fields.Integer(required=True)
    message = fields.Nested(AssistantMessageSchema, required=True)
    logprobs = fields.Nested(ChatLogprobsSchema, required=True, allow_none=True)
    finish_reason = fields.String(required=True, allow_none=True)


class _ResponseHeaderSchema(Schema):
    """What every completion and chunk starts with (serving's Call.header)."""

    id = fields.String(required=True)
    created = fields.Integer(required=True)
    model = fields.String(required=True)


class ChatCompletionSchema(_ResponseHeaderSchema):
    object = fields.String(required=True, validate=validate.OneOf(["chat.completion"]))
    choices = fields.List(fields.Nested(ChatChoiceSchema), required=True)
    usage = fields.Nested(UsageSchema, required=True)


class FunctionDeltaSchema(Schema):
    name = fields.String()
    arguments = fields.String()


class ToolCallDeltaSchema(Schema):
    """A piece of a tool call: the first of each call carries its id, type and name (arguments "")."""

    index = fields.Integer(required=True)
    id = fields.String()
    type = fields.String(validate=validate.OneOf(["function"]))
    function = fields.Nested(FunctionDeltaSchema)


class ChatDeltaSchema(Schema):
    role = fields.String(validate=validate.OneOf(["assistant"]))
    content = fields.String()
    tool_calls = fields.List(fields.Nested(ToolCallDeltaSchema))


class ChatChunkChoiceSchema(Schema):
    index = fields.Integer(required=True)
    delta = fields.Nested(ChatDeltaSchema, required=True)
    logprobs = fields.Nested(ChatLogprobsSchema, required=True, allow_none=True)
    finish_reason = fields.String(required=True, allow_none=True)


class ChatCompletionChunkSchema(_ResponseHeaderSchema):
    """One `data:` event of a chat stream."""

    object = fields.String(required=True, validate=validate.OneOf(["chat.completion.chunk"]))
    choices = fields.List(fields.Nested(ChatChunkChoiceSchema), required=True)
    usage = fields.Nested(UsageSchema, allow_none=True)


class CompletionLogprobsSchema(Schema):
    tokens = fields.List(fields.String(), required=True)
    token_logprobs = fields.List(fields.Float(allow_none=True), required=True)
    top_logprobs = fields.List(fields.Dict(keys=fields.String(), values=fields.Float(), allow_none=True),
                               required=True)
    text_offset = fields.List(fields.Integer(), required=True)


class CompletionChoiceSchema(Schema):
    text = fields.String(required=True)
    index = fields.Integer(required=True)
    logprobs = fields.Nested(CompletionLogprobsSchema, required=True, allow_none=True)
    finish_reason = fields.String(required=True, allow_none=True)


class CompletionSchema(_ResponseHeaderSchema):
    """A text completion, and (with object "text_completion" too) each `data:` event of its stream."""

    object = fields.String(required=True, validate=validate.OneOf(["text_completion"]))
    choices = fields.List(fields.Nested(CompletionChoiceSchema), required=True)
    usage = fields.Nested(UsageSchema, allow_none=True)


class ModelSchema(Schema):
    id = fields.String(required=True)
    object = fields.String(required=True, validate=validate.OneOf(["model"]))
    created = fields.Integer(required=True)
    owned_by = fields.String(required=True)
    root = fields.String(required=True, metadata={"description": "The base model."})
    parent = fields.String(required=True, allow_none=True, metadata={
        "description": "For a LoRA adapter, the base model it applies to; null for the base model."})


class ModelListSchema(Schema):
    object = fields.String(required=True, validate=validate.OneOf(["list"]))
    data = fields.List(fields.Nested(ModelSchema), required=True)


class HealthSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(
        ["healthy", "loading", "draining", "unhealthy", "stopped"]))
    timestamp = fields.String(required=True)
    version = fields.String(required=True)


class TokenizeResponseSchema(Schema):
    count = fields.Integer(required=True)
    max_model_len = fields.Integer(required=True)
    tokens = fields.List(fields.Integer(), required=True)


class DetokenizeResponseSchema(Schema):
    prompt = fields.String(required=True)
