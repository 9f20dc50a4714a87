"""ENGINE_CORE=process: vLLM's engine core in a process of its own, under the real gunicorn + gevent worker.

The engine thread keeps its role (add, step, abort), through vLLM's multiprocessing client; the
core process is a child of the worker. These tests check that it serves, aborts, fails the way
the in-process core does (the worker exits and gunicorn starts a fresh one), and that it never
outlives its worker, even one killed with SIGKILL.
"""

import os
import re
import signal
import time

import psutil
import pytest
import requests

from engine_bridge.default_model import DEFAULT_MODEL_NAME
from tests.conftest import ServerProcess
from tests.test_server_guards import metric, open_stream, wait_until_nothing_runs

# Generous: the suite shares two cores with other servers, each restart loads the model again, and
# a process engine core imports vLLM and torch twice more (vLLM spawns the core and its CPU worker).
RESTART_TIMEOUT = 900


@pytest.fixture(scope="module")
def process_core():
    proc = ServerProcess(env={"ENGINE_CORE": "process"}).launch().wait_healthy(RESTART_TIMEOUT)
    yield proc
    proc.stop()


def current_worker(proc: ServerProcess) -> int:
    return int(re.findall(r"Booting worker with pid: (\d+)", proc.log_path.read_text())[-1])


def engine_cores(worker: int) -> list[psutil.Process]:
    """The worker's children that run vLLM's engine core (vLLM names the process VLLM::EngineCore)."""
    try:
        children = psutil.Process(worker).children()
    except psutil.NoSuchProcess:
        return []
    cores = []
    for child in children:
        try:
            if "EngineCore" in " ".join(child.cmdline()) + child.name():
                cores.append(child)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):  # a helper process that just ended
            pass
    return cores


def chat(proc: ServerProcess, **overrides) -> requests.Response:
    body = {"model": DEFAULT_MODEL_NAME, "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "temperature": 0, "max_tokens": 12, **overrides}
    return requests.post(proc.base_url + "/v1/chat/completions", json=body, timeout=120, stream=bool(body.get("stream")))


def wait_for_fresh_worker(proc: ServerProcess, old_worker: int) -> int:
    """Wait until gunicorn has replaced old_worker and the fresh one's engine is ready; its pid."""
    deadline = time.monotonic() + RESTART_TIMEOUT
    while time.monotonic() < deadline:
        worker = current_worker(proc)
        if worker != old_worker:
            try:
                if requests.get(proc.base_url + "/health", timeout=2).status_code == 200:
                    return worker
            except requests.RequestException:
                pass
        time.sleep(0.5)
    raise AssertionError(f"no fresh worker ready in {RESTART_TIMEOUT} s:\n{proc.log_tail()}")


def wait_gone(processes: list[psutil.Process], timeout: float = 60) -> list[psutil.Process]:
    """Those of processes still alive after timeout (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    alive = processes
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    return alive


def test_the_engine_core_runs_in_a_child_of_the_worker_and_streams(process_core):
    worker = current_worker(process_core)
    assert len(engine_cores(worker)) == 1
    reply = chat(process_core)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == "The capital of France is Paris."
    stream = chat(process_core, stream=True, max_tokens=20, ignore_eos=True, stream_options={"include_usage": True})
    assert stream.status_code == 200
    events = [line for line in stream.iter_lines() if line.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]"
    assert len(events) >= 4  # a token with no text of its own goes out with the next one's text
    assert b'"completion_tokens":20' in events[-2].replace(b" ", b"")
    assert "engine_core=process" in process_core.log_path.read_text()


def test_a_client_that_leaves_aborts_its_request_in_the_engine_core(process_core):
    streams = [open_stream(process_core.base_url, max_tokens=4000) for _ in range(2)]
    assert metric(process_core.base_url, "vllm:num_requests_running") == 2
    for stream in streams:
        stream.close()
    # Seconds, not the minutes 2 x 4,000 tokens would take without the abort (a busy machine's bound).
    wait_until_nothing_runs(process_core.base_url, timeout=30)
    assert metric(process_core.base_url, "vllm:num_requests_running") == 0
    assert chat(process_core).status_code == 200


def test_an_engine_core_that_dies_fails_its_requests_and_a_fresh_worker_takes_over(process_core):
    worker = current_worker(process_core)
    [core] = engine_cores(worker)
    stream = open_stream(process_core.base_url, max_tokens=4000)
    core.send_signal(signal.SIGKILL)
    # The stream in flight ends with an error event, then [DONE], as with an in-process failure.
    rest = [line for line in stream.lines if line.startswith(b"data: ")]
    assert rest[-1] == b"data: [DONE]" and b'"error"' in rest[-2]
    fresh = wait_for_fresh_worker(process_core, worker)
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
    assert len(engine_cores(fresh)) == 1
    assert chat(process_core).json()["choices"][0]["message"]["content"] == "The capital of France is Paris."
    assert '"phase": "serving"' in process_core.log_path.read_text()


def test_the_engine_core_does_not_outlive_a_worker_killed_with_sigkill(process_core):
    worker = current_worker(process_core)
    cores = engine_cores(worker)
    assert len(cores) == 1
    # Its own children too (vLLM's CPU worker process, which watches the core).
    family = cores + cores[0].children(recursive=True)
    os.kill(worker, signal.SIGKILL)
    assert wait_gone(family) == []
    # gunicorn's master forks a fresh worker, as for any dead worker (not waited for here).
