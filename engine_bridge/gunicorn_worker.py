"""gunicorn's gevent worker, owning the engine's life: load (answering while it loads), serve, drain, heal.

Patching: everything except threads, queues and subprocesses. The engine thread runs vLLM code
that starts thread pools (grammar compilation for structured output), waits on queues and runs
subprocesses after the worker has started. With those modules monkey-patched, a pool thread
started from the engine thread became a greenlet in a hub that never runs and the request
waited forever; a subprocess failed outright ("child watchers are only available on the default
loop"). Sockets, DNS, ssl, time, select and signals are still patched, so every request is a
greenlet and the app's I/O is cooperative as usual.

Life cycle (docs/engine-notes.md tells why each step is where it is):
- load_engine(), from gunicorn's post_fork: a LoadingResponder answers 503 "loading" on the port
  while the engine builds. A load that fails ends this worker; gunicorn forks a fresh one for the
  next try, and after ENGINE_LOAD_ATTEMPTS the worker exits with gunicorn's boot-error code, so
  the master stops with a non-zero status and systemd restarts the service.
- run(): serve; if the engine fails after it was ready, let the error responses out, then exit
  non-zero so gunicorn starts a fresh worker with a fresh engine.
- SIGTERM: drain within GRACEFUL_TIMEOUT, counted from the signal, then stop the engine.
"""

import _socket
import gc
import logging
import mmap
import os
import signal
import socket
import struct
import sys
import time
from functools import partial

import gevent
from gevent import monkey
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn.arbiter import Arbiter
from gunicorn.sock import ssl_context
from gunicorn.workers.ggevent import GeventWorker

import engine_bridge
from engine_bridge.loading_responder import Answer, ResponderProcess
from engine_bridge.settings import LifecycleSettings

# Of GRACEFUL_TIMEOUT, kept back from the streams in flight to stop the engine and exit before
# gunicorn's master sends SIGKILL (graceful_timeout after its SIGTERM). Stopping vLLM's engine
# took 1.2 s on a 2-core machine, up to 3.9 s when other processes starved it of CPU.
SHUTDOWN_RESERVE_SECONDS = 5.0
# After an engine failure, how long the failed worker keeps answering (/health "unhealthy", the
# error responses of the requests in flight) before it exits; at most FLUSH_SECONDS more while
# responses are still being written.
FAILED_LINGER_SECONDS = 2.0
# Then, at most this long for the engine thread to close the failed engine: vLLM's executor stops
# its rank processes (TENSOR_PARALLEL_SIZE > 1) there, waiting 5 s for them, then SIGTERM, 4 s,
# then SIGKILL. A worker that left before that left ranks behind, blocked in their own shutdown.
FAILED_CLOSE_SECONDS = 15.0
FLUSH_SECONDS = 2.0
# Kept at the very end of GRACEFUL_TIMEOUT to close connections, log and exit.
EXIT_SECONDS = 1.5
# Exit code of a worker whose engine failed (after it was ready, or while loading with tries left):
# anything but 0 and gunicorn's own boot and app-load codes, which stop the master.
ENGINE_FAILED_EXIT = 1
TICK_SECONDS = 0.1


def require_one_worker(workers: int) -> None:
    """Raise (stopping gunicorn at start-up) unless exactly one worker is configured."""
    requested = os.environ.get("WEB_CONCURRENCY", "").strip()
    if workers == 1 and requested in ("", "1"):
        return
    count = workers if workers != 1 else requested
    raise RuntimeError(
        f"{count} workers were requested (-w / --workers, GUNICORN_CMD_ARGS or WEB_CONCURRENCY), but this "
        "server runs exactly one: each worker loads a whole engine (weights and KV cache), so a second "
        "one on the same device halves the memory for batching or fails to load. To use more devices, "
        "shard one model with TENSOR_PARALLEL_SIZE, or run one server per GPU "
        "(CUDA_VISIBLE_DEVICES=N PORT=800N) behind nginx (see the README).")


