"""engine_bridge.offload: CPU-heavy work in real threads, the gevent hub free meanwhile."""

import os
import threading
import time

import gevent
import pytest

from engine_bridge.offload import DEFAULT_NICE, run_off_hub


def test_work_runs_in_another_thread_and_the_hub_keeps_running():
    ticks = []

    def ticker():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    greenlet = gevent.spawn(ticker)
    gevent.sleep(0)
    started = time.monotonic()
    # A blocking call of half a second, as a long tokenization would be.
    where = run_off_hub(lambda: time.sleep(0.5) or threading.get_ident())
    greenlet.kill()
    assert where != threading.get_ident()
    during = [t for t in ticks if t >= started]
    assert len(during) > 20  # the hub ticked all along
    assert max(b - a for a, b in zip(during, during[1:])) < 0.2


def test_errors_reach_the_caller_and_nested_calls_run_in_place():
    with pytest.raises(ZeroDivisionError):
        run_off_hub(lambda: 1 / 0)
    outer, inner = run_off_hub(lambda: (threading.get_ident(), run_off_hub(threading.get_ident)))
    assert outer == inner


def test_pool_threads_run_at_a_lower_priority():
    own = os.getpriority(os.PRIO_PROCESS, 0)
    theirs = run_off_hub(lambda: os.getpriority(os.PRIO_PROCESS, 0))
    assert theirs == min(19, own + DEFAULT_NICE)
    assert os.getpriority(os.PRIO_PROCESS, 0) == own


def test_an_error_in_the_pool_is_raised_to_the_caller_and_printed_nowhere(capfd):
    def invalid():
        raise ValueError("a client's invalid request")

    with pytest.raises(ValueError, match="invalid request") as caught:
        run_off_hub(invalid)
    assert "invalid" in "".join(str(entry) for entry in caught.traceback)
    gevent.sleep(0.05)
    assert "Traceback" not in capfd.readouterr().err
