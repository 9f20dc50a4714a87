"""The engine thread: one real OS thread per process owns the LLMEngine; greenlets wait on queues.

Requests reach the thread through a thread-safe inbox; each engine step's outputs go back to
the waiting greenlets through a mailbox per gevent hub (one wake-up per step, not per token),
so the worker's event loop never blocks on the engine.
"""

import enum
import itertools
import logging
import threading
import time
import weakref
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

# The C SimpleQueue: gevent's monkey-patching replaces queue.SimpleQueue but never _queue,
# and this one must block a real OS thread, not a greenlet.
from _queue import Empty, SimpleQueue

import gevent
import gevent.queue

from engine_bridge.engine import build_engine
from engine_bridge.errors import (
    ContextLengthExceeded,
    EngineFailed,
    EngineNotReady,
    RequestRejected,
)
from engine_bridge.settings import EngineSettings

log = logging.getLogger(__name__)


class EngineState(str, enum.Enum):
    """Where the engine is in its life; only READY accepts requests."""

    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class SamplingOptions:
    """Sampling parameters in plain Python; the bridge turns them into vLLM's SamplingParams."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChoiceDelta:
    """What one choice gained in one engine step."""

    index: int
    text: str
    token_count: int
    finish_reason: str | None


@dataclass(frozen=True)
class GenerationUpdate:
    """One engine step's output for one request."""

    choices: list[ChoiceDelta]
    prompt_tokens: int
    finished: bool


def _client_errors() -> tuple[type[BaseException], ...]:
    """What vLLM raises for a request it refuses (as opposed to an engine fault)."""
    from vllm.exceptions import VLLMClientError

    return (ValueError, TypeError, VLLMClientError)


def _rejection(exc: BaseException) -> RequestRejected:
    message = str(exc)
    param = getattr(exc, "parameter", None)
    if param is not None:  # vLLM appends "(parameter=..., value=...)"; the param field says it
        message = exc.args[0] if exc.args else message
    return RequestRejected(message, param=param)


def _start_os_thread(target: Callable[[], None], name: str) -> None:
    """Start target in a real OS thread, even after gevent has patched threading."""
    try:
        from gevent.monkey import get_original

        start_new_thread = get_original("_thread", "start_new_thread")
    except ImportError:  # pragma: no cover - gevent is a hard dependency
        import _thread

        start_new_thread = _thread.start_new_thread
    log.debug("starting OS thread %s", name)
    start_new_thread(target, ())


class _Mailbox:
    """Delivery into one gevent hub from any thread: the engine thread posts, the hub delivers.

    An async watcher wakes the hub. Unlike loop.run_callback_threadsafe, the watcher holds a
    reference on the loop, so a greenlet waiting for the engine does not get LoopExit when
    nothing else (no server socket, no timer) is pending on that hub, as in tests or scripts.
    """

    _by_hub: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def __init__(self, hub):
        self._batches: deque = deque()  # append and popleft are thread-safe
        self._watcher = hub.loop.async_()
        self._watcher.start(self._deliver_all)

    @classmethod
    def of_current_hub(cls) -> "_Mailbox":
        """The mailbox of the calling greenlet's hub (created on first use)."""
        hub = gevent.get_hub()
        mailbox = cls._by_hub.get(hub)
        if mailbox is None:
            mailbox = cls._by_hub[hub] = cls(hub)
        return mailbox

    def post(self, batch: list) -> None:
        """Called from the engine thread: queue (stream, item) pairs and wake the hub."""
        self._batches.append(batch)
        self._watcher.send()

    def _deliver_all(self) -> None:
        while self._batches:
            for stream, item in self._batches.popleft():
                stream._deliver(item)


class GenerationStream:
    """The updates of one request, consumed by the greenlet that submitted it.

    Iterate it to get GenerationUpdates until the request finishes; an error from the engine
    is raised from the iteration. Closing it early (client gone) aborts the engine request.
    """

    def __init__(self, bridge: "EngineBridge", request_id: str, prompt_tokens: int):
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.mailbox = _Mailbox.of_current_hub()
        self._bridge = bridge
        self._queue: gevent.queue.Queue = gevent.queue.Queue()
        self._finished = False

    def next_update(self, timeout: float | None = None) -> GenerationUpdate | None:
        """Wait for the next update; None if timeout passed first. Raises the engine's error."""
        try:
            item = self._queue.get(timeout=timeout)
        except gevent.queue.Empty:
            return None
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        if item.finished:
            self._finished = True
        return item

    def __iter__(self) -> Iterator[GenerationUpdate]:
        while not self._finished:
            yield self.next_update()

    @property
    def finished(self) -> bool:
        return self._finished

    def close(self) -> None:
        """Abort the engine request unless it already finished."""
        if not self._finished:
            self._finished = True
            self._bridge.abort(self.request_id)

    def _deliver(self, item: "GenerationUpdate | BaseException") -> None:
        # Runs in the hub that owns this stream (or the stream's own greenlet), never in the engine thread.
        self._queue.put_nowait(item)


