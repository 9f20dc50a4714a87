"""make cluster's shape under failure: real nginx, real Redis and two real replicas (deploy/cluster.py).

One module-scoped cluster; the tests run in file order (the cap on a fresh cluster, then the kill).
Figures measured by the failover test are printed and written to cluster-figures.json in its
folder (the README's "Scaling out" quotes a run).
"""

import json
import re
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis
import requests

from deploy.cluster import Cluster
from engine_bridge.default_model import DEFAULT_MODEL_NAME
from tests.conftest import free_port

MAX_CONCURRENT = 8
LEASE_SECONDS = 6
# A client that waits longer than this for anything calls it a hang.
CLIENT_TIMEOUT = 120
# Load requests that are running while the replica dies (never failed by the test: see below).
LOAD_THREADS = 2


def consecutive_free_ports(count: int) -> int:
    """The first of count consecutive loopback ports that are free now."""
    while True:
        base = free_port()
        if base + count < 65535 and all(_free(base + i) for i in range(1, count)):
            return base


def _free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    env = {"MAX_CONCURRENT": str(MAX_CONCURRENT), "CONCURRENCY_LEASE_SECONDS": str(LEASE_SECONDS),
           "MAX_OUTPUT_TOKENS": "128", "SSE_KEEPALIVE_SECONDS": "1", "LOG_FORMAT": "json"}
    running = Cluster(replicas=2, port=free_port(), replica_base_port=consecutive_free_ports(2),
                      redis_port=free_port(), folder=folder, env=env).start()
    try:
        running.wait_healthy()
        yield running
    finally:
        running.stop()


def chat(max_tokens: int, stream: bool = False) -> dict:
    body = {"model": DEFAULT_MODEL_NAME, "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": max_tokens, "temperature": 0}
    return {**body, "stream": True, "ignore_eos": True} if stream else body


def access_log(cluster: Cluster) -> dict[str, dict]:
    """nginx's access log by request id: status, the replicas tried (ports) and what each answered."""
    lines = {}
    for line in (cluster.folder / "access.log").read_text().splitlines():
        match = re.search(r'" (\d{3}) .*request_id=(\S+) .*upstream=(.*) upstream_status=(.*)$', line)
        if match:
            ports = [int(a.rsplit(":", 1)[1]) for a in re.split(r"[,:] ", match.group(3)) if ":" in a]
            lines[match.group(2)] = {"status": int(match.group(1)), "ports": ports,
                                     "upstream_status": match.group(4)}
    return lines


def wait_for_log(cluster: Cluster, request_ids: list[str], timeout: float = 30) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = access_log(cluster)
        if all(i in lines for i in request_ids):
            return lines
        time.sleep(0.2)
    raise AssertionError(f"nginx logged no line for some of {request_ids}")


def live_leases(cluster: Cluster) -> list[str]:
    """The concurrency cap's leases in Redis that have not expired."""
    client = redis.Redis.from_url(cluster.redis_url)
    seconds, micros = client.time()
    now_ms = seconds * 1000 + micros // 1000
    return [m.decode() for m in client.zrangebyscore("vllm-flask-server:concurrency", f"({now_ms}", "+inf")]


