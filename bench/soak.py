"""`make soak`: the real server under mixed traffic at the spec's rate, and what it left behind.

python -m bench.soak [--duration 600] [--rate 1000] [--warmup 60] [--out-dir bench/results]

Starts the server as `make serve` does (gunicorn + gevent + the real engine on the default model,
API keys on), sends a warm-up, then `--duration` seconds of mixed traffic (cheap calls, bad inputs,
short and long generations, streams, n > 1, clients that leave early, bursts over the concurrency
cap) at `--rate` requests a minute, and writes bench/results/soak-<date>.json and .md: outcomes by
kind and status, 5xx, requests without exactly one log line, latency per minute, the worker's
memory, the engine's queue at the end. See bench/README.md.
"""

import argparse
import contextlib
import http.client
import json
import os
import random
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from app.config import Config
from bench import soak_report
from bench.run import RESULTS_DIR, machine, output_stem
from bench.servers import BASE_ENV, HOST, MODEL_NAME, OurServer, default_model_dir

# The server's own defaults, which the soak does not change: 1000 requests a minute per client
# (moving window) and 100 generations at once.
RATE_LIMIT = Config.RATE_LIMIT
MAX_CONCURRENT = Config.MAX_CONCURRENT
# Four API keys, used in turn: each client then sends about a quarter of the spec's 1000 a minute,
# well inside its own RATE_LIMIT, so a 429 rate_limit_exceeded would be a bug, not the plan.
API_KEYS = tuple(f"soak-key-{i}" for i in range(4))
# A burst: this many streamed chats sent at the same moment, 50 over the cap.
BURST_SIZE = MAX_CONCURRENT + 50
BURST_TOKENS = 8
# One burst for every this many seconds of traffic (at least one per phase).
BURST_EVERY_S = 150
# Client threads for the steady traffic (a burst brings its own BURST_SIZE threads).
CLIENT_THREADS = 160
# A response that has sent nothing for this long is given up (a non-streamed long generation
# sends nothing until it is done; on a busy 2-core machine that took minutes).
READ_TIMEOUT_S = 600
# A stream still going after this long is given up (keep-alive comments would keep it open forever).
STREAM_DEADLINE_S = 900
# After the traffic: how long to wait for every request's log line and for the engine to empty.
SETTLE_TIMEOUT_S = 60
MEMORY_EVERY_S = 5

OK = "200 ok"
LEFT = "left early"
CAP = "429 concurrency_limit_exceeded"
TRANSPORT = "transport error"


@dataclass(frozen=True)
class Kind:
    """One kind of request in the mix, with the one outcome it must get."""

    name: str
    # Share of the steady traffic, in percent.
    weight: float
    method: str
    path: str
    body: dict | bytes | None = None
    expect: str = OK
    # Choices a generation must return (0: not a generation).
    n: int = 0
    stream: bool = False
    # "after_tokens": read two tokens of the stream, then hang up; "before_response": hang up
    # while the server is still generating a non-streamed answer.
    leave: str | None = None
    key: str | None = "good"
    # Holds a concurrency slot while it runs, so it may meet the cap while a burst fills it.
    takes_slot: bool = False
    # At most this many tokens generated (sizes the mix to what the CPU can do, see below).
    tokens: int = 0


def _chat(content: str, max_tokens: int, **extra) -> dict:
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            **extra}


def _completion(prompt: str, max_tokens: int, **extra) -> dict:
    return {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, **extra}


