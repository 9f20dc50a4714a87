"""Shared fixtures: a stand-in engine for edge cases, the real engine, and the real server process."""

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from engine_bridge import EngineBridge, EngineSettings
from tests.stand_in import StandInEngine, StandInTokenizer

ROOT = Path(__file__).resolve().parent.parent
STAND_IN_MODEL = "stand-in-model"
# Loading the real model takes about 10 s here; allow for a slow, busy machine.
SERVER_START_TIMEOUT = 300


def make_stand_in_bridge(engine: StandInEngine | None = None, load: bool = True) -> EngineBridge:
    engine = engine or StandInEngine()
    bridge = EngineBridge(
        EngineSettings(model="stand-in", served_model_name=STAND_IN_MODEL),
        engine_factory=lambda settings: engine,
        tokenizer_factory=lambda model: StandInTokenizer(),
    )
    bridge.engine_for_tests = engine
    if load:
        bridge.load()
    return bridge


@pytest.fixture
def stand_in_bridge():
    bridge = make_stand_in_bridge()
    yield bridge
    bridge.shutdown()


@pytest.fixture
def make_client():
    """Build a Flask test client around a bridge (stand-in unless given)."""
    from app import create_app

    bridges = []

    def build(bridge: EngineBridge | None = None, **config):
        bridge = bridge or make_stand_in_bridge()
        bridges.append(bridge)
        app = create_app({"ENGINE_BRIDGE": bridge, "TESTING": True, **config})
        return app.test_client()

    yield build
    for bridge in bridges:
        bridge.shutdown()


@pytest.fixture
def client(make_client):
    return make_client()


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, so no server outlives a killed run."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """The real gunicorn + gevent server, started as `make serve` starts it, on a loopback port."""

    def __init__(self, env: dict | None = None, command: list[str] | None = None, cwd: Path = ROOT):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"server-{self.port}.log"
        self.env = {**os.environ, **(env or {}), "HOST": "127.0.0.1", "PORT": str(self.port)}
        self.command = command or [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
        self.cwd = cwd
        self.process: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        return self.launch().wait_healthy()

    def launch(self) -> "ServerProcess":
        """Start the process and return at once (the engine loads in the background)."""
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            self.command, cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        return self

    def wait_healthy(self, timeout: float = SERVER_START_TIMEOUT) -> "ServerProcess":
        """Wait until /health says 200; raises if the server exits or takes longer than timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.base_url + "/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def log_records(self) -> list[dict]:
        """The server's log lines that are JSON objects, parsed."""
        records = []
        for line in self.log_path.read_text(errors="replace").split("\n"):
            if line.startswith("{"):
                records.append(json.loads(line))
        return records

    def request_log_line(self, request_id: str, timeout: float = 5.0) -> dict:
        """The server's log line for request_id (written when the response ends, a moment after
        the client has it all)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.log_records():
                if record.get("event") == "request" and record.get("request_id") == request_id:
                    return record
            time.sleep(0.1)
        raise AssertionError(f"no log line for request {request_id}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class RedisServer:
    """A real redis-server on a loopback port, no persistence; stop() and start() keep the port."""

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no"], stdout=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.1)
        self.process.kill()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def redis_server():
    """A real redis-server for the module's tests."""
    redis = RedisServer().start()
    yield redis
    redis.stop()


@pytest.fixture(scope="module")
def redis_url(redis_server):
    return redis_server.url


@pytest.fixture(scope="session")
def server():
    """One real server for the session, serving the default model."""
    proc = ServerProcess().start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def short_server():
    """A real server that generates at most 16 tokens per request, for the fuzzers.

    Short generations keep a fuzz run bounded; its /openapi.json says max_tokens <= 16 as well.
    """
    proc = ServerProcess(env={"MAX_OUTPUT_TOKENS": "16"}).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def real_bridge():
    """The real vLLM engine on the default model, in this process."""
    bridge = EngineBridge(EngineSettings.from_env())
    bridge.load()
    yield bridge
    bridge.shutdown()
