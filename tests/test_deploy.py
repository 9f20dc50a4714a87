"""deploy/: the server started as the systemd unit starts it, behind a real nginx with the site config."""

import http.client
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from deploy.cluster import UPSTREAM, write_nginx_config
from engine_bridge.cpu_tuning import preload_libraries
from engine_bridge.default_model import DEFAULT_MODEL_NAME
from tests.conftest import ROOT, ServerProcess, _die_with_parent, free_port

UNIT = ROOT / "deploy" / "systemd" / "vllm-flask-server.service"
TEMPLATE_UNIT = ROOT / "deploy" / "systemd" / "vllm-flask-server@.service"
INSTALL_DIR = "/opt/vllm-flask-server"
# Clients connect from this loopback address, so the server can tell them from nginx (127.0.0.1).
CLIENT_ADDRESS = "127.0.0.2"


def read_unit(path: Path) -> tuple[dict, list[str], str]:
    """The [Service] section's environment, ExecStart command and WorkingDirectory."""
    env, command, cwd = {}, [], ""
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "Environment":
            for assignment in shlex.split(value):
                name, _, setting = assignment.partition("=")
                env[name] = setting
        elif key == "ExecStart":
            command = shlex.split(value)
        elif key == "WorkingDirectory":
            cwd = value
    return env, command, cwd