# The mix. The 2-core CPU generates about 100-150 tokens/s in all, and 1000 requests a minute is
# about 17 a second, so on average a request may ask for about 5 tokens: half the traffic is
# cheap (models, tokenize, bad inputs), most generations are 4-6 tokens, and the long ones are
# few. Expected load: ~4.2 tokens a request x ~16 requests/s = ~70 tokens/s, plus the bursts.
GENERATION = dict(takes_slot=True)
KINDS = (
    Kind("health", 4, "GET", "/health", key=None),
    Kind("models", 12, "GET", "/v1/models"),
    Kind("tokenize", 8, "POST", "/tokenize", {"prompt": "How many tokens is this sentence?"}),
    Kind("detokenize", 4, "POST", "/detokenize", {"tokens": [504, 3458, 282, 4649, 314]}),
    Kind("invalid_param", 7, "POST", "/v1/chat/completions", _chat("Hi", 4, temperature=5),
         expect="400 invalid_request_error"),
    Kind("unknown_model", 4, "POST", "/v1/chat/completions", {**_chat("Hi", 4), "model": "no-such-model"},
         expect="404 model_not_found"),
    Kind("bad_key", 4, "GET", "/v1/models", key="wrong-key", expect="401 invalid_api_key"),
    Kind("malformed_json", 3, "POST", "/v1/chat/completions", b'{"model": "SmolLM2', expect="400 invalid_request_error"),
    Kind("wrong_method", 3, "GET", "/v1/chat/completions", expect="405 method_not_allowed"),
    # Prompt + max_tokens over the model's context: the body is built from its max_model_len.
    Kind("context_too_long", 2, "POST", "/v1/completions", expect="400 context_length_exceeded", **GENERATION),
    Kind("chat", 17, "POST", "/v1/chat/completions", _chat("Name a colour.", 6, temperature=0.7),
         n=1, tokens=6, **GENERATION),
    Kind("chat_stream", 13, "POST", "/v1/chat/completions",
         _chat("Name a fruit.", 6, stream=True, stream_options={"include_usage": True}),
         n=1, stream=True, tokens=6, **GENERATION),
    Kind("completion", 6, "POST", "/v1/completions", _completion("The capital of France is", 6, temperature=0),
         n=1, tokens=6, **GENERATION),
    Kind("completion_stream", 4, "POST", "/v1/completions", _completion("Once upon a time", 6, stream=True),
         n=1, stream=True, tokens=6, **GENERATION),
    Kind("chat_n3", 3, "POST", "/v1/chat/completions", _chat("Say a number.", 4, n=3), n=3, tokens=12,
         **GENERATION),
    Kind("completion_n2_stream", 2, "POST", "/v1/completions", _completion("1, 2, 3,", 6, n=2, stream=True),
         n=2, stream=True, tokens=12, **GENERATION),
    Kind("leave_stream", 3, "POST", "/v1/chat/completions",
         _chat("Tell me a long story.", 128, stream=True, ignore_eos=True), n=1, stream=True,
         leave="after_tokens", expect=LEFT, tokens=4, **GENERATION),
    Kind("leave_waiting", 0.5, "POST", "/v1/chat/completions", _chat("Tell me a story.", 48, ignore_eos=True),
         n=1, leave="before_response", expect=LEFT, tokens=48, **GENERATION),
    Kind("long_stream", 0.2, "POST", "/v1/chat/completions",
         _chat("Write an essay about the sea.", 256, stream=True, ignore_eos=True), n=1, stream=True,
         tokens=256, **GENERATION),
    Kind("long_completion", 0.2, "POST", "/v1/completions",
         _completion("A history of the world:", 128, ignore_eos=True), n=1, tokens=128, **GENERATION),
)
BURST = Kind("burst", 0, "POST", "/v1/chat/completions",
             _chat("Count to ten.", BURST_TOKENS, stream=True, ignore_eos=True), n=1, stream=True,
             tokens=BURST_TOKENS, **GENERATION)
ALL_KINDS = {kind.name: kind for kind in (*KINDS, BURST)}
# Outcomes a kind may get besides its own: the burst is meant to meet the cap.
ALSO_EXPECTED = {"burst": {CAP}}
# How long a "before_response" client waits before it hangs up.
LEAVE_AFTER_S = 0.3


@dataclass
class Sent:
    """One request as the client saw it."""

    request_id: str
    kind: str
    phase: str
    # Seconds since the phase started: when it was due, when it went out, when it ended.
    due: float
    start: float = 0.0
    end: float = 0.0
    status: int | None = None
    outcome: str = ""
    detail: str = ""
    # Set afterwards: the request overlapped a burst (a generation may then meet the cap).
    in_burst: bool = False
    log: dict | None = field(default=None, repr=False)

    def row(self) -> dict:
        return {"id": self.request_id, "kind": self.kind, "phase": self.phase, "due": round(self.due, 3),
                "start": round(self.start, 3), "latency_ms": round((self.end - self.start) * 1000, 1),
                "status": self.status, "outcome": self.outcome, "detail": self.detail, "in_burst": self.in_burst}