def freeze_startup_heap() -> None:
    """Move everything alive now (engine, Flask app, imported modules) out of the collector's sight.

    As vLLM's own server does once it has started (vllm.utils.gc_utils.freeze_gc_heap): a full
    collection otherwise walks millions of start-up objects that never die, a pause every stream
    in the worker feels as one late token. vLLM's engine core froze its own start-up heap in
    post_fork, but Flask and the app were imported after that.
    """
    gc.collect()
    gc.freeze()


class _SharedCounter:
    """An integer shared by gunicorn's master and every worker it forks (anonymous shared memory)."""

    def __init__(self):
        self._memory = mmap.mmap(-1, 8)

    @property
    def value(self) -> int:
        return struct.unpack_from("q", self._memory)[0]

    @value.setter
    def value(self, number: int) -> None:
        struct.pack_into("q", self._memory, 0, number)


# Failed engine loads in a row, across workers: created when the master imports this class.
_load_failures = _SharedCounter()


class EngineGeventWorker(GeventWorker):
    """Use as worker_class = "engine_bridge.gunicorn_worker.EngineGeventWorker"."""

    _responder: ResponderProcess | None = None
    _stop_requested_at: float | None = None
    _in_flight = 0
    _listen_urls: list[str] = []
    _connections: set = set()
    # What the process exits with once gunicorn's worker_exit hook has run (see exit_now).
    exit_code = 0

    # -- loading (post_fork: before gevent patches, before Flask is imported) ------------------

    def load_engine(self, loading_answer: Answer) -> None:
        """Build and install the engine, answering loading_answer on the port meanwhile; exits on failure."""
        settings = LifecycleSettings.from_env()
        self._listen_urls = [str(s) for s in self.sockets]
        if self.cfg.is_ssl:
            self.log.info("no 503 answers while the engine loads: the port speaks TLS")
        else:
            self._responder = ResponderProcess([s.fileno() for s in self.sockets], loading_answer)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, self._exit_while_loading)

        bridge = engine_bridge.EngineBridge(engine_bridge.EngineSettings.from_env())
        attempt = _load_failures.value + 1
        self.log.info("loading the engine for %s (try %d of %d)", bridge.model_name, attempt,
                      settings.load_attempts,
                      extra={"fields": {"event": "engine_loading", "attempt": attempt,
                                        "attempts": settings.load_attempts}})
        try:
            bridge.load(keepalive=self.notify)
        except engine_bridge.EngineError as exc:
            self._load_failed(bridge, exc, attempt, settings)
        _load_failures.value = 0
        engine_bridge.install(bridge)

    def _load_failed(self, bridge, exc: BaseException, attempt: int, settings: LifecycleSettings) -> None:
        """Give the next try to a fresh worker after a back-off, or stop the server after the last."""
        _load_failures.value = attempt
        cause = f"{type(bridge.failure).__name__}: {bridge.failure}" if bridge.failure else str(exc)
        fields = {"event": "engine_failed", "phase": "loading", "attempt": attempt,
                  "attempts": settings.load_attempts, "error": cause}
        if attempt >= settings.load_attempts:
            self.log.error("the engine failed to load %d times (last: %s); stopping the server",
                           attempt, cause, extra={"fields": fields})
            self._exit_now(Arbiter.WORKER_BOOT_ERROR)
        delay = settings.load_retry_seconds * 2 ** (attempt - 1)
        self.log.error("the engine failed to load (try %d of %d: %s); a fresh worker tries again in %.0f s",
                       attempt, settings.load_attempts, cause, delay,
                       extra={"fields": {**fields, "retry_in_s": delay}})
        # The responder goes on answering 503 "loading" through the back-off.
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            self.notify()
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        self._exit_now(ENGINE_FAILED_EXIT)

    def _exit_while_loading(self, sig, frame) -> None:
        """A stop signal before the worker serves: nothing is in flight, so leave at once."""
        self.log.info("stopping while the engine loads (%s)", signal.Signals(sig).name,
                      extra={"fields": {"event": "worker_stopped"}})
        self._exit_now(0)

    def _exit_now(self, code: int) -> None:
        self.exit_code = code
        self.exit_now()

    def exit_now(self) -> None:
        """End the process with exit_code at once: call last, from gunicorn's worker_exit hook.

        A normal interpreter exit took 10 s more after the engine had stopped (vLLM's and torch's
        exit handlers, threads of a half-built engine), past gunicorn's SIGKILL on a drain, and
        the master must see the exit code of a failed load. Logs are flushed first.
        """
        if self._responder is not None:
            self._responder.stop()
            self._responder.wait(timeout=3.0)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(self.exit_code)

    # -- gunicorn's hooks into the worker -----------------------------------------------------

    def patch(self):
        monkey.patch_all(thread=False, queue=False, subprocess=False)
        # As GeventWorker.patch: rebuild the listening sockets with the patched socket class.
        self.sockets = [socket.socket(s.FAMILY, socket.SOCK_STREAM, fileno=s.sock.detach())
                        for s in self.sockets]

    def handle(self, listener, client, addr):
        """Keep every open connection, so stopping can end idle keep-alive ones quietly."""
        self._connections.add(client)
        try:
            super().handle(listener, client, addr)
        finally:
            self._connections.discard(client)

    def handle_request(self, listener_name, req, sock, addr):
        """Count requests being handled: idle keep-alive connections do not hold up a drain."""
        self._in_flight += 1
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            self._in_flight -= 1

    def handle_http2_request(self, listener_name, req, sock, addr, h2_conn):
        self._in_flight += 1
        try:
            return super().handle_http2_request(listener_name, req, sock, addr, h2_conn)
        finally:
            self._in_flight -= 1

    def handle_exit(self, sig, frame):
        """SIGTERM: /health says draining and new generations get 503 from now on; run() drains."""
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
        bridge = engine_bridge.installed()
        if bridge is not None:
            bridge.begin_drain()
        self.alive = False  # responses from now on close their connection

    # -- serving ------------------------------------------------------------------------------

    def run(self):
        self._connections = set()
        freeze_startup_heap()
        servers = self._start_servers()
        if self._responder is not None:
            self._responder.stop()  # it finishes the answers it is writing, then exits
        bridge = engine_bridge.installed()
        urls = self._listen_urls
        if bridge is not None and urls:
            local = urls[0].replace("://0.0.0.0:", "://127.0.0.1:")
            self.log.info("ready: serving %s on %s (try: curl %s/v1/models)", bridge.model_name,
                          ", ".join(urls), local,
                          extra={"fields": {"event": "ready", "model": bridge.model_name, "listen": urls}})
        while self.alive and not self._engine_failed(bridge):
            self.notify()
            if self._responder is not None and self._responder.reap():
                self._responder = None
            gevent.sleep(TICK_SECONDS)
        if self._engine_failed(bridge) and self._stop_requested_at is None:
            self._exit_after_engine_failure(servers, bridge)
        self._drain(servers, bridge)

    def _start_servers(self) -> list:
        """Start a gevent StreamServer per listening socket, as GeventWorker.run does."""
        ssl_args = {"ssl_context": ssl_context(self.cfg)} if self.cfg.is_ssl else {}
        servers = []
        for listener in self.sockets:
            listener.setblocking(1)
            server = StreamServer(listener, handle=partial(self.handle, listener),
                                  spawn=Pool(self.worker_connections), **ssl_args)
            server.start()
            servers.append(server)
        return servers

    @staticmethod
    def _engine_failed(bridge) -> bool:
        return bridge is not None and bridge.state is engine_bridge.EngineState.FAILED

    def _exit_after_engine_failure(self, servers: list, bridge) -> None:
        """The engine died after it was ready: answer what is in flight, then make way for a fresh worker."""
        cause = f"{type(bridge.failure).__name__}: {bridge.failure}" if bridge.failure else "unknown"
        self.log.error("the engine failed (%s); this worker exits and gunicorn starts a fresh one", cause,
                       extra={"fields": {"event": "engine_failed", "phase": "serving", "error": cause}})
        self.alive = False
        started = time.monotonic()
        while time.monotonic() - started < FAILED_LINGER_SECONDS or (
                self._in_flight and time.monotonic() - started < FAILED_LINGER_SECONDS + FLUSH_SECONDS):
            self.notify()
            gevent.sleep(TICK_SECONDS)
        while not bridge.closed and time.monotonic() - started < FAILED_LINGER_SECONDS + FAILED_CLOSE_SECONDS:
            self.notify()
            gevent.sleep(TICK_SECONDS)
        self._stop_servers(servers)
        self.exit_code = ENGINE_FAILED_EXIT
        sys.exit(ENGINE_FAILED_EXIT)  # gunicorn's worker_exit hook runs, then exit_now

    def _drain(self, servers: list, bridge) -> None:
        """Finish what is in flight within GRACEFUL_TIMEOUT of the signal, then stop the engine.

        Until every request has ended (and for at least DRAIN_SECONDS, so load balancers see it),
        the worker keeps accepting: /health answers 503 "draining", new generations 503. Streams
        still running SHUTDOWN_RESERVE_SECONDS before gunicorn's SIGKILL get an error event and
        [DONE] when the engine stops.
        """
        settings = LifecycleSettings.from_env()
        signalled = self._stop_requested_at or time.monotonic()
        budget = max(0.0, self.cfg.graceful_timeout - SHUTDOWN_RESERVE_SECONDS)
        deadline = signalled + budget
        linger_until = signalled + min(settings.drain_seconds, budget)
        self.log.info("draining: refusing new requests, finishing the %d in flight for up to %.0f s",
                      self._in_flight, max(0.0, deadline - time.monotonic()),
                      extra={"fields": {"event": "draining", "in_flight": self._in_flight, "budget_s": budget}})
        while time.monotonic() < deadline:
            if not self._in_flight and time.monotonic() >= linger_until:
                break
            self.notify()
            gevent.sleep(TICK_SECONDS)
        for server in servers:
            server.close()  # stop accepting
        if self._in_flight:
            self.log.warning("drain time is up: ending %d request(s) still in flight", self._in_flight,
                             extra={"fields": {"event": "drain_timeout", "in_flight": self._in_flight}})
        killed_at = signalled + self.cfg.graceful_timeout  # gunicorn's SIGKILL
        if bridge is not None:
            # Stops the engine thread: its step ends, the streams left get their error, then vLLM
            # tears the engine down. A real thread waits for it, so the hub writes those errors
            # meanwhile; past the time left, the process exits without waiting for the teardown.
            wait = max(0.5, killed_at - EXIT_SECONDS - time.monotonic())
            gevent.get_hub().threadpool.apply(bridge.shutdown, kwds={"timeout": wait})
        flushed_by = min(time.monotonic() + FLUSH_SECONDS, killed_at - EXIT_SECONDS)
        while self._in_flight and time.monotonic() < flushed_by:
            self.notify()
            gevent.sleep(TICK_SECONDS)
        self._stop_servers(servers)

    def _stop_servers(self, servers: list) -> None:
        """Stop accepting and end every connection left (idle keep-alive ones, once nothing is in flight).

        Shutting a connection's socket down ends its handler as a client that left would; killing
        the handler (gevent's server.stop) would log each as an error.
        """
        for server in servers:
            server.close()
        for connection in list(self._connections):
            # On a duplicate: gevent's own shutdown() would cancel the handler's wait with EBADF,
            # which gunicorn logs as a socket error; the kernel's wakes it with an end of file.
            try:
                duplicate = _socket.socket(fileno=os.dup(connection.fileno()))
                duplicate.shutdown(_socket.SHUT_RDWR)
                duplicate.close()
            except OSError:
                pass
        for server in servers:
            server.stop(timeout=1.0)  # a backstop: the handlers have ended by now

