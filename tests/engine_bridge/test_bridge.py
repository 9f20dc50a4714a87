"""The engine thread with a stand-in engine: delivery, aborts, failures and shutdown."""

import threading
import time

import gevent
import pytest

from engine_bridge import (
    ContextLengthExceeded,
    EngineBridge,
    EngineFailed,
    EngineNotReady,
    EngineSettings,
    EngineState,
    GenerationInterrupted,
    RequestRejected,
    SamplingOptions,
)
from tests.conftest import make_stand_in_bridge
from tests.stand_in import DEFAULT_ANSWER, StandInEngine, StandInTokenizer


def collect(stream):
    text, finish = [], None
    for update in stream:
        for choice in update.choices:
            text.append(choice.text)
            finish = choice.finish_reason or finish
    return "".join(text), finish


def test_generate_delivers_every_token_in_order_then_finishes(stand_in_bridge):
    stream = stand_in_bridge.generate([[1, 2, 3]], SamplingOptions(max_tokens=50))
    text, finish = collect(stream)
    assert text == DEFAULT_ANSWER
    assert finish == "stop"
    assert stream.finished


def test_max_tokens_ends_with_length(stand_in_bridge):
    text, finish = collect(stand_in_bridge.generate([[1]], SamplingOptions(max_tokens=2)))
    assert text == "Hello from"
    assert finish == "length"


def test_updates_report_the_prompt_length(stand_in_bridge):
    stream = stand_in_bridge.generate([[5, 5, 5, 5]], SamplingOptions(max_tokens=3))
    assert {update.prompt_tokens for update in stream} == {4}


def test_engine_steps_run_in_one_real_os_thread(stand_in_bridge):
    for _ in range(3):
        collect(stand_in_bridge.generate([[1]], SamplingOptions(max_tokens=3)))
    threads = stand_in_bridge.engine_for_tests.step_threads
    assert len(threads) == 1
    assert threads != {threading.get_ident()}


def test_waiting_greenlets_keep_running_while_the_engine_steps():
    """A greenlet ticking during generation keeps ticking: the engine never blocks the hub."""
    bridge = make_stand_in_bridge(StandInEngine(answer=" ".join(["w"] * 30), step_delay=0.02))
    try:
        ticks = []

        def ticker():
            while True:
                ticks.append(time.monotonic())
                gevent.sleep(0.01)

        ticking = gevent.spawn(ticker)
        started = time.monotonic()
        collect(bridge.generate([[1]], SamplingOptions(max_tokens=30)))
        elapsed = time.monotonic() - started
        ticking.kill()
        # 30 steps of 20 ms: the ticker must have run throughout, not only at the end.
        assert elapsed >= 0.5
        gaps = [b - a for a, b in zip(ticks, ticks[1:])]
        assert len(ticks) >= elapsed / 0.01 * 0.5
        assert max(gaps) < 0.1
    finally:
        bridge.shutdown()


def test_concurrent_requests_each_get_their_own_text(stand_in_bridge):
    streams = [stand_in_bridge.generate([[i + 1]], SamplingOptions(max_tokens=50)) for i in range(8)]
    results = [gevent.spawn(collect, s) for s in streams]
    gevent.joinall(results, raise_error=True)
    assert [g.value for g in results] == [(DEFAULT_ANSWER, "stop")] * 8


def test_n_choices_arrive_with_their_index(stand_in_bridge):
    stream = stand_in_bridge.generate([[1]], SamplingOptions(max_tokens=50, n=3))
    texts = {}
    for update in stream:
        for choice in update.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {0: DEFAULT_ANSWER, 1: DEFAULT_ANSWER, 2: DEFAULT_ANSWER}


def test_closing_a_stream_aborts_its_engine_request():
    engine = StandInEngine(answer=" ".join(["w"] * 1000), step_delay=0.005, max_model_len=4096)
    bridge = make_stand_in_bridge(engine)
    try:
        stream = bridge.generate([[1]], SamplingOptions(max_tokens=1000))
        stream.next_update()
        stream.close()
        deadline = time.monotonic() + 2
        while engine.has_unfinished_requests() and time.monotonic() < deadline:
            gevent.sleep(0.01)
        assert engine.aborted == [stream.request_id]
        assert not engine.has_unfinished_requests()
        # The engine goes on serving others.
        assert collect(bridge.generate([[1]], SamplingOptions(max_tokens=2)))[0] == "w w"
    finally:
        bridge.shutdown()


def test_prompt_plus_max_tokens_over_the_context_is_refused(stand_in_bridge):
    with pytest.raises(ContextLengthExceeded) as info:
        stand_in_bridge.generate([[1] * 250], SamplingOptions(max_tokens=10))
    assert "256" in str(info.value) and "250" in str(info.value)


def test_a_request_the_engine_rejects_fails_alone():
    bridge = make_stand_in_bridge(StandInEngine(reject_prompt_len=2))
    try:
        good = bridge.generate([[1]], SamplingOptions(max_tokens=50))
        bad = bridge.generate([[1, 1]], SamplingOptions(max_tokens=50))
        with pytest.raises(RequestRejected):
            collect(bad)
        assert collect(good) == (DEFAULT_ANSWER, "stop")
        assert bridge.state is EngineState.READY
    finally:
        bridge.shutdown()


