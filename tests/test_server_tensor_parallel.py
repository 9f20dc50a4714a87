"""Tensor parallel through vLLM's multiprocessing executor, inside the real server, on the real model.

TENSOR_PARALLEL_SIZE=3: the default model's 9 attention heads divide by 3 (vLLM refuses 2), and
VLLM_CPU_OMP_THREADS_BIND="0|1|0" puts the three ranks on this machine's two cores. The engine
runs in the gunicorn worker; vLLM starts one worker process per rank from it. The tests run in
file order on one server: answers first, then an engine failure, a kill -9 of the gunicorn
worker (each followed by the fresh worker's load) and last the drain, after each of which every
rank process must be gone.
"""

import os
import signal
import time
from pathlib import Path

import openai
import pytest
import requests

from engine_bridge.default_model import DEFAULT_MODEL_NAME
from tests.conftest import ServerProcess
from tests.stand_in import FAIL_MARKER_MAX_TOKENS
from tests.test_server_guards import assert_envelope, chat_body, metric, open_stream, wait_until_nothing_runs

RANKS = 3
TP_ENV = {"TENSOR_PARALLEL_SIZE": str(RANKS), "VLLM_CPU_OMP_THREADS_BIND": "0|1|0",
          # The real engine, which fails on demand (a request for 99 tokens).
          "ENGINE_FACTORY": "tests.stand_in:fail_on_marker"}
# Each rank's watcher kills it as soon as the worker is gone; the bound allows for a starved
# machine (without the watchers, the ranks outlived a killed worker by about 50 s here).
RANKS_GONE_WITHIN = 20.0
# Three ranks load the model at once on two cores: minutes when other test suites share the
# machine, over the 300 s the other servers are given.
LOAD_TIMEOUT = 900
PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a sentence about the sea."}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Name a primary colour."}],
]


# -- processes, from /proc --------------------------------------------------------------------

def children(pid: int) -> list[int]:
    """pid's child processes (all its threads' children)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def descendants(pid: int) -> list[int]:
    found, todo = [], children(pid)
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children(child)
    return found


def identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time): tells a process from a later one that reuses its pid; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has ended; only its exit status waits for its parent
        return None
    return pid, fields[19]


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
    except OSError:
        return ""


def gunicorn_worker(proc: ServerProcess) -> int:
    (worker,) = children(proc.process.pid)
    return worker


def rank_processes(worker: int) -> list[int]:
    """The vLLM executor workers (one per rank) started by the gunicorn worker; vLLM names them."""
    return [pid for pid in children(worker) if command_line(pid).startswith("VLLM::Worker_TP")]


def wait_until_gone(processes: list[tuple[int, str]], timeout: float) -> float:
    """Seconds until none of processes is alive; fails the test if some outlive timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        left = [p for p in processes if identity(p[0]) == p]
        if not left:
            return time.monotonic() - started
        time.sleep(0.1)
    left = [(pid, command_line(pid)) for pid, _ in processes if identity(pid) == (pid, _)]
    raise AssertionError(f"still running {timeout:.0f} s later: {left}")


def the_worker_and_its_processes(proc: ServerProcess) -> tuple[int, list[tuple[int, str]]]:
    """The gunicorn worker, and everything it started (ranks, multiprocessing's resource tracker)."""
    worker = gunicorn_worker(proc)
    assert len(rank_processes(worker)) == RANKS, [command_line(p) for p in children(worker)]
    return worker, [p for p in map(identity, descendants(worker)) if p is not None]


@pytest.fixture(scope="module")
def tp_server():
    proc = ServerProcess(env=TP_ENV).launch()
    try:
        proc.wait_healthy(LOAD_TIMEOUT)
    except BaseException:
        proc.stop()
        raise
    yield proc
    proc.stop()


def answers(base_url: str) -> list[str]:
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="not-needed", max_retries=0, timeout=300)
    texts = [client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=messages, temperature=0,
                                            max_tokens=24).choices[0].message.content for messages in PROMPTS]
    texts.append(client.completions.create(model=DEFAULT_MODEL_NAME, prompt="The capital of France is",
                                           temperature=0, max_tokens=12).choices[0].text)
    return texts


# -- serving ----------------------------------------------------------------------------------

