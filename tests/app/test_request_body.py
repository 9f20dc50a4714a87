"""Hostile request bodies: each is a 400 with OpenAI's envelope, never a 500."""

import pytest

from app.errors import APIError
from app.request_body import MAX_DEPTH, parse_json_body
from tests.conftest import STAND_IN_MODEL

CHAT = "/v1/chat/completions"


def refusal(data: bytes) -> APIError:
    with pytest.raises(APIError) as caught:
        parse_json_body(data)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"   \n", "empty"),
    (b'{"model": ', "could not parse"),
    (b'{"a": NaN}', "NaN"),
    (b'{"a": -Infinity}', "Infinity"),
    (b'{"a": 1e999}', "too large"),
    (b'{"a": ' + b"9" * 5000 + b"}", "too many digits"),
    (b'{"a": "\xff\xfe"}', "UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nested"),
])
def test_bytes_that_are_not_clean_json_are_refused(data, words):
    assert words in refusal(data).message


def test_nesting_deeper_than_the_bound_is_refused_with_its_path():
    deep = b'{"response_format": {"json_schema": {"schema": ' + b'{"a":' * MAX_DEPTH + b"1" + b"}" * (MAX_DEPTH + 3)
    error = refusal(deep)
    assert "nested" in error.message and error.param.startswith("response_format.json_schema.schema")
    shallow = b'{"a": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
    assert parse_json_body(shallow) is not None


@pytest.mark.parametrize("data, param", [
    (b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}', "messages[0].content"),
    (b'{"prompt": ["ok", "\\udfff"]}', "prompt[1]"),
    (b'{"\\ud83d": 1}', None),
    (b'"\\ud800"', None),
])
def test_lone_surrogate_escapes_are_refused_naming_the_field(data, param):
    error = refusal(data)
    assert "surrogate" in error.message
    assert error.param == param


def test_valid_unicode_passes():
    assert parse_json_body('{"a": "caf\\u00e9 \\ud83d\\ude00 ü"}'.encode()) == {"a": "café 😀 ü"}


@pytest.mark.parametrize("data", [
    b'{"model": "' + STAND_IN_MODEL.encode() + b'", "messages": [{"role": "user", "content": "\\ud800"}]}',
    b'{"model": "' + STAND_IN_MODEL.encode() + b'", "messages": [], "temperature": NaN}',
    b"\x00\x01\x02",
    b'{"a": ' * 3000,
])
def test_the_endpoints_answer_hostile_bodies_with_the_envelope(client, data):
    for path in (CHAT, "/v1/completions", "/tokenize", "/detokenize"):
        response = client.post(path, data=data, content_type="application/json")
        assert response.status_code == 400, (path, response.get_data(as_text=True))
        assert set(response.get_json()["error"]) == {"message", "type", "param", "code"}
