"""vLLM's executor worker processes (TENSOR_PARALLEL_SIZE / PIPELINE_PARALLEL_SIZE > 1) end with their parent.

With more than one rank on one host, vLLM's multiprocessing executor starts one worker process
per rank from the process that owns the engine: here the gunicorn worker (the engine core runs
in-process). A drain or an engine failure stops them through vLLM's own shutdown. But when the
gunicorn worker is killed (kill -9, the OOM killer, gunicorn's SIGKILL after a timeout), vLLM 0.32
on CPU let them run on: reparented to init, all three ranks spinning at full CPU for about 50 s
before they went away, while the fresh worker loaded the model beside them. vLLM's own "death
pipe" saw the parent go but did not end the rank.

Two easier ways fall short. PR_SET_PDEATHSIG on the rank fires when the *thread* that started it
ends, and vLLM starts the ranks from the engine-loader thread, which ends once the engine is
ready. A watcher thread inside the rank (tried first) needs the rank's GIL: in one run one of three
ranks, caught in the middle of its own shutdown, never ran it for more than 30 s. So each rank starts a
tiny watcher process of its own: it waits on a pidfd of the gunicorn worker and SIGKILLs the
rank when the worker is gone, and it dies with the rank (PR_SET_PDEATHSIG, set from the rank's
main thread, which lives as long as the rank).
"""

import multiprocessing
import os
import subprocess
import sys

# vLLM's own WorkerProc.worker_main, kept when it is replaced (a forked rank finds it here).
_vllm_worker_main = None
# The rank's watcher process, referenced for the rank's whole life.
_watcher: subprocess.Popen | None = None

# Run with `python -I -S -c`: argv[1] is the gunicorn worker's pid, argv[2] the rank's.
WATCHER_SOURCE = """
import ctypes, os, select, signal, sys
parent, rank = int(sys.argv[1]), int(sys.argv[2])
PR_SET_PDEATHSIG = 1
ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
if os.getppid() != rank:
    sys.exit(0)  # the rank is already gone
try:
    handle = os.pidfd_open(parent)
except ProcessLookupError:
    handle = None
def rank_parent():
    with open(f"/proc/{rank}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])
if handle is not None and rank_parent() == parent:
    select.select([handle], [], [])
sys.stderr.write(f"vLLM rank process {rank}: its parent {parent} is gone; killing it\\n")
os.kill(rank, signal.SIGKILL)
"""


def make_workers_exit_with_parent() -> None:
    """Have every executor worker vLLM starts from now on end when the process that started it is gone.

    vLLM starts a rank as multiprocessing.Process(target=WorkerProc.worker_main); replacing that
    attribute makes the target worker_main below, which a spawned rank imports by name from this
    module (so it must stay importable without side effects).
    """
    global _vllm_worker_main
    from vllm.v1.executor.multiproc_executor import WorkerProc

    if _vllm_worker_main is None:
        _vllm_worker_main = WorkerProc.worker_main
        WorkerProc.worker_main = staticmethod(worker_main)


def worker_main(*args, **kwargs):
    """In the rank process: start its watcher, then run vLLM's own worker_main."""
    global _watcher
    parent = multiprocessing.parent_process()
    parent_pid = parent.pid if parent is not None else os.getppid()
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent died while this rank was starting
    _watcher = subprocess.Popen([sys.executable, "-I", "-S", "-c", WATCHER_SOURCE, str(parent_pid),
                                 str(os.getpid())], stdin=subprocess.DEVNULL)
    vllm_worker_main = _vllm_worker_main  # set in a forked rank, None in a spawned one
    if vllm_worker_main is None:
        from vllm.v1.executor.multiproc_executor import WorkerProc

        vllm_worker_main = WorkerProc.worker_main  # not replaced in this fresh interpreter
    return vllm_worker_main(*args, **kwargs)
