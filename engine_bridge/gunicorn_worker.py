"""gunicorn's gevent worker, patching everything except threads, queues and subprocesses, and draining on SIGTERM.

The engine thread runs vLLM code that starts thread pools (grammar compilation for structured
output), waits on queues and runs subprocesses after the worker has started. With those modules
monkey-patched, a pool thread started from the engine thread became a greenlet in a hub that
never runs and the request waited forever; a subprocess failed outright ("child watchers are
only available on the default loop"). Sockets, DNS, ssl, time, select and signals are still
patched, so every request is a greenlet and the app's I/O is cooperative as usual.
"""

import os
import socket

import gevent
from gevent import monkey
from gunicorn.workers.ggevent import GeventWorker

import engine_bridge


class EngineGeventWorker(GeventWorker):
    """Use as worker_class = "engine_bridge.gunicorn_worker.EngineGeventWorker"."""

    def patch(self):
        monkey.patch_all(thread=False, queue=False, subprocess=False)
        # As GeventWorker.patch: rebuild the listening sockets with the patched socket class.
        self.sockets = [socket.socket(s.FAMILY, socket.SOCK_STREAM, fileno=s.sock.detach())
                        for s in self.sockets]

    def handle_exit(self, sig, frame):
        """SIGTERM: drain first, then stop as gunicorn does.

        For DRAIN_SECONDS the worker keeps accepting: /health answers 503 "draining" so load
        balancers take it out, and new generation requests get a 503 envelope. Then gunicorn
        stops accepting and gives the requests in flight graceful_timeout to finish; the
        engine shuts down in worker_exit.
        """
        bridge = engine_bridge.installed()
        if bridge is None or not self.alive or getattr(self, "_draining", False):
            return super().handle_exit(sig, frame)
        self._draining = True
        bridge.begin_drain()
        self.log.info("draining: refusing new requests, finishing those in flight")
        delay = float(os.environ.get("DRAIN_SECONDS", "5"))
        gevent.spawn_later(delay, super().handle_exit, sig, frame)
