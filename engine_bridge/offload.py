"""Real OS threads for the CPU-heavy part of a request (JSON parsing, chat templates, tokenizing).

The gevent hub runs every greenlet of the worker: a 3 MB prompt tokenized on it froze every
running stream for about 2 s. run_off_hub hands such work to a small pool of real threads and
parks only the calling greenlet; the hub keeps serving. Pure-Python work (Jinja templates,
Marshmallow) still takes the GIL, but Python hands it over every few milliseconds, so the hub
gets its turns; the Rust tokenizers release it while they encode.
"""

import os
import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

import gevent
from gevent.threadpool import ThreadPool

T = TypeVar("T")

# Threads per hub; more only queue for the same two cores here. OFFLOAD_THREADS overrides it.
DEFAULT_THREADS = 4

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


def in_pool_thread() -> bool:
    """Whether the caller already runs in one of the pools' threads."""
    return getattr(_local, "in_pool", False)


_local = threading.local()


def _marked(fn: Callable[..., T], args, kwargs) -> T:
    _local.in_pool = True
    return fn(*args, **kwargs)


def run_off_hub(fn: Callable[..., T], *args, **kwargs) -> T:
    """fn(*args, **kwargs) in a real thread; the calling greenlet waits, the hub does not.

    Exceptions propagate to the caller. Called from a pool thread, it simply runs fn there.
    """
    if in_pool_thread():
        return fn(*args, **kwargs)
    return _pool_of_current_hub().apply(_marked, (fn, args, kwargs))
