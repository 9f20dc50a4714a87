"""The log formats: one JSON object per line, or text for people."""

import json
import logging
import sys

import pytest

from app import logs


def make_record(message="hello %s", args=("world",), fields=None, exc_info=None):
    record = logging.LogRecord("app.requests", logging.INFO, __file__, 1, message, args, exc_info)
    if fields is not None:
        record.fields = fields
    return record


def test_json_lines_carry_the_fields_at_the_top_level():
    line = logs.JsonFormatter().format(make_record(fields={"request_id": "r1", "status": 200}))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "hello world"
    assert (entry["level"], entry["logger"], entry["request_id"], entry["status"]) == ("info", "app.requests", "r1", 200)
    assert entry["time"].endswith("Z") and isinstance(entry["pid"], int)


def test_a_client_path_with_unicode_line_breaks_stays_one_line():
    # Schemathesis found it: a fuzzed path holding U+0085 split the request's record in two for
    # every reader that ends lines at Unicode breaks (Python's splitlines among them).
    path = "/v1/responses/a\x85b\u2028c\u2029d\n\u00e9"
    line = logs.JsonFormatter().format(make_record("GET %s", (path,), fields={"path": path}))
    assert len(line.splitlines()) == 1
    entry = json.loads(line)
    assert entry["message"] == "GET " + path and entry["path"] == path
    assert "\u00e9" in line  # other characters stay readable


def test_json_lines_keep_exceptions_on_one_line():
    try:
        raise ValueError("boom")
    except ValueError:
        line = logs.JsonFormatter().format(make_record(exc_info=sys.exc_info()))
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_text_lines_append_the_fields():
    line = logs.TextFormatter().format(make_record(fields={"event": "request", "status": 200, "ttft_s": 0.1}))
    assert line.endswith("app.requests: hello world status=200 ttft_s=0.1")


def test_the_format_is_chosen_by_a_setting(monkeypatch):
    monkeypatch.setenv("LOG_FORMAT", "text")
    assert logs.resolve_format() == "text"
    monkeypatch.setenv("LOG_FORMAT", "json")
    assert logs.resolve_format() == "json"
    assert logs.logging_config()["formatters"]["default"]["()"].endswith("JsonFormatter")
    monkeypatch.setenv("LOG_FORMAT", "yaml")
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logs.resolve_format()
