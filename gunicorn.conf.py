"""gunicorn settings: `gunicorn -c gunicorn.conf.py wsgi:app` (what `make serve` runs)."""

import os

from app.logs import logging_config

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"

# One worker per GPU (and one on a CPU host). Each worker owns a whole LLMEngine: a second
# worker would load a second copy of the weights and claim a second KV cache on the same
# device, halving the memory for batching instead of adding throughput. Concurrency comes
# from gevent inside the worker and from vLLM's continuous batching, not from processes.
workers = 1
# gevent, minus the patches that break vLLM inside the engine thread (see the class).
worker_class = "engine_bridge.gunicorn_worker.EngineGeventWorker"
# Enough connections that the app itself can answer overload (429) instead of gunicorn
# leaving clients waiting in the accept queue.
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "1000"))
# The heartbeat: the engine runs in its own OS thread, so the worker's event loop keeps
# beating during generation; post_fork below keeps it beating while the model loads.
timeout = int(os.environ.get("WORKER_TIMEOUT", "60"))
# How long streams in flight may take to finish on SIGTERM.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "30"))
keepalive = 5
# Every line (gunicorn's, vLLM's, the app's) in one format: JSON, or text on a terminal
# (LOG_FORMAT, see app/logs.py).
loglevel = os.environ.get("LOG_LEVEL", "info")
# The app logs one line per request with more in it (tokens, time to first token, request id)
# once the response has ended; ACCESS_LOG=1 adds gunicorn's own access line.
logconfig_dict = logging_config(access_log=os.environ.get("ACCESS_LOG", "") not in ("", "0"))
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" request_id=%({x-request-id}o)s %(L)ss'


def post_fork(server, worker):
    """Load the engine in the new worker, before gevent patches it and before Flask is imported.

    vLLM's start-up fails after gevent's monkey-patching (patched subprocess and ssl) and walks
    every module's globals in a way Flask's request proxies break, so the engine is built here,
    the one moment when neither has happened yet (see ENGINE_NOTES.md in the project's notes).
    """
    import engine_bridge

    bridge = engine_bridge.EngineBridge(engine_bridge.EngineSettings.from_env())
    worker.log.info("loading the engine for %s", bridge.model_name, extra={"fields": {"event": "engine_loading"}})
    try:
        bridge.load(keepalive=worker.notify)
    except engine_bridge.EngineError:
        worker.log.exception("the engine failed to load; /health reports unhealthy",
                             extra={"fields": {"event": "engine_failed"}})
    else:
        urls = [str(sock) for sock in worker.sockets]
        local = urls[0].replace("://0.0.0.0:", "://127.0.0.1:")
        worker.log.info("ready: serving %s on %s (try: curl %s/v1/models)", bridge.model_name, ", ".join(urls),
                        local, extra={"fields": {"event": "ready", "model": bridge.model_name, "listen": urls}})
    engine_bridge.install(bridge)


def worker_exit(server, worker):
    """Stop the engine thread so the worker exits cleanly."""
    import engine_bridge

    bridge = engine_bridge.installed()
    if bridge is not None:
        bridge.shutdown()
    worker.log.info("worker stopped", extra={"fields": {"event": "worker_stopped"}})


def when_ready(server):
    """The master is listening; the worker still has to load the engine before it answers."""
    server.log.info("listening on %s; the engine loads next and /health turns 200 when it is ready",
                    ", ".join(str(listener) for listener in server.LISTENERS),
                    extra={"fields": {"event": "listening"}})


def on_exit(server):
    server.log.info("server stopped", extra={"fields": {"event": "server_stopped"}})