class Nginx:
    """nginx with the project's site and upstream files, on loopback ports, in a folder of its own."""

    def __init__(self, folder: Path, upstream_ports: list[int]):
        self.folder = folder
        self.port = free_port()
        self.config = write_nginx_config(folder, f"127.0.0.1:{self.port}", upstream_ports)
        self.access_log = folder / "access.log"
        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"

    def start(self) -> "Nginx":
        config = str(self.config)
        check = subprocess.run([self.binary, "-t", "-p", str(self.folder), "-c", config],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.process = subprocess.Popen([self.binary, "-p", str(self.folder), "-c", config],
                                        stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError(f"nginx did not start: {(self.folder / 'error.log').read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """(server, nginx): the unit's command and environment, behind nginx."""
    env, command, cwd = read_unit(UNIT)
    assert env["TRUSTED_PROXY_COUNT"] == "1" and command[1:3] == ["-m", "engine_bridge.cpu_tuning"]
    assert command[3:] == [f"{INSTALL_DIR}/.venv/bin/gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    # As installed, with this checkout in place of /opt/vllm-flask-server and a state folder of
    # its own for HOME; HOST and PORT are the test's (as a drop-in override would set them).
    command = [part.replace(INSTALL_DIR, str(ROOT)) for part in command]
    state = tmp_path_factory.mktemp("state")
    server = ServerProcess(env={**env, "HOME": str(state)}, command=command,
                           cwd=Path(cwd.replace(INSTALL_DIR, str(ROOT)))).start()
    nginx = Nginx(tmp_path_factory.mktemp("nginx"), [server.port]).start()
    yield server, nginx
    nginx.stop()
    server.stop()


def request(nginx: Nginx, method: str, path: str, body: dict | None = None, headers: dict | None = None):
    """An HTTP connection from CLIENT_ADDRESS to nginx; returns it and the response (unread)."""
    conn = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=120, source_address=(CLIENT_ADDRESS, 0))
    payload = json.dumps(body).encode() if body is not None else None
    # Accept-Encoding as the openai SDK (httpx) sends it: a proxy that compresses streams would
    # hold their events back until a compression block fills.
    conn.request(method, path, body=payload, headers={"Content-Type": "application/json",
                                                      "Accept-Encoding": "gzip, deflate", **(headers or {})})
    return conn, conn.getresponse()


def test_streams_pass_through_nginx_event_by_event(deployed):
    server, nginx = deployed
    body = {"model": DEFAULT_MODEL_NAME, "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": 60, "ignore_eos": True, "temperature": 0, "stream": True}
    conn, response = request(nginx, "POST", "/v1/chat/completions", body)
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/event-stream")
    assert response.getheader("Content-Encoding") is None
    arrivals, events = [], []
    while True:
        line = response.readline()
        if not line:
            break
        if line.startswith(b"data: "):
            arrivals.append(time.monotonic())
            events.append(line.strip())
    conn.close()
    assert events[-1] == b"data: [DONE]"
    content = [t for t, e in zip(arrivals, events) if b'"content":"' in e and b'"role"' not in e]
    assert len(content) == 60
    # Buffered, the 60 tokens would arrive together at the end; unbuffered they arrive as the
    # engine makes them: over most of the generation time, in many separate moments.
    spread = content[-1] - content[0]
    moments = {round(t, 2) for t in content}
    print(f"60 tokens through nginx over {spread:.2f} s, in {len(moments)} distinct 10 ms slots")
    assert spread > 0.3
    assert len(moments) >= 20


def test_request_id_and_client_address_pass_through(deployed):
    server, nginx = deployed
    conn, response = request(nginx, "GET", "/v1/models", headers={"X-Request-Id": "deploy-req-1"})
    assert response.status == 200 and json.loads(response.read())["data"][0]["id"] == DEFAULT_MODEL_NAME
    conn.close()
    assert response.getheader("X-Request-Id") == "deploy-req-1"
    line = server.request_log_line("deploy-req-1")
    assert line["client"] == CLIENT_ADDRESS
    assert "request_id=deploy-req-1" in nginx.access_log.read_text()

    # No id from the client: nginx makes one, and the server logs and returns that same one.
    conn, response = request(nginx, "GET", "/health")
    response.read()
    conn.close()
    made = response.getheader("X-Request-Id")
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert server.request_log_line(made)["client"] == CLIENT_ADDRESS
    assert f"request_id={made}" in nginx.access_log.read_text()

    # A client cannot forge its address: the server trusts only the hop nginx added.
    conn, response = request(nginx, "GET", "/v1/models", headers={"X-Request-Id": "deploy-req-2",
                                                                  "X-Forwarded-For": "203.0.113.9"})
    response.read()
    conn.close()
    assert server.request_log_line("deploy-req-2")["client"] == CLIENT_ADDRESS


def test_errors_arrive_as_the_servers_envelopes(deployed):
    _, nginx = deployed
    conn, response = request(nginx, "POST", "/v1/chat/completions", {"model": DEFAULT_MODEL_NAME, "messages": []})
    assert response.status == 400
    assert json.loads(response.read())["error"]["param"] == "messages"
    conn.close()


def test_the_template_unit_serves_gpu_n_on_port_8000_plus_n(tmp_path):
    """vllm-flask-server@N: the shell in ExecStart derives CUDA_VISIBLE_DEVICES and PORT from N."""
    env, command, cwd = read_unit(TEMPLATE_UNIT)
    single_env, single_command, single_cwd = read_unit(UNIT)
    assert cwd == single_cwd and {k: v for k, v in env.items() if k != "BASE_PORT"} == \
        {k: v for k, v in single_env.items() if k != "PORT"}
    # What systemd hands the shell for instance 3: %i is the instance, $$ a literal $.
    command = [part.replace("%i", "3").replace("$$", "$") for part in command]
    # The same launcher (preloads) and gunicorn command as the single unit's.
    assert command[-1].endswith(" " + shlex.join(single_command))
    gunicorn, python = f"{INSTALL_DIR}/.venv/bin/gunicorn", f"{INSTALL_DIR}/.venv/bin/python"
    fake = tmp_path / "gunicorn"
    fake.write_text('#!/bin/sh\necho "$CUDA_VISIBLE_DEVICES $PORT $HOST $*"\n')
    fake.chmod(0o755)
    command[-1] = command[-1].replace(gunicorn, str(fake)).replace(python, sys.executable)
    shown = subprocess.run(command, env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True,
                           check=True, cwd=ROOT).stdout.split()
    assert shown == ["3", "8003", "127.0.0.1", *single_command[4:]]
    # The upstream file lists instances 0 and 1 at the same addresses.
    assert re.findall(r"server 127\.0\.0\.1:(\d+)", UPSTREAM.read_text()) == ["8000", "8001"]


def test_the_cluster_config_has_one_upstream_line_per_replica(tmp_path):
    config = write_nginx_config(tmp_path, "127.0.0.1:18999", [9101, 9102, 9103])
    upstream = (tmp_path / "upstream.conf").read_text()
    assert re.findall(r"server (\S+) max_fails=1 fail_timeout=5s;", upstream) == \
        ["127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103"]
    assert "least_conn;" in upstream
    site = (tmp_path / "site.conf").read_text()
    assert "listen 127.0.0.1:18999;" in site
    assert "proxy_next_upstream error timeout http_503 non_idempotent;" in site
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    check = subprocess.run([binary, "-t", "-p", str(tmp_path), "-c", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
def test_the_unit_preloads_tcmalloc_and_intel_openmp_into_the_worker(deployed):
    server, _ = deployed
    # What the launcher finds here: Debian's tcmalloc (make test installs it) and the venv's libiomp5.
    libraries = preload_libraries(prefix=str(ROOT / ".venv"))
    assert [Path(lib).name for lib in libraries] == ["libtcmalloc_minimal.so.4", "libiomp5.so"]
    [worker] = [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", server.log_path.read_text())]
    mapped = {line.split()[-1] for line in Path(f"/proc/{worker}/maps").read_text().splitlines()
              if len(line.split()) >= 6}
    for library in libraries:
        assert os.path.realpath(library) in mapped, library
    # vLLM's own check of the preload (its CPU worker warns when either is missing) stays quiet.
    assert "not found in LD_PRELOAD" not in server.log_path.read_text()
