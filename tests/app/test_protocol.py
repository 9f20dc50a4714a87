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


@pytest.mark.parametrize("value", [1, True, None, ["a"]])
def test_prompt_must_be_a_string(value):
    with pytest.raises(ValidationError):
        completion_request.load({"model": "m", "prompt": value})
