"""Request schemas of the OpenAI API (Marshmallow), kept side by side."""

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate

ROLES = ("system", "user", "assistant")


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


class MessageContent(fields.Field):
    """Message content: a string, or a list of {"type": "text", "text": ...} parts, joined."""

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


class _OpenAISchema(Schema):
    class Meta:
        # OpenAI ignores fields it does not know; so do we (they are logged at debug level).
        unknown = EXCLUDE

    # Optional fields sent as null take their default, as OpenAI treats them.
    DEFAULTS: dict = {}

    @post_load
    def _fill_defaults(self, data, **kwargs):
        for name, default in self.DEFAULTS.items():
            if data.get(name) is None:
                data[name] = default
        return data


class ChatMessageSchema(_OpenAISchema):
    role = StrictString(required=True, validate=validate.OneOf(ROLES))
    content = MessageContent(required=True)
    name = StrictString(allow_none=True)


class SamplingSchema(_OpenAISchema):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model = StrictString(required=True, validate=validate.Length(min=1))
    max_tokens = StrictInteger(allow_none=True, validate=validate.Range(min=1))
    temperature = StrictFloat(allow_none=True, validate=validate.Range(min=0, max=2))
    top_p = StrictFloat(allow_none=True, validate=validate.Range(min=0, max=1, min_inclusive=False))
    frequency_penalty = StrictFloat(allow_none=True, validate=validate.Range(min=-2, max=2))
    presence_penalty = StrictFloat(allow_none=True, validate=validate.Range(min=-2, max=2))
    stream = StrictBoolean(allow_none=True)

    DEFAULTS = {
        "max_tokens": 16,
        "temperature": 1.0,
        "top_p": 1.0,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "stream": False,
    }


class ChatCompletionRequestSchema(SamplingSchema):
    messages = fields.List(fields.Nested(ChatMessageSchema), required=True,
                           validate=validate.Length(min=1, error="Must contain at least one message."))


class CompletionRequestSchema(SamplingSchema):
    prompt = StrictString(required=True)


chat_completion_request = ChatCompletionRequestSchema()
completion_request = CompletionRequestSchema()
