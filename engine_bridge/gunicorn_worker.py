"""gunicorn's gevent worker, patching everything except threads, queues and subprocesses.

The engine thread runs vLLM code that starts thread pools (grammar compilation for structured
output), waits on queues and runs subprocesses after the worker has started. With those modules
monkey-patched, a pool thread started from the engine thread became a greenlet in a hub that
never runs and the request waited forever; a subprocess failed outright ("child watchers are
only available on the default loop"). Sockets, DNS, ssl, time, select and signals are still
patched, so every request is a greenlet and the app's I/O is cooperative as usual.
"""

import socket

from gevent import monkey
from gunicorn.workers.ggevent import GeventWorker


class EngineGeventWorker(GeventWorker):
    """Use as worker_class = "engine_bridge.gunicorn_worker.EngineGeventWorker"."""

    def patch(self):
        monkey.patch_all(thread=False, queue=False, subprocess=False)
        # As GeventWorker.patch: rebuild the listening sockets with the patched socket class.
        self.sockets = [socket.socket(s.FAMILY, socket.SOCK_STREAM, fileno=s.sock.detach())
                        for s in self.sockets]