def test_the_engine_runs_one_process_per_rank_under_the_gunicorn_worker(tp_server):
    worker = gunicorn_worker(tp_server)
    ranks = rank_processes(worker)
    assert sorted(command_line(p) for p in ranks) == [f"VLLM::Worker_TP{i}" for i in range(RANKS)]
    settings = [r for r in tp_server.log_records() if r.get("event") == "engine_settings"]
    assert settings[-1]["tensor_parallel_size"] == RANKS and settings[-1]["platform"] == "cpu"


def test_greedy_answers_equal_the_single_process_servers(tp_server, server):
    sharded = answers(tp_server.base_url)
    assert "Paris" in sharded[0]
    assert sharded == answers(server.base_url)


def test_streaming_gives_the_same_text(tp_server):
    client = openai.OpenAI(base_url=tp_server.base_url + "/v1", api_key="not-needed", max_retries=0, timeout=300)
    whole = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=PROMPTS[1], temperature=0,
                                           max_tokens=24)
    chunks = list(client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=PROMPTS[1], temperature=0,
                                                 max_tokens=24, stream=True))
    assert len(chunks) > 3
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_a_client_that_leaves_aborts_its_generation(tp_server):
    streams = [open_stream(tp_server.base_url, max_tokens=4000) for _ in range(2)]
    assert metric(tp_server.base_url, "vllm:num_requests_running") == 2
    for stream in streams:
        stream.close()
    wait_until_nothing_runs(tp_server.base_url, timeout=30)
    assert metric(tp_server.base_url, "vllm:num_requests_running") == 0
    response = requests.post(tp_server.base_url + "/v1/chat/completions", json=chat_body(max_tokens=8), timeout=120)
    assert response.status_code == 200


# -- the rank processes end with the engine ---------------------------------------------------

def test_an_engine_failure_ends_every_rank_and_a_fresh_worker_serves(tp_server):
    worker, processes = the_worker_and_its_processes(tp_server)
    processes.append(identity(worker))
    failing = requests.post(tp_server.base_url + "/v1/chat/completions", timeout=300,
                            json=chat_body(max_tokens=FAIL_MARKER_MAX_TOKENS))
    assert_envelope(failing, 500, "engine_failed")
    # vLLM's shutdown ends the ranks (5 s grace, SIGTERM, 4 s, SIGKILL) while the worker waits for
    # it, up to 17 s; 8.5 s and 20.8 s at load averages of 40, with the resource tracker's clean-up.
    gone = wait_until_gone(processes, timeout=45)
    print(f"engine failure: the worker and its {len(processes) - 1} processes were gone {gone:.1f} s after the 500")
    assert f"Worker (pid:{worker}) exited with code 1" in tp_server.log_path.read_text()
    tp_server.wait_healthy(LOAD_TIMEOUT)
    assert len(rank_processes(gunicorn_worker(tp_server))) == RANKS


def test_kill_9_of_the_gunicorn_worker_leaves_no_rank_behind(tp_server):
    worker, processes = the_worker_and_its_processes(tp_server)
    os.kill(worker, signal.SIGKILL)
    gone = wait_until_gone(processes, timeout=RANKS_GONE_WITHIN)
    print(f"kill -9 of the worker: its {len(processes)} processes were gone {gone:.1f} s later")
    tp_server.wait_healthy(LOAD_TIMEOUT)
    response = requests.post(tp_server.base_url + "/v1/chat/completions", json=chat_body(max_tokens=8), timeout=120)
    assert response.status_code == 200


def test_a_drain_stops_every_rank_before_the_server_exits(tp_server):
    worker, processes = the_worker_and_its_processes(tp_server)
    processes.append(identity(worker))
    stream = open_stream(tp_server.base_url, max_tokens=6)
    signalled = time.monotonic()
    tp_server.process.send_signal(signal.SIGTERM)
    rest = [line for line in stream.lines if line]
    assert rest[-1] == b"data: [DONE]" and not any(b'"error"' in line for line in rest)  # it finished
    assert tp_server.process.wait(timeout=60) == 0
    exited = time.monotonic() - signalled
    # vLLM's shutdown ended the ranks before the worker left; multiprocessing's resource tracker
    # follows as soon as the last of them has closed its pipe.
    gone = wait_until_gone(processes, timeout=5.0)
    print(f"drain: the master exited {exited:.1f} s after SIGTERM; everything was gone {gone:.1f} s after that")
    assert "engine shut down" in tp_server.log_path.read_text()
