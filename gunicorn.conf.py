"""gunicorn settings: `gunicorn -c gunicorn.conf.py wsgi:app` (what `make serve` runs)."""

import os

from app.logs import logging_config

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"

# One worker per GPU (and one on a CPU host). Each worker owns a whole LLMEngine: a second
# worker would load a second copy of the weights and claim a second KV cache on the same
# device, halving the memory for batching instead of adding throughput. Concurrency comes
# from gevent inside the worker and from vLLM's continuous batching, not from processes.
# on_starting below refuses -w / --workers / GUNICORN_CMD_ARGS / WEB_CONCURRENCY above 1.
workers = 1
# gevent, minus the patches that break vLLM inside the engine thread (see the class).
worker_class = "engine_bridge.gunicorn_worker.EngineGeventWorker"
# Enough connections that the app itself can answer overload (429) instead of gunicorn
# leaving clients waiting in the accept queue.
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "1000"))
# The heartbeat: the engine runs in its own OS thread, so the worker's event loop keeps
# beating during generation; post_fork below keeps it beating while the model loads.
timeout = int(os.environ.get("WORKER_TIMEOUT", "60"))
# On SIGTERM, the master kills the worker this many seconds later; the worker lets streams in
# flight run for all of it but the last 5 s, which it keeps to stop the engine and exit.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "30"))
keepalive = 5
# No control socket (gunicorn 27's `gunicornc` channel): its thread is stopped and restarted
# around every fork, which delayed the fresh worker after an engine failure by seconds, and its
# default path (~/.gunicorn/gunicorn.ctl) is shared by every server the same user runs.
control_socket_disable = True
# Every line (gunicorn's, vLLM's, the app's) in one format: JSON, or text on a terminal
# (LOG_FORMAT, see app/logs.py).
loglevel = os.environ.get("LOG_LEVEL", "info")
# The app logs one line per request with more in it (tokens, time to first token, request id)
# once the response has ended; ACCESS_LOG=1 adds gunicorn's own access line.
logconfig_dict = logging_config(access_log=os.environ.get("ACCESS_LOG", "") not in ("", "0"))
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" request_id=%({x-request-id}o)s %(L)ss'


def on_starting(server):
    """Refuse a second worker before binding: each would load a whole engine of its own."""
    from engine_bridge.gunicorn_worker import require_one_worker

    require_one_worker(server.cfg.workers)  # RuntimeError: gunicorn prints it and exits 1


def post_fork(server, worker):
    """Load the engine in the new worker, before gevent patches it and before Flask is imported.

    vLLM's start-up fails after gevent's monkey-patching (patched subprocess and ssl) and walks
    every module's globals in a way Flask's request proxies break, so the engine is built here,
    the one moment when neither has happened yet (see docs/engine-notes.md). Meanwhile the port
    answers 503 "loading" (app.status builds the answers, without Flask); a failed load is
    retried by a fresh worker, ENGINE_LOAD_ATTEMPTS times in all.
    """
    from app.status import loading_answer

    worker.load_engine(loading_answer)


def worker_exit(server, worker):
    """Stop the engine (a no-op after a drain already did), then end the process at once."""
    import engine_bridge

    bridge = engine_bridge.installed()
    if bridge is not None:
        bridge.shutdown()
    worker.log.info("worker stopped", extra={"fields": {"event": "worker_stopped"}})
    worker.exit_now()


def when_ready(server):
    """The master is listening; the worker answers 503 "loading" until its engine is ready."""
    server.log.info("listening on %s; /health says loading (503) until the engine is ready, then 200",
                    ", ".join(str(listener) for listener in server.LISTENERS),
                    extra={"fields": {"event": "listening"}})


def on_exit(server):
    server.log.info("server stopped", extra={"fields": {"event": "server_stopped"}})