class Client:
    """Sends one request of a kind on its own connection and classifies what came back."""

    def __init__(self, port: int, max_model_len: int):
        self.port = port
        self.max_model_len = max_model_len
        self._turn = 0

    def _key(self) -> str:
        self._turn += 1  # a race here only changes which key a request uses
        return API_KEYS[self._turn % len(API_KEYS)]

    def request_parts(self, kind: Kind, request_id: str) -> tuple[dict, bytes | None]:
        headers = {"X-Request-Id": request_id}
        if kind.key == "good":
            headers["Authorization"] = f"Bearer {self._key()}"
        elif kind.key:
            headers["Authorization"] = f"Bearer {kind.key}"
        body = kind.body
        if kind.name == "context_too_long":
            # A prompt that fits alone but not with its max_tokens.
            body = {"model": MODEL_NAME, "prompt": [504] * (self.max_model_len - 100), "max_tokens": 200}
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        if body is not None:
            headers["Content-Type"] = "application/json"
        return headers, body

    def connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=READ_TIMEOUT_S)
        conn.connect()
        return conn

    def send(self, kind: Kind, sent: Sent, clock, conn: http.client.HTTPConnection | None = None) -> Sent:
        """Run one exchange (on conn if already connected), filling sent in."""
        headers, body = self.request_parts(kind, sent.request_id)
        sent.start = clock()
        try:
            conn = conn or self.connect()
            sock = conn.sock
            try:
                conn.request(kind.method, kind.path, body=body, headers=headers)
                if kind.leave == "before_response":
                    sock.settimeout(LEAVE_AFTER_S)
                    try:
                        response = conn.getresponse()
                    except socket.timeout:
                        sent.outcome = LEFT
                        return sent
                    sock.settimeout(READ_TIMEOUT_S)
                else:
                    response = conn.getresponse()
                sent.status = response.status
                sent.outcome, sent.detail = self._read(kind, response)
                response.close()
            finally:
                if sent.outcome == LEFT:
                    # Hang up at once, as a closed browser tab does.
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                conn.close()
        except (OSError, http.client.HTTPException) as exc:
            sent.outcome, sent.detail = TRANSPORT, f"{type(exc).__name__}: {exc}"[:300]
        finally:
            sent.end = clock()
        return sent

    def _read(self, kind: Kind, response: http.client.HTTPResponse) -> tuple[str, str]:
        status = response.status
        if status == 200 and kind.stream:
            return self._read_stream(kind, response)
        raw = response.read()
        try:
            body = json.loads(raw)
        except ValueError:
            return f"{status} not json", raw[:200].decode(errors="replace")
        if status != 200:
            error = body.get("error") if isinstance(body, dict) else None
            if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
                return f"{status} no error envelope", raw[:200].decode(errors="replace")
            return f"{status} {error['code'] or error['type']}", error["message"][:200]
        problem = check_body(kind, body)
        return (f"{status} wrong body", problem) if problem else (OK, "")

    def _read_stream(self, kind: Kind, response: http.client.HTTPResponse) -> tuple[str, str]:
        indexes, finished, texts, done = set(), set(), 0, False
        deadline = time.monotonic() + STREAM_DEADLINE_S
        for line in response:
            if time.monotonic() > deadline:
                return "200 client gave up", f"still streaming after {STREAM_DEADLINE_S} s"
            if not line.startswith(b"data: "):
                continue
            payload = line[6:].strip()
            if payload == b"[DONE]":
                done = True
                break
            event = json.loads(payload)
            if "error" in event:
                return f"200 error event {event['error'].get('code') or event['error'].get('type')}", \
                    event["error"].get("message", "")[:200]
            for choice in event["choices"]:
                indexes.add(choice["index"])
                if choice.get("finish_reason"):
                    finished.add(choice["index"])
                if (choice.get("delta") or {}).get("content") or choice.get("text"):
                    texts += 1
            if kind.leave == "after_tokens" and texts >= 2:
                return LEFT, ""
        if not done:
            return "200 stream cut", f"ended without [DONE] after {texts} tokens"
        expected = set(range(kind.n))
        if indexes != expected or finished != expected:
            return "200 wrong body", f"choices {sorted(indexes)}, finished {sorted(finished)}, want {kind.n}"
        return OK, ""


