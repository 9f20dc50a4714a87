"""gunicorn settings: `gunicorn -c gunicorn.conf.py wsgi:app` (what `make serve` runs)."""

import logging
import os

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
accesslog = os.environ.get("ACCESS_LOG", "-")
# gunicorn's default access log line plus the request id the app put on the response.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" request_id=%({x-request-id}o)s %(L)ss'
loglevel = os.environ.get("LOG_LEVEL", "info")


def post_fork(server, worker):
    """Load the engine in the new worker, before gevent patches it and before Flask is imported.

    vLLM's start-up fails after gevent's monkey-patching (patched subprocess and ssl) and walks
    every module's globals in a way Flask's request proxies break, so the engine is built here,
    the one moment when neither has happened yet (see ENGINE_NOTES.md in the project's notes).
    """
    import engine_bridge

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    bridge = engine_bridge.EngineBridge(engine_bridge.EngineSettings.from_env())
    worker.log.info("loading the engine for %s", bridge.model_name)
    try:
        bridge.load(keepalive=worker.notify)
    except engine_bridge.EngineError:
        worker.log.exception("the engine failed to load; /health reports unhealthy")
    engine_bridge.install(bridge)


def worker_exit(server, worker):
    """Stop the engine thread so the worker exits cleanly."""
    import engine_bridge

    bridge = engine_bridge.installed()
    if bridge is not None:
        bridge.shutdown()