class EngineBridge:
    """Owns the LLMEngine and the one OS thread that drives it."""

    def __init__(
        self,
        settings: EngineSettings | None = None,
        engine_factory: Callable[[EngineSettings], object] = build_engine,
        tokenizer_factory: Callable[[str], object] | None = None,
    ):
        self.settings = settings or EngineSettings.from_env()
        self._engine_factory = engine_factory
        self._tokenizer_factory = tokenizer_factory
        self._engine = None
        self._tokenizer = None
        self._inbox: SimpleQueue = SimpleQueue()
        self._streams: dict[str, GenerationStream] = {}  # engine thread only
        self._ids = itertools.count()
        self._state = EngineState.LOADING
        self.failure: BaseException | None = None
        self.loaded_at: float | None = None
        self.max_model_len: int | None = None
        self._thread_done = threading.Event()

    # -- life cycle -------------------------------------------------------------------------

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def model_name(self) -> str:
        return self.settings.served_model_name

    def load(self, keepalive: Callable[[], None] | None = None, keepalive_interval: float = 1.0) -> None:
        """Build the engine and start its thread; calls keepalive() while waiting, if given.

        gunicorn calls this from post_fork with the worker's heartbeat as keepalive, so a model
        that takes minutes to load does not get the worker killed for missing heartbeats.
        """
        if keepalive is None:
            self._build()
        else:
            builder = threading.Thread(target=self._build, name="engine-loader", daemon=True)
            builder.start()
            while builder.is_alive():
                keepalive()
                builder.join(keepalive_interval)
        if self._state is EngineState.FAILED:
            raise EngineFailed(f"the engine failed to load: {self.failure}") from self.failure

    def load_in_background(self) -> None:
        """Build the engine in a real OS thread and return at once (state stays LOADING until done)."""
        _start_os_thread(self._build_quietly, "engine-loader")

    def _build_quietly(self) -> None:
        self._build()

    def _build(self) -> None:
        try:
            engine = self._engine_factory(self.settings)
            tokenizer = self._make_tokenizer(engine)
            self.max_model_len = int(engine.model_config.max_model_len)
        except BaseException as exc:
            log.exception("engine failed to load")
            self.failure = exc
            self._state = EngineState.FAILED
            return
        self._engine, self._tokenizer = engine, tokenizer
        self.loaded_at = time.time()
        _start_os_thread(self._run, "engine-loop")
        self._state = EngineState.READY
        log.info("engine ready: %s (max_model_len=%s)", self.model_name, self.max_model_len)

    def _make_tokenizer(self, engine):
        # A tokenizer of our own for the request side: the engine thread detokenizes with the
        # engine's instance, and HF fast tokenizers must not be shared across threads.
        if self._tokenizer_factory is not None:
            return self._tokenizer_factory(self.settings.model)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(engine.model_config.tokenizer)

    def begin_drain(self) -> None:
        """Refuse new requests from now on; requests in flight go on."""
        if self._state is EngineState.READY:
            self._state = EngineState.DRAINING

    def shutdown(self, timeout: float = 10.0) -> None:
        """Abort what is left, stop the engine thread and wait for it."""
        if self._state in (EngineState.READY, EngineState.DRAINING):
            self._state = EngineState.STOPPED
            self._inbox.put(("stop",))
            if not self._thread_done.wait(timeout):
                log.warning("engine thread did not stop within %.0f s", timeout)
        else:
            self._state = EngineState.STOPPED

    # -- request side (greenlets) -----------------------------------------------------------

    def render_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of the model's chat template applied to messages, ready for generation."""
        self._require_ready()
        text = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # The template already holds every special token the model expects.
        return self._tokenizer.encode(text, add_special_tokens=False)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a plain completion prompt, with the tokenizer's usual special tokens."""
        self._require_ready()
        return self._tokenizer.encode(text)

    def generate(self, prompt_token_ids: list[int], options: SamplingOptions, request_id: str | None = None) -> GenerationStream:
        """Submit a request to the engine thread and return the stream of its updates."""
        self._require_ready()
        prompt_tokens = len(prompt_token_ids)
        if prompt_tokens + options.max_tokens > self.max_model_len:
            raise ContextLengthExceeded(prompt_tokens, options.max_tokens, self.max_model_len)
        params = self._sampling_params(options)
        request_id = f"{request_id or 'req'}-{next(self._ids)}"
        stream = GenerationStream(self, request_id, prompt_tokens)
        self._inbox.put(("add", stream, {"prompt_token_ids": list(prompt_token_ids)}, params))
        if self._state is EngineState.FAILED:
            # The thread may have died after the check above and never read the inbox.
            stream._deliver(EngineFailed("the engine stopped"))
        return stream

    def unfinished_requests(self) -> int:
        """How many requests the engine holds right now (running or waiting)."""
        engine = self._engine
        return engine.get_num_unfinished_requests() if engine is not None else 0

    def abort(self, request_id: str) -> None:
        """Ask the engine thread to abort a request (a no-op once it finished)."""
        if self._state in (EngineState.READY, EngineState.DRAINING):
            self._inbox.put(("abort", request_id))

    def _require_ready(self) -> None:
        if self._state is EngineState.READY:
            return
        if self._state is EngineState.FAILED:
            raise EngineFailed("the engine has failed; see the server log")
        raise EngineNotReady(f"the engine is {self._state.value}")

    @staticmethod
    def _sampling_params(options: SamplingOptions):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        try:
            return SamplingParams(
                n=options.n,
                max_tokens=options.max_tokens,
                temperature=options.temperature,
                top_p=options.top_p,
                frequency_penalty=options.frequency_penalty,
                presence_penalty=options.presence_penalty,
                seed=options.seed,
                stop=list(options.stop) or None,
                # Only the new tokens of each step: the bridge never re-sends the text so far.
                output_kind=RequestOutputKind.DELTA,
            )
        except _client_errors() as exc:
            raise _rejection(exc) from exc

    # -- engine thread ----------------------------------------------------------------------

    def _run(self) -> None:
        engine = self._engine
        try:
            while True:
                if not self._take_commands(block=not engine.has_unfinished_requests()):
                    return
                if engine.has_unfinished_requests():
                    self._publish(engine.step())
        except BaseException as exc:
            log.exception("engine thread died")
            self.failure = exc
            self._state = EngineState.FAILED
            self._fail_all(EngineFailed(f"the engine failed: {type(exc).__name__}"))
        finally:
            self._thread_done.set()

    def _take_commands(self, block: bool) -> bool:
        """Apply every waiting command; wait for one first if block. False once told to stop."""
        try:
            command = self._inbox.get() if block else self._inbox.get_nowait()
        except Empty:
            return True
        while True:
            if command[0] == "add":
                self._add(*command[1:])
            elif command[0] == "abort":
                self._abort(command[1])
            else:
                self._fail_all(EngineNotReady("the server is shutting down"))
                return False
            try:
                command = self._inbox.get_nowait()
            except Empty:
                return True

    def _add(self, stream: GenerationStream, prompt: dict, params) -> None:
        if stream.finished:  # closed before the engine saw it
            return
        try:
            self._engine.add_request(stream.request_id, prompt, params)
        except _client_errors() as exc:
            self._send([(stream, _rejection(exc))])
            return
        self._streams[stream.request_id] = stream

    def _abort(self, request_id: str) -> None:
        if self._streams.pop(request_id, None) is not None:
            self._engine.abort_request([request_id])

    def _publish(self, outputs: list) -> None:
        items = []
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:  # aborted while this step ran
                continue
            if output.finished:
                del self._streams[output.request_id]
            choices = [
                ChoiceDelta(c.index, c.text, len(c.token_ids), c.finish_reason) for c in output.outputs
            ]
            items.append((stream, GenerationUpdate(choices, len(output.prompt_token_ids or ()), output.finished)))
        self._send(items)

    def _fail_all(self, error: BaseException) -> None:
        streams = list(self._streams.values())
        self._streams.clear()
        while True:  # requests still in the inbox fail too
            try:
                command = self._inbox.get_nowait()
            except Empty:
                break
            if command[0] == "add":
                streams.append(command[1])
        for stream in streams:
            if self._engine is not None and not isinstance(error, EngineFailed):
                try:
                    self._engine.abort_request([stream.request_id])
                except Exception:
                    log.exception("abort during shutdown failed")
        self._send([(stream, error) for stream in streams])

    @staticmethod
    def _send(items: list) -> None:
        """Hand items to their greenlets: one post per hub per step, in order."""
        by_mailbox = defaultdict(list)
        for stream, item in items:
            by_mailbox[stream.mailbox].append((stream, item))
        for mailbox, batch in by_mailbox.items():
            mailbox.post(batch)
