"""app.status: the loading answers say what the Flask app says, and importing it brings no Flask."""

import json
import subprocess
import sys

from app import status
from tests.conftest import ROOT, make_stand_in_bridge


def test_importing_app_for_gunicorn_does_not_import_flask():
    # gunicorn's master imports app.logs and the worker app.status before vLLM's start-up scan,
    # which Flask's request proxies break (docs/engine-notes.md).
    code = "import sys, runpy, app.status, app.logs; runpy.run_path('gunicorn.conf.py'); " \
           "print(sorted(m for m in ('flask', 'werkzeug', 'vllm', 'torch') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_loading_health_has_the_apps_body_shape(make_client):
    code, headers, body = status.loading_answer("GET", "/health")
    app_health = make_client(make_stand_in_bridge(load=False)).get("/health")
    assert code == app_health.status_code == 503
    assert headers["Content-Type"] == app_health.headers["Content-Type"]
    ours, theirs = json.loads(body), app_health.get_json()
    assert ours.keys() == theirs.keys() and ours["status"] == theirs["status"] == "loading"
    assert ours["version"] == theirs["version"]


def test_loading_generation_answer_is_the_apps_not_ready_envelope(make_client):
    code, headers, body = status.loading_answer("POST", "/v1/chat/completions")
    refused = make_client(make_stand_in_bridge(load=False)).post(
        "/v1/chat/completions", json={"model": "stand-in-model", "messages": [{"role": "user", "content": "hi"}]})
    assert code == refused.status_code == 503
    assert headers["Retry-After"] == refused.headers["Retry-After"] == "5"
    assert json.loads(body)["error"]["code"] == refused.get_json()["error"]["code"] == "engine_not_ready"
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    assert body == refused.get_data()  # byte for byte