def check_body(kind: Kind, body: dict) -> str:
    """What is wrong with a 200 body for its kind ("" when nothing is)."""
    if kind.n:
        choices = body.get("choices") or []
        if len(choices) != kind.n:
            return f"{len(choices)} choices, want {kind.n}"
        if not 0 < body["usage"]["completion_tokens"] <= kind.n * (kind.body["max_tokens"]):
            return f"usage {body['usage']}"
        return ""
    if kind.path == "/health":
        return "" if body.get("status") == "healthy" else f"status {body.get('status')}"
    if kind.path == "/v1/models":
        return "" if [m["id"] for m in body.get("data", [])] == [MODEL_NAME] else f"models {body}"
    if kind.path == "/tokenize":
        return "" if body.get("count") == len(body.get("tokens", [])) > 0 else f"tokenize {body}"
    if kind.path == "/detokenize":
        return "" if isinstance(body.get("prompt"), str) and body["prompt"] else f"detokenize {body}"
    return ""


def traffic(count: int, rng: random.Random) -> list[Kind]:
    """count kinds in sending order: one of each first (so every kind is seen), then by weight."""
    first = list(KINDS)
    rng.shuffle(first)
    rest = rng.choices(KINDS, weights=[k.weight for k in KINDS], k=max(0, count - len(first)))
    return (first + rest)[:count]


def burst_offsets(duration: float) -> list[float]:
    """When a phase's bursts go out: evenly spread, the first half a spacing in."""
    count = max(1, round(duration / BURST_EVERY_S))
    return [(i + 0.5) * duration / count for i in range(count)]


class SoakServer(OurServer):
    """The server as `make serve` runs it (its default settings), with API keys on and JSON logs."""

    name = "soak"
    label = "this server (gunicorn + gevent + Flask), default settings, API keys on"

    def env(self) -> dict[str, str]:
        return {**BASE_ENV, "HOST": HOST, "PORT": str(self.port), "MODEL": str(self.model_dir),
                "SERVED_MODEL_NAME": MODEL_NAME, "API_KEYS": ",".join(API_KEYS), "LOG_FORMAT": "json"}

    def settings(self) -> dict:
        return {"command": "gunicorn -c gunicorn.conf.py wsgi:app",
                "environment": f"API_KEYS=<{len(API_KEYS)} keys>, LOG_FORMAT=json; everything else default",
                "rate_limit": RATE_LIMIT, "max_concurrent": MAX_CONCURRENT}

    def worker_pids(self) -> list[int]:
        """gunicorn's worker processes: the master's children."""
        pids = []
        for status in Path("/proc").glob("[0-9]*/status"):
            with contextlib.suppress(OSError):
                fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
                if int(fields["PPid"]) == self.process.pid:
                    pids.append(int(status.parent.name))
        return sorted(pids)

    def get(self, path: str) -> bytes:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        try:
            conn.request("GET", path)
            return conn.getresponse().read()
        finally:
            conn.close()

    def engine_queue(self) -> dict:
        """The engine's running and waiting requests and its token counters, from /metrics."""
        wanted = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting",
                  "vllm:generation_tokens_total": "generation_tokens", "vllm:prompt_tokens_total": "prompt_tokens"}
        values = dict.fromkeys(wanted.values(), 0.0)
        for line in self.get("/metrics").decode().splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in wanted:
                values[wanted[name]] += float(line.rsplit(" ", 1)[1])
        return values

    def max_model_len(self) -> int:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        try:
            conn.request("POST", "/tokenize", body=json.dumps({"prompt": "x"}),
                         headers={"Authorization": f"Bearer {API_KEYS[0]}", "Content-Type": "application/json"})
            return json.loads(conn.getresponse().read())["max_model_len"]
        finally:
            conn.close()