def test_the_cap_holds_across_replicas(cluster):
    """MAX_CONCURRENT + 2 streams at once through nginx: exactly 2 get the cap's 429, wherever they land."""
    extra = 2
    ids = [f"cap-{i}-{uuid.uuid4().hex[:6]}" for i in range(MAX_CONCURRENT + extra)]
    responses: dict[str, requests.Response] = {}

    def open_stream(request_id):
        responses[request_id] = requests.post(cluster.url + "/v1/chat/completions", json=chat(100, stream=True),
                                              headers={"X-Request-Id": request_id}, stream=True,
                                              timeout=CLIENT_TIMEOUT)

    threads = [threading.Thread(target=open_stream, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CLIENT_TIMEOUT)
    try:
        statuses = sorted(r.status_code for r in responses.values())
        assert statuses == [200] * MAX_CONCURRENT + [429] * extra
        refused = [r for r in responses.values() if r.status_code == 429]
        assert all(r.json()["error"]["code"] == "concurrency_limit_exceeded" for r in refused)
    finally:
        for response in responses.values():
            response.close()
    admitted = [i for i, r in responses.items() if r.status_code == 200]
    lines = wait_for_log(cluster, admitted)
    on_replica = {replica.port: sum(lines[i]["ports"][-1] == replica.port for i in admitted)
                  for replica in cluster.replicas}
    print(f"admitted streams per replica: {on_replica}")
    # Both replicas held streams, so no per-process count of MAX_CONCURRENT could have refused.
    assert all(count > 0 for count in on_replica.values())
    # The closed streams give their slots back.
    deadline = time.monotonic() + 30
    while live_leases(cluster) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert live_leases(cluster) == []


class Load:
    """LOAD_THREADS clients sending short chats through nginx, one after another, until stopped."""

    def __init__(self, url: str):
        self.url = url
        self.records: list[dict] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(LOAD_THREADS)]

    def start(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def _run(self, n: int) -> None:
        session = requests.Session()
        count = 0
        while not self._stop.is_set():
            count += 1
            record = {"id": f"load-{n}-{count}-{uuid.uuid4().hex[:6]}", "start": time.monotonic()}
            try:
                response = session.post(self.url + "/v1/chat/completions", json=chat(4),
                                        headers={"X-Request-Id": record["id"]}, timeout=CLIENT_TIMEOUT)
                record["status"] = response.status_code
                if response.status_code != 200:
                    record["error"] = response.text[:300]
            except requests.RequestException as exc:
                record["status"] = None
                record["error"] = repr(exc)
            record["end"] = time.monotonic()
            self.records.append(record)

    def answered(self, after: float = 0.0) -> int:
        return sum(r["status"] == 200 and r["start"] > after for r in self.records)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(CLIENT_TIMEOUT + 10)


class Stream:
    """A long stream through nginx, read to its end in a thread: how it ended and when."""

    def __init__(self, url: str):
        self.id = f"stream-{uuid.uuid4().hex[:8]}"
        self.tokens_at: list[float] = []
        self.outcome: str | None = None
        self.ended_at: float | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url,))

    def start(self) -> "Stream":
        self._thread.start()
        assert self._started.wait(CLIENT_TIMEOUT), "no token within the client timeout"
        return self

    def _read(self, url: str) -> None:
        try:
            with requests.post(url + "/v1/chat/completions", json=chat(96, stream=True), stream=True,
                               headers={"X-Request-Id": self.id}, timeout=CLIENT_TIMEOUT) as response:
                assert response.status_code == 200, response.text
                for line in response.iter_lines():
                    if line == b"data: [DONE]":
                        self.outcome = "done"
                    elif line.startswith(b"data: {") and b'"error"' in line:
                        self.outcome = "error event"
                    elif b'"content":"' in line:
                        self.tokens_at.append(time.monotonic())
                        self._started.set()
        except requests.exceptions.Timeout as exc:
            self.outcome = f"hang: {exc!r}"
        except requests.RequestException as exc:
            self.outcome = f"cut: {type(exc).__name__}"
        finally:
            self.ended_at = time.monotonic()
            self._started.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def lease_pid(lease: str) -> int:
    """The pid of the process that took lease (host:pid:id#slot)."""
    return int(lease.split(":")[1])


def group_pids(pgid: int) -> set[int]:
    """Every process in process group pgid."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            pids.add(int(stat.parent.name))
    return pids


def wait_until(condition, timeout: float, step: float = 0.1) -> float:
    """Poll condition until true; returns when (monotonic), or raises after timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout} s")
        time.sleep(step)
    return time.monotonic()


