"""Hostile bytes and hostile JSON against the real server: every answer is a 4xx envelope or a
success, never a 5xx (Hypothesis, fixed seed, bounded budget)."""

import json

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_bridge.default_model import DEFAULT_MODEL_NAME

ENDPOINTS = {
    "/v1/chat/completions": {"model": DEFAULT_MODEL_NAME, "max_tokens": 4,
                             "messages": [{"role": "user", "content": "Say hi."}]},
    "/v1/completions": {"model": DEFAULT_MODEL_NAME, "max_tokens": 4, "prompt": "Once upon a time"},
    "/tokenize": {"model": DEFAULT_MODEL_NAME, "prompt": "Once upon a time"},
    "/detokenize": {"model": DEFAULT_MODEL_NAME, "tokens": [1, 2, 3]},
}
# Every field the endpoints read, and a few they do not.
FIELDS = ["model", "messages", "prompt", "tokens", "max_tokens", "max_completion_tokens", "n", "temperature",
          "top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty", "seed",
          "stop", "stream", "stream_options", "logprobs", "top_logprobs", "echo", "response_format",
          "logit_bias", "user", "ignore_eos", "add_special_tokens", "add_generation_prompt", "tools",
          "unknown_field"]
# JSON text that parses in some decoders and not in others, or decodes to values that are not text.
HOSTILE_JSON = [
    "NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "-0", "1" + "0" * 5000,
    "18446744073709551616", "-9223372036854775809", "4294967296", "2147483648", "0.5", "-1", "1e18",
    '"\\ud800"', '"x\\udfff"', '"\\u0000"', '"\\ud83d\\ude00"', '"\\u202e"', '""', '" "',
    "[" * 3000 + "]" * 3000, '{"a":' * 200 + "1" + "}" * 200, '"' + "a" * 100_000 + '"',
    "[]", "{}", "null", "true", "[null]", "[[]]", "[-1]", "[1e999]", "[49152]", "[99999999999]",
    '[{"role": "user"}]', '[{"role": "tool", "content": "x"}]', '[{"role": "user", "content": [{"type": "image_url"}]}]',
    '{"type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": {"a": {"$ref": "#"}}}}}',
    '{"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}',
    '{"type": "json_schema", "json_schema": {"schema": {"pattern": "(((("}}}',
    '{"type": "json_object"}', '{"include_usage": "yes"}', '{"1": 1e999}', '{"-5": 10}',
]


def json_values(max_leaves=8):
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=8), inner, max_size=3), max_leaves=max_leaves)


def with_field(template: dict, name: str, raw: str) -> bytes:
    """template as JSON text, with field name set to the raw JSON text."""
    body = {k: v for k, v in template.items() if k != name}
    text = json.dumps(body)
    return (text[:-1] + (", " if body else "") + json.dumps(name) + ": " + raw + "}").encode("utf-8", "surrogatepass")


def assert_not_a_server_error(path: str, data: bytes, headers: dict | None = None) -> None:
    response = requests.post(f"{pytest.fuzz_base_url}{path}", data=data, timeout=120,
                             headers={"Content-Type": "application/json", **(headers or {})})
    text = response.text
    assert response.status_code < 500, (path, data[:300], text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, text[:500]
    elif response.headers.get("Content-Type", "").startswith("text/event-stream"):
        # A stream's errors travel as events: none may be the server's own.
        assert '"type":"server_error"' not in text, (path, data[:300], text[-500:])
        assert text.rstrip().endswith("data: [DONE]")


@pytest.fixture(scope="module", autouse=True)
def fuzz_target(short_server):
    pytest.fuzz_base_url = short_server.base_url
    yield
    # Whatever the fuzzers sent, the server still generates and its engine is healthy.
    assert requests.get(short_server.base_url + "/health", timeout=10).status_code == 200
    response = requests.post(short_server.base_url + "/v1/chat/completions", timeout=60,
                             json=ENDPOINTS["/v1/chat/completions"])
    assert response.status_code == 200, response.text
    statuses = [r["status"] for r in short_server.log_records() if r.get("event") == "request"]
    assert not [s for s in statuses if s >= 500]


SETTINGS = dict(derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@settings(max_examples=120, **SETTINGS)
@given(path=st.sampled_from(sorted(ENDPOINTS)), data=st.binary(max_size=400))
def test_raw_bytes(path, data):
    assert_not_a_server_error(path, data)


@settings(max_examples=400, **SETTINGS)
@given(path=st.sampled_from(sorted(ENDPOINTS)), name=st.sampled_from(FIELDS),
       raw=st.sampled_from(HOSTILE_JSON) | json_values().map(json.dumps))
def test_one_hostile_field(path, name, raw):
    assert_not_a_server_error(path, with_field(ENDPOINTS[path], name, raw))


NUMBERS = st.one_of(st.integers(-3, 20), st.integers(2**31 - 2, 2**31 + 2), st.integers(2**63 - 2, 2**64 + 2),
                    st.floats(-3, 3, allow_nan=False), st.sampled_from([1e-300, 1e300, 1e-7]))


@settings(max_examples=150, **SETTINGS)
@given(path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
       fields=st.dictionaries(st.sampled_from(["n", "temperature", "top_p", "top_k", "min_p", "seed",
                                               "frequency_penalty", "presence_penalty", "repetition_penalty",
                                               "logprobs", "top_logprobs", "max_tokens"]),
                              NUMBERS, max_size=5),
       flags=st.dictionaries(st.sampled_from(["stream", "echo", "ignore_eos", "logprobs"]), st.booleans(),
                             max_size=3),
       stop=st.none() | st.lists(st.text(min_size=1, max_size=5), max_size=5))
def test_valid_shapes_with_extreme_values_reach_the_engine_safely(path, fields, flags, stop):
    body = {**ENDPOINTS[path], **flags, **fields}
    if stop is not None:
        body["stop"] = stop
    assert_not_a_server_error(path, json.dumps(body).encode())