def rss_kib(pid: int) -> int | None:
    """A process's resident memory (VmRSS), in KiB."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


class Soak:
    """Drives the phases against one server and keeps every request's record."""

    def __init__(self, server: SoakServer, rate_per_min: float, seed: int, say):
        self.server = server
        self.rate = rate_per_min
        self.rng = random.Random(seed)
        self.say = say
        self.client = Client(server.port, server.max_model_len())
        self.sent: list[Sent] = []
        self.bursts: list[tuple[str, float, float]] = []  # (phase, start, end) in phase seconds
        self.lags: list[float] = []
        self._seq = 0

    def _next_id(self, phase: str, kind: Kind) -> str:
        self._seq += 1
        return f"soak-{phase[0]}{self._seq:06d}-{kind.name}"

    def run_phase(self, phase: str, duration: float) -> float:
        """Send a phase's traffic (steady requests plus bursts); returns its start (monotonic)."""
        offsets = burst_offsets(duration)
        total = round(self.rate * duration / 60)
        steady = traffic(max(len(KINDS), total - len(offsets) * BURST_SIZE), self.rng)
        interval = duration / len(steady)
        started = time.monotonic()
        clock = lambda: time.monotonic() - started  # noqa: E731
        self.say(f"{phase}: {len(steady)} requests over {duration:.0f} s, bursts of {BURST_SIZE} at "
                 + ", ".join(f"{t:.0f} s" for t in offsets))
        burst_threads = []
        with ThreadPoolExecutor(CLIENT_THREADS, thread_name_prefix="soak-client") as pool:
            for i, kind in enumerate(steady):
                due = i * interval
                while offsets and offsets[0] <= due:
                    thread = threading.Thread(target=self._burst, args=(phase, clock), daemon=True)
                    thread.start()
                    burst_threads.append(thread)
                    offsets.pop(0)
                delay = due - clock()
                if delay > 0:
                    time.sleep(delay)
                sent = Sent(self._next_id(phase, kind), kind.name, phase, due)
                self.sent.append(sent)
                pool.submit(self._one, kind, sent, clock)
        for thread in burst_threads:
            thread.join()
        return started

    def _one(self, kind: Kind, sent: Sent, clock) -> None:
        self.lags.append(clock() - sent.due)
        self.client.send(kind, sent, clock)

    def _burst(self, phase: str, clock) -> None:
        """BURST_SIZE streams, connected first, then sent at the same moment."""
        gate = threading.Barrier(BURST_SIZE)
        due = clock()
        batch = [Sent(self._next_id(phase, BURST), BURST.name, phase, due) for _ in range(BURST_SIZE)]
        self.sent.extend(batch)

        def one(sent: Sent) -> None:
            try:
                conn = self.client.connect()
            except OSError as exc:
                conn = None
                sent.outcome, sent.detail = TRANSPORT, f"connect: {exc}"
            with contextlib.suppress(threading.BrokenBarrierError):
                gate.wait(timeout=30)
            if conn is not None:
                self.client.send(BURST, sent, clock, conn)

        threads = [threading.Thread(target=one, args=(s,), daemon=True) for s in batch]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.bursts.append((phase, min(s.start for s in batch), max(s.end for s in batch)))

    def settle(self) -> dict:
        """Wait until the engine has nothing running or waiting (up to SETTLE_TIMEOUT_S).

        Returns the last reading, with the first one (right after the last client finished) and
        how long it took to empty: a generation whose client left before its response may run on.
        """
        started = time.monotonic()
        first = None
        while True:
            queue = self.server.engine_queue()
            first = first or {"first_running": queue["running"], "first_waiting": queue["waiting"]}
            waited = time.monotonic() - started
            if queue["running"] == queue["waiting"] == 0 or waited > SETTLE_TIMEOUT_S:
                return {**queue, **first, "waited_s": round(waited, 1)}
            time.sleep(0.5)