def test_invalid_sampling_values_are_rejected_before_reaching_the_engine(stand_in_bridge):
    with pytest.raises(RequestRejected):
        stand_in_bridge.generate([[1]], SamplingOptions(max_tokens=5, temperature=-1.0))
    assert stand_in_bridge.engine_for_tests.added == []


def test_an_engine_failure_ends_every_stream_and_marks_the_bridge_failed():
    bridge = make_stand_in_bridge(StandInEngine(fail_after_steps=2, step_delay=0.01))
    try:
        streams = [bridge.generate([[1]], SamplingOptions(max_tokens=50)) for _ in range(3)]
        for stream in streams:
            with pytest.raises(EngineFailed):
                collect(stream)
        assert bridge.state is EngineState.FAILED
        with pytest.raises(EngineFailed):
            bridge.generate([[1]], SamplingOptions())
    finally:
        bridge.shutdown()


def test_requests_before_the_engine_is_ready_are_refused():
    bridge = make_stand_in_bridge(load=False)
    assert bridge.state is EngineState.LOADING
    with pytest.raises(EngineNotReady):
        bridge.generate([[1]], SamplingOptions())


def test_a_failed_load_is_reported_not_raised_in_background():
    def broken(settings):
        raise OSError("no such model")

    bridge = EngineBridge(EngineSettings(model="missing"), engine_factory=broken,
                          tokenizer_factory=lambda m: StandInTokenizer())
    bridge.load_in_background()
    deadline = time.monotonic() + 5
    while bridge.state is EngineState.LOADING and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bridge.state is EngineState.FAILED
    assert isinstance(bridge.failure, OSError)


def test_load_keeps_the_heartbeat_going_while_the_model_loads():
    beats = []

    def slow_factory(settings):
        time.sleep(1.0)
        return StandInEngine()

    bridge = EngineBridge(EngineSettings(model="slow"), engine_factory=slow_factory,
                          tokenizer_factory=lambda m: StandInTokenizer())
    bridge.load(keepalive=lambda: beats.append(time.monotonic()), keepalive_interval=0.1)
    try:
        assert bridge.state is EngineState.READY
        assert len(beats) >= 5
    finally:
        bridge.shutdown()


def test_shutdown_ends_streams_in_flight_and_stops_the_thread():
    engine = StandInEngine(answer=" ".join(["w"] * 1000), step_delay=0.005, max_model_len=4096)
    bridge = make_stand_in_bridge(engine)
    stream = bridge.generate([[1]], SamplingOptions(max_tokens=1000))
    stream.next_update()
    bridge.shutdown()
    with pytest.raises(GenerationInterrupted):
        collect(stream)
    assert bridge.state is EngineState.STOPPED
    assert not engine.has_unfinished_requests()


def test_draining_refuses_new_requests_but_finishes_old_ones(stand_in_bridge):
    stream = stand_in_bridge.generate([[1]], SamplingOptions(max_tokens=50))
    stand_in_bridge.begin_drain()
    with pytest.raises(EngineNotReady):
        stand_in_bridge.generate([[1]], SamplingOptions())
    assert collect(stream) == (DEFAULT_ANSWER, "stop")


def test_several_prompts_run_as_one_stream_tagged_by_prompt_index(stand_in_bridge):
    stream = stand_in_bridge.generate([[1], [2, 2], [3, 3, 3]], SamplingOptions(max_tokens=2))
    texts, prompt_tokens = {}, {}
    for update in stream:
        prompt_tokens[update.prompt_index] = update.prompt_tokens
        for choice in update.choices:
            texts[update.prompt_index] = texts.get(update.prompt_index, "") + choice.text
    assert texts == {0: "Hello from", 1: "Hello from", 2: "Hello from"}
    assert prompt_tokens == {0: 1, 1: 2, 2: 3}
    assert len(set(stream.request_ids)) == 3


def test_closing_a_several_prompt_stream_aborts_every_prompt():
    engine = StandInEngine(answer=" ".join(["w"] * 1000), step_delay=0.005, max_model_len=4096)
    bridge = make_stand_in_bridge(engine)
    try:
        stream = bridge.generate([[1], [2]], SamplingOptions(max_tokens=1000))
        stream.next_update()
        stream.close()
        deadline = time.monotonic() + 2
        while engine.has_unfinished_requests() and time.monotonic() < deadline:
            gevent.sleep(0.01)
        assert sorted(engine.aborted) == sorted(stream.request_ids)
    finally:
        bridge.shutdown()


def test_a_draining_bridge_still_detokenizes_for_requests_in_flight(stand_in_bridge):
    stand_in_bridge.begin_drain()
    assert stand_in_bridge.token_texts([1, 2]) == [stand_in_bridge.detokenize([1]), stand_in_bridge.detokenize([2])]
    with pytest.raises(EngineNotReady):
        stand_in_bridge.tokenize("new work")