def test_kill_9_of_a_replica_under_load(cluster):
    """A replica's whole process group killed under load: nothing started after fails; it comes back."""
    victim, survivor = cluster.replicas
    load = Load(cluster.url).start()

    def served_by(replica, after: float) -> list[dict]:
        """Load requests sent after `after` that replica answered (200)."""
        lines = access_log(cluster)
        return [r for r in list(load.records) if r["start"] > after and r["status"] == 200
                and lines.get(r["id"], {}).get("ports", [None])[-1] == replica.port]

    streams: list[Stream] = []
    try:
        wait_until(lambda: load.answered() >= 2 * LOAD_THREADS, CLIENT_TIMEOUT)
        # Four long streams: least_conn spreads them over both replicas.
        streams = [Stream(cluster.url).start() for _ in range(4)]
        victim_pids = group_pids(victim.process.pid)
        killed_at = time.monotonic()
        victim.kill()
        dead_leases = [m for m in live_leases(cluster) if lease_pid(m) in victim_pids]

        # Streams from the victim end at once, cut short (the client sees an incomplete body);
        # those on the survivor go on, and so does the load. Meanwhile the victim's leases run out.
        time.sleep(max(0.0, killed_at + LEASE_SECONDS + 2 - time.monotonic()))
        dead_leases_after_lease = [m for m in live_leases(cluster) if lease_pid(m) in victim_pids]

        restarted_at = time.monotonic()
        victim.start()
        healthy_at = wait_until(victim.healthy, 600, step=0.2)
        # Rejoined: nginx gives it traffic again once its fail_timeout (5 s) has passed.
        wait_until(lambda: served_by(victim, after=healthy_at), 60, step=0.5)
    finally:
        load.stop()
        for stream in streams:
            stream.join(CLIENT_TIMEOUT)

    lines = wait_for_log(cluster, [r["id"] for r in load.records] + [s.id for s in streams])
    rejoined = min(served_by(victim, after=healthy_at), key=lambda r: r["start"])
    after_kill = [r for r in load.records if r["start"] > killed_at]
    failed_after_kill = [r for r in after_kill if r["status"] != 200]
    in_flight = [r for r in load.records if r["start"] <= killed_at < r["end"]]
    in_flight_on_victim = [r for r in in_flight if victim.port in lines[r["id"]]["ports"]]
    sent_to_dead = [r for r in after_kill if r["start"] < restarted_at and victim.port in lines[r["id"]]["ports"]]
    victim_streams = [s for s in streams if lines[s.id]["ports"][-1] == victim.port]
    survivor_streams = [s for s in streams if lines[s.id]["ports"][-1] == survivor.port]
    before = sorted(r["end"] - r["start"] for r in load.records if r["end"] < killed_at and r["status"] == 200)
    first_after = min((r["end"] for r in after_kill if r["status"] == 200), default=None)
    figures = {
        "load_requests": len(load.records),
        "requests_started_after_the_kill": len(after_kill),
        "failed_after_the_kill": len(failed_after_kill),
        "non_streamed_in_flight_on_the_victim": len(in_flight_on_victim),
        "of_which_answered_by_a_resend": sum(r["status"] == 200 for r in in_flight_on_victim),
        "requests_nginx_tried_on_the_dead_replica_first": len(sent_to_dead),
        "when_after_the_kill_s": [round(r["start"] - killed_at, 2) for r in sent_to_dead],
        "first_answer_after_the_kill_s": round(first_after - killed_at, 2) if first_after else None,
        "latency_before_the_kill_median_s": round(before[len(before) // 2], 2) if before else None,
        "latency_after_the_kill_max_s": round(max((r["end"] - r["start"] for r in after_kill), default=0), 2),
        "streams_on_the_victim": len(victim_streams),
        "victim_streams_ended_after_s": [round(s.ended_at - killed_at, 2) for s in victim_streams],
        "victim_stream_outcomes": [s.outcome for s in victim_streams],
        "streams_on_the_survivor": len(survivor_streams),
        "slots_of_the_dead_replica_at_the_kill": len(dead_leases),
        "slots_of_the_dead_replica_after_the_lease": len(dead_leases_after_lease),
        "restart_to_healthy_s": round(healthy_at - restarted_at, 1),
        "healthy_to_first_request_sent_to_it_s": round(rejoined["start"] - healthy_at, 1),
        "restart_to_first_request_answered_by_it_s": round(rejoined["end"] - restarted_at, 1),
    }
    print(json.dumps(figures, indent=1))
    (cluster.folder / "cluster-figures.json").write_text(json.dumps(figures, indent=1))

    assert failed_after_kill == [], failed_after_kill
    assert victim_streams and survivor_streams, "the four streams did not spread over both replicas"
    for stream in victim_streams:
        assert stream.outcome and stream.outcome.startswith("cut"), stream.outcome  # an error, never a hang
        assert stream.ended_at - killed_at < 10
    for stream in survivor_streams:
        assert any(t > killed_at for t in stream.tokens_at)  # undisturbed by the kill
        assert stream.outcome == "done"
    # The dead replica's slots (its streams' at least) were held at the kill and were free again
    # once CONCURRENCY_LEASE_SECONDS had passed.
    assert len(dead_leases) >= len(victim_streams)
    assert dead_leases_after_lease == []
