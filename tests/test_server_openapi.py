"""The real server's /openapi.json, and schemathesis fuzzing the live server with it."""

import subprocess
import sys
from pathlib import Path

import requests
from openapi_spec_validator import validate

from engine_bridge.default_model import DEFAULT_MODEL_NAME

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
# Checks that no response is a 5xx, and that each status, content type and JSON body is one the
# document declares; plus that invalid input (negative examples) is refused with a 4xx.
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance," \
         "negative_data_rejection"


def test_the_document_is_valid_and_describes_the_loaded_model(server):
    document = requests.get(server.base_url + "/openapi.json", timeout=10).json()
    validate(document)
    schemas = document["components"]["schemas"]
    assert schemas["ChatCompletionRequest"]["properties"]["model"]["enum"] == [DEFAULT_MODEL_NAME]
    token_ids = schemas["CompletionRequest"]["properties"]["prompt"]["oneOf"][2]["items"]
    assert token_ids["maximum"] == 49151  # SmolLM2's vocabulary: 49,152 tokens
    assert {"/health", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/responses",
            "/v1/responses/{response_id}", "/tokenize", "/detokenize", "/metrics",
            "/openapi.json"} <= set(document["paths"])
    assert schemas["ResponseRequest"]["properties"]["model"]["enum"] == [DEFAULT_MODEL_NAME]


def test_schemathesis_finds_no_server_error_and_no_undocumented_response(short_server, tmp_path):
    result = subprocess.run(
        [SCHEMATHESIS, "run", short_server.base_url + "/openapi.json", "--checks", CHECKS,
         "--max-examples", "30", "--seed", "1", "--workers", "1", "--request-timeout", "120",
         "--generation-database", "none", "--no-color"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    # The generated requests reached the engine, not only the validation in front of it.
    answered = {(r["path"], r["status"]) for r in short_server.log_records() if r.get("event") == "request"}
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/tokenize", "/detokenize"):
        assert (path, 200) in answered and (path, 400) in answered, path
