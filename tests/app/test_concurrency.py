"""The concurrency cap shared through a real redis-server: leases, expiry of a dead holder, fallback."""

import logging
import time
import uuid

import gevent
import pytest
import redis

from app import concurrency
from app.concurrency import SharedConcurrencyLimit
from app.errors import APIError
from tests.conftest import STAND_IN_MODEL, make_stand_in_bridge
from tests.stand_in import StandInEngine

CHAT = "/v1/chat/completions"


def replicas(url: str, limit: int, lease_seconds: float = 30.0, count: int = 2) -> list[SharedConcurrencyLimit]:
    """count caps as count replicas would build them, sharing one fresh key."""
    key = f"test-concurrency:{uuid.uuid4().hex}"
    return [SharedConcurrencyLimit(limit, url, lease_seconds, key=key) for _ in range(count)]


def refused(cap: SharedConcurrencyLimit, weight: int) -> APIError:
    with pytest.raises(APIError) as caught:
        cap.acquire(weight)
    assert caught.value.status == 429 and caught.value.code == "concurrency_limit_exceeded"
    return caught.value


def test_replicas_share_one_cap_counting_sequences(redis_url):
    first, second = replicas(redis_url, limit=4)
    release_three = first.acquire(3)
    error = refused(second, 2)
    assert "across its replicas" in str(error) and "3 in use" in str(error)
    release_one = second.acquire(1)
    refused(first, 1)
    assert (first.in_use, second.in_use) == (3, 1)
    release_three()
    release_three()  # a second call gives nothing back twice
    release_more = second.acquire(3)
    refused(first, 1)
    release_one()
    release_more()
    assert first.acquire(4) and (first.in_use, second.in_use) == (4, 0)


def test_a_dead_holders_slots_come_back_after_the_lease(redis_url):
    holder, survivor = replicas(redis_url, limit=4, lease_seconds=1.0)
    holder.acquire(4)
    # The holder "dies": nothing refreshes its leases (its refresher greenlet never runs while
    # this test sleeps without yielding to gevent's hub).
    refused(survivor, 1)
    time.sleep(0.5)
    refused(survivor, 1)
    time.sleep(0.7)
    survivor.acquire(4)
    assert redis.Redis.from_url(redis_url).zcard(survivor.key) == 4


def test_a_live_holder_keeps_its_slots_past_the_lease(redis_url):
    holder, other = replicas(redis_url, limit=2, lease_seconds=1.0)
    release = holder.acquire(2)
    gevent.sleep(2.5)  # the holder's refresher runs every third of a second meanwhile
    refused(other, 1)
    release()
    other.acquire(2)


def test_without_redis_the_cap_counts_in_the_process_and_comes_back(redis_server, monkeypatch, caplog):
    monkeypatch.setattr(concurrency, "RETRY_REDIS_SECONDS", 0.5)
    first, second = replicas(redis_server.url, limit=2)
    held = first.acquire(1)
    redis_server.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="app.concurrency"):
            started = time.monotonic()
            local = first.acquire(2)  # the cap, in this process alone: the lease it held is not counted
            assert time.monotonic() - started < 2
            assert first.counting_locally and first.local.in_use == 2
            refused(first, 1)
            assert second.acquire(2)  # the other replica allows its own MAX_CONCURRENT meanwhile
        assert "Redis is unreachable" in caplog.text
        held()  # its lease cannot be removed now; it expires by itself
        local()
    finally:
        redis_server.start()
    time.sleep(0.6)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="app.concurrency"):
        shared = first.acquire(2)
    assert "Redis answers again" in caplog.text and not first.counting_locally
    refused(second, 1)  # counted across replicas again
    shared()
    assert second.acquire(2)


def test_the_app_refuses_over_a_cap_held_by_another_replica(make_client, redis_url):
    """Two apps (two replicas) on one Redis with MAX_CONCURRENT=1: a stream on one fills the cap for both."""
    # A long lease: nothing yields to gevent's hub here to refresh it, and the first generation
    # imports vLLM, which takes a minute on a busy machine.
    key_config = {"CONCURRENCY_STORAGE_URI": redis_url, "MAX_CONCURRENT": 1, "CONCURRENCY_LEASE_SECONDS": 600}
    engine = StandInEngine(answer=" ".join(["w"] * 1000), step_delay=0.01, max_model_len=4096)
    first = make_client(make_stand_in_bridge(engine), **key_config)
    second = make_client(**key_config)
    body = {"model": STAND_IN_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    stream = first.post(CHAT, json={**body, "max_tokens": 1000, "stream": True}, buffered=False)
    events = iter(stream.response)
    next(events)
    response = second.post(CHAT, json=body)
    assert response.status_code == 429
    error = response.get_json()["error"]
    assert error["code"] == "concurrency_limit_exceeded" and "across its replicas" in error["message"]
    assert response.headers["Retry-After"] == "1"
    stream.close()
    assert second.post(CHAT, json=body).status_code == 200
