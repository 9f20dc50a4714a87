"""The JavaScript examples in examples/js, run with Node against the real server.

Their packages (the official `openai` SDK and axios, pinned in examples/js/package-lock.json) are
installed from the npm registry with `npm ci` once, into examples/js/node_modules.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess

import pytest
from openai import OpenAI

from engine_bridge.default_model import DEFAULT_MODEL_NAME
from tests.conftest import ROOT

EXAMPLES = ROOT / "examples" / "js"


@pytest.fixture(scope="module")
def node_modules():
    """examples/js/node_modules as its package-lock.json says; `npm ci` only when the lock changed."""
    assert shutil.which("node") and shutil.which("npm"), "node and npm are needed (make test installs them)"
    lock = hashlib.sha1((EXAMPLES / "package-lock.json").read_bytes()).hexdigest()[:12]
    stamp = EXAMPLES / "node_modules" / f".installed-{lock}"
    if not stamp.exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=EXAMPLES, check=True,
                       timeout=600)
        stamp.touch()
    return EXAMPLES / "node_modules"


def run_example(script: str, server, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["node", script], cwd=EXAMPLES, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OPENAI_BASE_URL": server.base_url + "/v1", "OPENAI_API_KEY": "unused", **env})


def python_answer(server, question: str, max_tokens: int, system: str | None = None) -> str:
    """The same greedy request made with the Python SDK, for comparison."""
    client = OpenAI(base_url=server.base_url + "/v1", api_key="unused")
    messages = [{"role": "system", "content": system}] if system else []
    reply = client.chat.completions.create(model=DEFAULT_MODEL_NAME, temperature=0, max_tokens=max_tokens,
                                           messages=[*messages, {"role": "user", "content": question}])
    return reply.choices[0].message.content


def test_the_pinned_packages_are_installed(node_modules):
    for name in ("openai", "axios"):
        installed = subprocess.run(["node", "-p", f"require('./node_modules/{name}/package.json').version"],
                                   cwd=EXAMPLES, capture_output=True, text=True, check=True).stdout.strip()
        assert installed == json.loads((EXAMPLES / "package.json").read_text())["dependencies"][name]


def test_openai_sdk_chat(node_modules, server):
    result = run_example("chat.mjs", server)
    assert result.returncode == 0, result.stderr
    answer, usage = result.stdout.rstrip("\n").rsplit("\n", 1)
    assert answer == python_answer(server, "What is the capital of France?", 30)
    assert "Paris" in answer
    assert re.fullmatch(r"\[\d+ prompt \+ \d+ completion tokens\]", usage)


def test_openai_sdk_streaming_with_for_await(node_modules, server):
    result = run_example("stream.mjs", server)
    assert result.returncode == 0, result.stderr
    text, usage = result.stdout.rstrip("\n").rsplit("\n", 1)
    # Every streamed token arrived, in order: the same text as the request made in one piece.
    assert text == python_answer(server, "Tell me a short story about a robot.", 24)
    assert re.fullmatch(r"\[\d+ prompt \+ 24 completion tokens\]", usage)


def test_axios_post(node_modules, server):
    result = run_example("axios.mjs", server)
    assert result.returncode == 0, result.stderr
    answer = python_answer(server, "What is the capital of France?", 30, system="You are a helpful assistant.")
    assert result.stdout.rstrip("\n") == answer
    assert "Paris" in answer


def test_axios_shows_the_servers_error(node_modules, server):
    result = run_example("axios.mjs", server, MODEL="no-such-model")
    assert result.returncode == 1
    assert result.stderr.startswith("404 model_not_found: ")
    assert "no-such-model" in result.stderr
