"""LoadingResponder: answers HTTP on the worker's listening sockets while the engine loads.

gunicorn's master binds the port, then the worker builds the engine before it serves anything
(vLLM must be built before gevent patches the process: docs/engine-notes.md). Without this, a
probe's connection would wait in the accept queue for the whole load. The responder accepts
on the same sockets and answers every request at once with what the server would say
(answer(method, path) -> status, headers, body), then closes the connection; the gevent
worker takes over the sockets once it serves.

It runs in a small forked process of its own (ResponderProcess), not in a thread of the worker:
loading a model holds the worker's GIL for seconds at a time (importing torch's native
libraries blocked a thread for 3.7 s here). Its sockets are C-level _socket objects, so
nothing gevent patches can reach them.
"""

import _socket
import logging
import ctypes
import os
import signal
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

Answer = Callable[[str, str], tuple[int, dict, bytes]]

REASONS = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}
# How often an idle accept loop checks whether it should stop.
POLL_SECONDS = 0.05
# Longest a client may take to send its request (it is answered 503 anyway).
CLIENT_SECONDS = 2.0
MAX_HEADER_BYTES = 64 * 1024
# A request body is read (up to this much) before the answer, so closing the connection does not
# reset it under a client that is still sending; the rest is not read.
MAX_BODY_BYTES = 4 * 1024 * 1024
# Connections answered at once; beyond this a new one is closed at once.
MAX_CONNECTIONS = 64


class LoadingResponder:
    """Answers requests on listening sockets (given as file descriptors) until stop()."""

    def __init__(self, fds: list[int], answer: Answer):
        # Our own duplicates: gunicorn's worker detaches and rewraps its socket objects when gevent
        # patches, and the listening socket stays open for the worker whatever we close.
        self._listeners = []
        for fd in fds:
            listener = _socket.socket(fileno=os.dup(fd))
            listener.settimeout(POLL_SECONDS)
            self._listeners.append(listener)
        self._answer = answer
        self._stopping = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._threads: list[threading.Thread] = []
        self.answered = 0

    def start(self) -> "LoadingResponder":
        for listener in self._listeners:
            thread = threading.Thread(target=self._accept_loop, args=(listener,), name="loading-responder",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting; with a timeout, wait that long for the connections being answered."""
        self._stopping.set()
        if timeout is None:
            return
        for thread in list(self._threads):
            thread.join(timeout)

    def _accept_loop(self, listener) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    fd, _ = listener._accept()
                except (TimeoutError, BlockingIOError, InterruptedError):
                    continue  # nothing waiting, or the gevent worker took the connection first
                except OSError:
                    if self._stopping.is_set():
                        return
                    log.exception("the loading responder could not accept")
                    return
                connection = _socket.socket(fileno=fd)
                if not self._slots.acquire(blocking=False):
                    connection.close()
                    continue
                thread = threading.Thread(target=self._serve, args=(connection,), name="loading-answer",
                                          daemon=True)
                self._threads.append(thread)
                thread.start()
        finally:
            listener.close()

    def _serve(self, connection) -> None:
        try:
            connection.settimeout(CLIENT_SECONDS)
            request = self._read_request(connection)
            if request is None:
                return
            method, path = request
            status, headers, body = self._answer(method, path)
            head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
            head += [f"{name}: {value}" for name, value in headers.items()]
            head += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
            connection.sendall("\r\n".join(head).encode("latin-1") + (b"" if method == "HEAD" else body))
            self.answered += 1
            # Let the client read the answer and close first, so our close does not reset it.
            connection.shutdown(_socket.SHUT_WR)
            connection.settimeout(0.5)
            while connection.recv(65536):
                pass
        except OSError:
            pass
        except Exception:
            log.exception("the loading responder failed to answer")
        finally:
            connection.close()
            self._slots.release()
            try:
                self._threads.remove(threading.current_thread())
            except ValueError:
                pass

    @staticmethod
    def _read_request(connection) -> tuple[str, str] | None:
        """(method, path without query) of the request on connection, its body read and dropped."""
        data = b""
        while b"\r\n\r\n" not in data:
            if len(data) > MAX_HEADER_BYTES:
                return None
            chunk = connection.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return None
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length" and value.strip().isdigit():
                length = int(value.strip())
        remaining = min(length, MAX_BODY_BYTES) - len(body)
        while remaining > 0:
            chunk = connection.recv(min(65536, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
        return parts[0], parts[1].split("?", 1)[0]


class ResponderProcess:
    """A LoadingResponder in a forked child process; stop() tells it to finish and exit."""

    def __init__(self, fds: list[int], answer: Answer):
        stop_read, self._stop_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: answer until the worker closes the pipe (or dies)
            code = 1
            try:
                os.close(self._stop_write)
                _die_with_parent()
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                    signal.signal(sig, signal.SIG_DFL)
                responder = LoadingResponder(fds, answer).start()
                while True:
                    try:
                        if not os.read(stop_read, 1):
                            break
                    except InterruptedError:
                        continue
                responder.stop(timeout=CLIENT_SECONDS + 1.0)
                code = 0
            except BaseException:
                log.exception("the loading responder failed")
            finally:
                os._exit(code)
        os.close(stop_read)
        self.pid = pid

    def stop(self) -> None:
        """Stop accepting; the child finishes the answers it is writing, then exits."""
        if self._stop_write is not None:
            os.close(self._stop_write)
            self._stop_write = None

    def reap(self) -> bool:
        """True once the child has exited (and is reaped); never blocks."""
        from gevent.monkey import get_original  # the real waitpid, also after gevent patched os

        try:
            pid, _ = get_original("os", "waitpid")(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped already (gevent's loop reaps children it sees exit)
            return True
        return pid != 0

    def wait(self, timeout: float) -> None:
        """Wait up to timeout for the child to exit (before the worker exits itself)."""
        import time

        deadline = time.monotonic() + timeout
        while not self.reap() and time.monotonic() < deadline:
            time.sleep(0.02)


def _die_with_parent() -> None:
    """In the child: SIGKILL when the worker dies, however it dies (Linux)."""
    try:
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