class MemoryWatch:
    """Samples the worker's RSS every MEMORY_EVERY_S seconds in a thread, until stopped."""

    def __init__(self, pid: int):
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(MEMORY_EVERY_S):
            kib = rss_kib(self.pid)
            if kib is not None:
                self.samples.append((round(time.monotonic() - self._started, 1), kib))

    def __enter__(self) -> "MemoryWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of measured traffic (default 600)")
    parser.add_argument("--rate", type=float, default=1000, help="requests a minute, bursts included (default 1000)")
    parser.add_argument("--warmup", type=float, default=60, help="seconds of the same traffic first, not measured")
    parser.add_argument("--seed", type=int, default=20261130)
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--model-dir", type=Path, default=default_model_dir())
    args = parser.parse_args(argv)
    minimum = (len(KINDS) + BURST_SIZE) * 60 / args.rate
    if min(args.duration, args.warmup) < minimum:
        parser.error(f"--duration and --warmup must be at least {minimum:.0f} s at this rate "
                     "(one burst and one request of each kind)")
    if not (args.model_dir / "config.json").exists():
        parser.error(f"no model at {args.model_dir} (run `make model`)")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began, now = time.monotonic(), datetime.now()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = output_stem(args.out_dir, "soak-" + now.strftime("%Y-%m-%d"))
    work_dir = stem.with_suffix(".tmp")  # the server's log and every request's record (git-ignored)
    work_dir.mkdir()

    def say(text: str) -> None:
        elapsed = time.monotonic() - began
        print(f"[{int(elapsed // 60):02d}:{int(elapsed % 60):02d}] {text}", file=sys.stderr, flush=True)

    load_before = os.getloadavg()
    say(f"starting the server; its log is {work_dir / 'soak.log'}")
    with SoakServer(args.model_dir, work_dir) as server:
        say(f"ready in {server.startup_s:.1f} s on {server.base_url}")
        soak = Soak(server, args.rate, args.seed, say)
        soak.run_phase("warmup", args.warmup)
        settled_start = soak.settle()
        workers = server.worker_pids()
        if len(workers) != 1:
            raise RuntimeError(f"expected one gunicorn worker, found {workers}")
        worker = workers[0]
        rss_start = rss_kib(worker)
        say(f"warm-up done; worker {worker} RSS {rss_start / 1024:.0f} MiB; measuring for {args.duration:.0f} s")
        with MemoryWatch(worker) as memory:
            soak_started = soak.run_phase("soak", args.duration)
            engine_end = soak.settle()
            soak_wall_s = time.monotonic() - soak_started
        rss_end = rss_kib(worker)
        workers_end = server.worker_pids()
        say(f"traffic done; engine running {engine_end['running']:.0f}, waiting {engine_end['waiting']:.0f}; "
            f"worker RSS {rss_end / 1024 if rss_end else 0:.0f} MiB; matching {len(soak.sent)} requests to the log")
        log = soak_report.read_log(server.log_path, {s.request_id for s in soak.sent}, SETTLE_TIMEOUT_S)
    result = soak_report.summarize(
        soak, log, kinds=ALL_KINDS, also_expected=ALSO_EXPECTED,
        memory={"worker_pid": worker, "start_kib": rss_start, "end_kib": rss_end,
                "samples": memory.samples, "workers_at_end": workers_end},
        engine={"at_start": settled_start, "at_end": engine_end, "soak_wall_s": soak_wall_s})
    result.update(
        date=now.strftime("%Y-%m-%d %H:%M"), machine=machine(), model=MODEL_NAME,
        load_average_before=[round(x, 2) for x in load_before],
        load_average_after=[round(x, 2) for x in os.getloadavg()],
        settings={"duration_s": args.duration, "warmup_s": args.warmup, "rate_per_min": args.rate,
                  "seed": args.seed, "burst_size": BURST_SIZE, "burst_every_s": BURST_EVERY_S,
                  "client_threads": CLIENT_THREADS, "api_keys": len(API_KEYS),
                  "mix": {k.name: k.weight for k in KINDS}, "server": server.settings(),
                  "server_startup_s": server.startup_s},
        wall_time_s=round(time.monotonic() - began, 1))
    with open(work_dir / "requests.jsonl", "w") as rows:
        for sent in soak.sent:
            rows.write(json.dumps(sent.row()) + "\n")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(soak_report.markdown(result))
    say(f"done: {stem}.json, .md (every request: {work_dir / 'requests.jsonl'})")
    print(stem.with_suffix(".md").read_text())
    return 0 if all(t["met"] for t in result["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
