"""The loading responder's child process on a real listening socket."""

import socket
import time

import pytest
import requests

from app.status import loading_answer
from engine_bridge.loading_responder import ResponderProcess


@pytest.fixture
def listening():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock, f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def test_it_answers_until_stopped_and_leaves_the_socket_listening(listening):
    sock, url = listening
    responder = ResponderProcess([sock.fileno()], loading_answer)
    try:
        health = requests.get(url + "/health?probe=1", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "loading"
        assert health.headers["Connection"] == "close"
        # A large body is read before the answer, so the client gets the answer, not a reset.
        refused = requests.post(url + "/v1/completions", data=b"x" * 2_000_000, timeout=10,
                                headers={"Content-Type": "application/json"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "engine_not_ready"
        assert refused.headers["Retry-After"] == "5"
        head = requests.head(url + "/health", timeout=10)
        assert head.status_code == 503 and head.content == b""
    finally:
        responder.stop()
    deadline = time.monotonic() + 10
    while not responder.reap():
        assert time.monotonic() < deadline, "the responder did not exit"
        time.sleep(0.05)
    # The worker's own socket is still open and listening: the next connection waits for it.
    client = socket.create_connection(sock.getsockname(), timeout=5)
    sock.settimeout(5)
    accepted, _ = sock.accept()
    accepted.close()
    client.close()
