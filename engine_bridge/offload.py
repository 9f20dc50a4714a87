"""Real OS threads for the CPU-heavy part of a request (JSON parsing, chat templates, tokenizing).

The gevent hub runs every greenlet of the worker: a 3 MB prompt tokenized on it froze every
running stream for about 2 s. run_off_hub hands such work to a small pool of real threads and
parks only the calling greenlet; the hub keeps serving. Pure-Python work (Jinja templates,
Marshmallow) still takes the GIL, but Python hands it over every few milliseconds, so the hub
gets its turns; the Rust tokenizers release it while they encode.

The pool's threads also run at a lower CPU priority (OFFLOAD_NICE). On a CPU host the engine's
OpenMP threads occupy every core and wait for each other at every barrier: a tokenizer thread
taking a core from one of them stalls the whole step, so running streams paused for seconds
while someone's megabyte prompt was tokenized. With the pool niced, the kernel gives the engine
the cores it needs and the heavy request waits instead.
"""

import os
import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

import gevent
from gevent.threadpool import ThreadPool

T = TypeVar("T")

# Threads per hub: one per two cores, at most four (OFFLOAD_THREADS overrides it). On a 2-core
# host, with 3 streams running and five 3 MB prompts arriving at once, the longest pause of a
# stream was 0.5 s with one thread and 1.1 s with four (nice 10; 2.8 s with four at nice 0):
# every tokenizer thread takes a core from the engine's OpenMP threads.
DEFAULT_THREADS = max(1, min(4, (os.cpu_count() or 2) // 2))
# How much lower the pool's threads run than the engine (Linux nice steps; 0: the same).
DEFAULT_NICE = 10

_pools: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _threads() -> int:
    value = os.environ.get("OFFLOAD_THREADS", "")
    return max(1, int(value)) if value.strip() else DEFAULT_THREADS


def _pool_of_current_hub() -> ThreadPool:
    hub = gevent.get_hub()
    with _lock:
        pool = _pools.get(hub)
        if pool is None:
            pool = _pools[hub] = ThreadPool(_threads(), hub=hub)
    return pool


_local = threading.local()


def in_pool_thread() -> bool:
    """Whether the caller already runs in one of the pools' threads."""
    return getattr(_local, "in_pool", False)


def _lower_this_threads_priority() -> None:
    value = os.environ.get("OFFLOAD_NICE", "")
    nice = int(value) if value.strip() else DEFAULT_NICE
    if nice > 0 and hasattr(os, "setpriority"):
        # On Linux a thread id names one thread: this lowers only the calling thread.
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice))
        except OSError:
            pass


def _in_pool(fn: Callable[..., T], args, kwargs) -> tuple[bool, "T | BaseException"]:
    if not in_pool_thread():
        _local.in_pool = True
        _lower_this_threads_priority()
    # An exception is handed back as a value: one raised out of a gevent pool thread is also
    # printed to stderr as a bare traceback, and a client's invalid request is no server error.
    try:
        return True, fn(*args, **kwargs)
    except Exception as exc:
        return False, exc


def run_off_hub(fn: Callable[..., T], *args, **kwargs) -> T:
    """fn(*args, **kwargs) in a real thread; the calling greenlet waits, the hub does not.

    Exceptions propagate to the caller. Called from a pool thread, it simply runs fn there.
    """
    if in_pool_thread():
        return fn(*args, **kwargs)
    succeeded, outcome = _pool_of_current_hub().apply(_in_pool, (fn, args, kwargs))
    if succeeded:
        return outcome
    raise outcome
