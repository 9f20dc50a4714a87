"""The engine thread: one real OS thread per process owns the LLMEngine; greenlets wait on queues.

Requests reach the thread through a thread-safe inbox; each engine step's outputs go back to
the waiting greenlets through a mailbox per gevent hub (one wake-up per step, not per token),
so the worker's event loop never blocks on the engine.
"""

import enum
import importlib
import itertools
import logging
import threading
import time
import weakref
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence

# The C SimpleQueue: gevent's monkey-patching replaces queue.SimpleQueue but never _queue,
# and this one must block a real OS thread, not a greenlet.
from _queue import Empty, SimpleQueue

import gevent
import gevent.queue

from engine_bridge.conversion import client_errors, lora_request, rejection, sampling_params, update_from_output
from engine_bridge.engine import build_engine
from engine_bridge.errors import (ContextLengthExceeded, EngineFailed, EngineNotReady, GenerationInterrupted,
                                   RequestRejected)
from engine_bridge.offload import run_off_hub
from engine_bridge.settings import EngineSettings
from engine_bridge.tool_calls import (
    ToolCalling,
    hermes_messages,
    messages_for_tool_template,
    template_supports_tools,
    tool_parser_class,
)
from engine_bridge.types import GenerationUpdate, SamplingOptions

log = logging.getLogger(__name__)

# Seconds between "still loading" lines while a model loads.
PROGRESS_INTERVAL = 10.0


class EngineState(str, enum.Enum):
    """Where the engine is in its life; only READY accepts requests."""

    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"
    STOPPED = "stopped"


def _start_os_thread(target: Callable[[], None], name: str) -> None:
    """Start target in a real OS thread, even after gevent has patched threading."""
    from gevent.monkey import get_original

    log.debug("starting OS thread %s", name)
    get_original("_thread", "start_new_thread")(target, ())


def _import_factory(path: str) -> Callable[[EngineSettings], object]:
    """The callable named by "module:function"."""
    module_name, _, name = path.partition(":")
    return getattr(importlib.import_module(module_name), name)


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
    """The updates of one request (one engine request per prompt), for the greenlet that made it.

    Iterate it to get GenerationUpdates until every prompt is finished; an error from the engine
    is raised from the iteration. Closing it early (client gone) aborts what is still running.
    """

    def __init__(self, bridge: "EngineBridge", request_ids: list[str], prompt_tokens: list[int]):
        self.request_ids = request_ids
        self.prompt_tokens = prompt_tokens
        self.mailbox = _Mailbox.of_current_hub()
        self._bridge = bridge
        self._queue: gevent.queue.Queue = gevent.queue.Queue()
        self._unfinished = set(range(len(request_ids)))
        self._failed = False

    @property
    def request_id(self) -> str:
        return self.request_ids[0]

    @property
    def finished(self) -> bool:
        return self._failed or not self._unfinished

    def next_update(self, timeout: float | None = None) -> GenerationUpdate | None:
        """Wait for the next update; None if timeout passed first. Raises the engine's error."""
        try:
            item = self._queue.get(timeout=timeout)
        except gevent.queue.Empty:
            return None
        if isinstance(item, BaseException):
            self.close()
            raise item
        if item.finished:
            self._unfinished.discard(item.prompt_index)
        return item

    def __iter__(self) -> Iterator[GenerationUpdate]:
        while not self.finished:
            yield self.next_update()

    def close(self) -> None:
        """Abort the engine requests that have not finished (a no-op once all have)."""
        if self._unfinished:
            self._bridge.abort([self.request_ids[i] for i in sorted(self._unfinished)])
            self._unfinished.clear()
        self._failed = True

    def _deliver(self, item: "GenerationUpdate | BaseException") -> None:
        # Runs in the hub that owns this stream, or in its own greenlet; never in the engine thread.
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
        if self.settings.engine_factory and engine_factory is build_engine:
            engine_factory = _import_factory(self.settings.engine_factory)
        self._engine_factory = engine_factory
        self._tokenizer_factory = tokenizer_factory
        self._engine = None
        self._tokenizer = None
        self._tokenizer_source: str | None = None
        self._tool_parser_class = None
        self._template_supports_tools = False
        # One tokenizer per offload thread: HF fast tokenizers must not be shared across threads.
        self._thread_tokenizers = threading.local()
        self._inbox: SimpleQueue = SimpleQueue()
        # request id -> (stream, prompt index); touched by the engine thread only.
        self._streams: dict[str, tuple[GenerationStream, int]] = {}
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

    @property
    def adapter_names(self) -> list[str]:
        """The LoRA adapters served as models of their own (LORA_MODULES), in order."""
        return [name for name, _ in self.settings.lora_modules]

    def serves(self, model: str) -> bool:
        """Whether model is the base model or one of its adapters."""
        return model == self.model_name or model in self.adapter_names

    def load(self, keepalive: Callable[[], None] | None = None, keepalive_interval: float = 1.0) -> None:
        """Build the engine and start its thread; calls keepalive() while waiting, if given.

        gunicorn calls this from post_fork (before gevent patches threading) with the worker's
        heartbeat as keepalive, so a model that takes minutes to load does not get the worker
        killed for missing heartbeats.
        """
        started = time.monotonic()
        if keepalive is None:
            self._build()
        else:
            builder = threading.Thread(target=self._build, name="engine-loader", daemon=True)
            builder.start()
            next_progress = started + PROGRESS_INTERVAL
            while builder.is_alive():
                keepalive()
                builder.join(keepalive_interval)
                if time.monotonic() >= next_progress and builder.is_alive():
                    next_progress += PROGRESS_INTERVAL
                    log.info("still loading the engine (%.0f s so far)", time.monotonic() - started,
                             extra={"fields": {"event": "engine_loading"}})
        if self._state is EngineState.FAILED:
            raise EngineFailed(f"the engine failed to load: {self.failure}") from self.failure

    def load_in_background(self) -> None:
        """Build the engine in a real OS thread and return at once (state stays LOADING until done)."""
        _start_os_thread(self._build, "engine-loader")

    def _build(self) -> None:
        try:
            engine = self._engine_factory(self.settings)
            tokenizer = self._make_tokenizer(engine)
            self.max_model_len = int(engine.model_config.max_model_len)
            # An unknown TOOL_CALL_PARSER fails the start, not the first request with tools.
            self._tool_parser_class = tool_parser_class(self.settings.tool_call_parser)
            self._template_supports_tools = template_supports_tools(tokenizer)
        except BaseException as exc:
            log.exception("engine failed to load")
            self.failure = exc
            self._state = EngineState.FAILED
            return
        self._engine, self._tokenizer = engine, tokenizer
        self.loaded_at = time.time()
        _start_os_thread(self._run, "engine-loop")
        self._state = EngineState.READY
        log.info("engine ready: %s (max_model_len=%s)", self.model_name, self.max_model_len,
                 extra={"fields": {"event": "engine_ready", "model": self.model_name,
                                   "max_model_len": self.max_model_len}})

    def _make_tokenizer(self, engine):
        # Tokenizers of our own for the request side: the engine thread detokenizes with the
        # engine's instance, and HF fast tokenizers must not be shared across threads.
        self._tokenizer_source = engine.model_config.tokenizer
        return self._new_tokenizer()

    def _new_tokenizer(self):
        if self._tokenizer_factory is not None:
            return self._tokenizer_factory(self.settings.model)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self._tokenizer_source)

    def _thread_tokenizer(self):
        """This thread's own tokenizer (offload threads each load one on first use)."""
        tokenizer = getattr(self._thread_tokenizers, "tokenizer", None)
        if tokenizer is None:
            tokenizer = self._thread_tokenizers.tokenizer = self._new_tokenizer()
        return tokenizer

    def begin_drain(self) -> None:
        """Refuse new requests from now on; requests in flight go on."""
        if self._state is EngineState.READY:
            self._state = EngineState.DRAINING

    @property
    def closed(self) -> bool:
        """True once the engine thread has ended and released the engine (always, if it never ran)."""
        return self._engine is None or self._thread_done.is_set()

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

    # Templating, tokenizing and detokenizing run in offload threads (engine_bridge.offload):
    # their cost grows with the input, and on the gevent hub it would pause every stream.

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    add_special_tokens: bool = False, tools: list[dict] | None = None) -> list[int]:
        """Token ids of the model's chat template applied to messages, ready for generation.

        messages may hold assistant tool_calls and tool results, and tools the function
        definitions the model may call (OpenAI's shapes). A template with a tool format of its
        own gets them as Hugging Face templates take them; any other template gets them written
        into plain messages in the Hermes format (see tool_calls.hermes_messages).
        """
        self._require_ready()
        return run_off_hub(self._render_chat, messages, add_generation_prompt, add_special_tokens, tools)

    def _render_chat(self, messages, add_generation_prompt, add_special_tokens, tools=None) -> list[int]:
        tokenizer = self._thread_tokenizer()
        extra = {}
        if self._template_supports_tools:
            messages = messages_for_tool_template(messages)
            if tools:
                extra["tools"] = tools
        elif tools or any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
            messages = hermes_messages(messages, tools)
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             **extra)
        # The template already holds every special token the model expects.
        return tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def tool_calling(self, tools: list[dict], tool_choice, parallel_tool_calls: bool = True) -> ToolCalling:
        """What a request's tools (OpenAI's shapes) ask of the engine, and parsers for its output.

        tool_choice is "auto", "required" or {"type": "function", "function": {"name": ...}};
        "auto" output is read by the TOOL_CALL_PARSER parser. Raises RequestRejected for tools
        vLLM refuses.
        """
        self._require_ready()
        return ToolCalling(self._tool_parser_class, self._tokenizer, tools, tool_choice, parallel_tool_calls)

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of a plain completion prompt, with the tokenizer's usual special tokens."""
        self._require_ready()
        return run_off_hub(lambda: self._thread_tokenizer().encode(text, add_special_tokens=add_special_tokens))

    @property
    def vocab_size(self) -> int:
        """Token ids run from 0 to vocab_size - 1 (added tokens included)."""
        self._require_ready()
        return len(self._tokenizer)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        """The text of token_ids."""
        self._require_tokenizer()
        return run_off_hub(lambda: self._thread_tokenizer().decode(list(token_ids)))

    def token_texts(self, token_ids: Sequence[int]) -> list[str]:
        """The text of each token on its own."""
        self._require_tokenizer()
        return run_off_hub(lambda: [self._thread_tokenizer().decode([t]) for t in token_ids])

    def generate(self, prompts: Sequence[Sequence[int]], options: SamplingOptions,
                 request_id: str | None = None, model: str | None = None) -> GenerationStream:
        """Submit one engine request per prompt (token ids) and return the stream of their updates.

        model selects a LoRA adapter by name; None or the base model's name generates without one.
        """
        self._require_ready()
        adapter = self._lora_request(model)
        lengths = [len(p) for p in prompts]
        for length in lengths:
            if length + options.max_tokens > self.max_model_len:
                raise ContextLengthExceeded(length, options.max_tokens, self.max_model_len)
        params = sampling_params(options)
        base = f"{request_id or 'req'}-{next(self._ids)}"
        request_ids = [base] if len(prompts) == 1 else [f"{base}-{i}" for i in range(len(prompts))]
        stream = GenerationStream(self, request_ids, lengths)
        for index, prompt in enumerate(prompts):
            self._inbox.put(("add", stream, index, {"prompt_token_ids": list(prompt)}, params, adapter))
        if self._state is EngineState.FAILED:
            # The thread may have died after the check above and never read the inbox.
            stream._deliver(EngineFailed("the engine stopped"))
        return stream

    def _lora_request(self, model: str | None):
        if model is None or model == self.model_name:
            return None
        for index, (name, path) in enumerate(self.settings.lora_modules):
            if name == model:
                return lora_request(name, index, path)
        raise RequestRejected(f"unknown model {model!r}", param="model")

    def abort(self, request_ids: list[str]) -> None:
        """Ask the engine thread to abort requests (a no-op for those already finished)."""
        if self._state in (EngineState.READY, EngineState.DRAINING):
            self._inbox.put(("abort", request_ids))

    def unfinished_requests(self) -> int:
        """How many requests the engine holds right now (running or waiting)."""
        engine = self._engine
        return engine.get_num_unfinished_requests() if engine is not None else 0

    def scheduler_counts(self) -> tuple[int, int]:
        """(running, waiting) requests in vLLM's scheduler, read without stopping the engine thread."""
        scheduler = self._scheduler()
        if scheduler is None:
            return self.unfinished_requests(), 0
        return len(scheduler.running), len(scheduler.waiting)

    def _scheduler(self):
        # The in-process engine core (VLLM_ENABLE_V1_MULTIPROCESSING=0) exposes its scheduler;
        # len() of its lists is safe to read from another thread.
        core = getattr(getattr(self._engine, "engine_core", None), "engine_core", None)
        return getattr(core, "scheduler", None)

    def _require_tokenizer(self) -> None:
        """As _require_ready, but draining is fine: requests in flight finish their answers (echo, logprobs)."""
        if self._state is not EngineState.DRAINING:
            self._require_ready()

    def _require_ready(self) -> None:
        if self._state is EngineState.READY:
            return
        if self._state is EngineState.FAILED:
            raise EngineFailed("the engine has failed; see the server log")
        raise EngineNotReady(f"the engine is {self._state.value}")

    # -- engine thread ----------------------------------------------------------------------

    def _run(self) -> None:
        engine = self._engine
        try:
            while True:
                if not self._take_commands(block=not engine.has_unfinished_requests()):
                    self._close_engine()
                    return
                if engine.has_unfinished_requests():
                    self._publish(engine.step())
        except BaseException as exc:
            log.exception("engine thread died")
            self.failure = exc
            self._state = EngineState.FAILED
            self._fail_all(EngineFailed(f"the engine failed: {type(exc).__name__}"))
            # Release what the failed engine holds, its executor's rank processes above all
            # (TENSOR_PARALLEL_SIZE > 1): the gunicorn worker waits for this (bounded) before it exits.
            self._close_engine()
        finally:
            self._thread_done.set()

    def _close_engine(self) -> None:
        """Release the engine's resources now (its executor, KV cache, worker processes), not at exit."""
        close = getattr(getattr(self._engine, "engine_core", None), "shutdown", None)
        if close is None:
            return
        started = time.monotonic()
        try:
            close()
        except Exception:
            log.exception("the engine did not shut down cleanly")
        else:
            log.info("engine shut down in %.1f s", time.monotonic() - started,
                     extra={"fields": {"event": "engine_stopped"}})

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
                self._fail_all(GenerationInterrupted("the server is shutting down"))
                return False
            try:
                command = self._inbox.get_nowait()
            except Empty:
                return True

    def _add(self, stream: GenerationStream, index: int, prompt: dict, params, adapter=None) -> None:
        if stream.finished:  # closed, or another prompt of it failed, before the engine saw it
            return
        request_id = stream.request_ids[index]
        try:
            if adapter is None:
                self._engine.add_request(request_id, prompt, params)
            else:
                self._engine.add_request(request_id, prompt, params, lora_request=adapter)
        except client_errors() as exc:
            self._send([(stream, rejection(exc))])
            return
        except Exception as exc:
            # add_request refused this one request in a way nobody foresaw: fail the request, not
            # the engine and every other request with it.
            log.exception("the engine could not take request %s", request_id)
            self._send([(stream, EngineFailed(f"the engine could not take the request: {type(exc).__name__}"))])
            return
        self._streams[request_id] = (stream, index)

    def _abort(self, request_ids: list[str]) -> None:
        known = [rid for rid in request_ids if self._streams.pop(rid, None) is not None]
        if known:
            self._engine.abort_request(known)

    def _publish(self, outputs: list) -> None:
        items = []
        for output in outputs:
            entry = self._streams.get(output.request_id)
            if entry is None:  # aborted while this step ran
                continue
            if output.finished:
                del self._streams[output.request_id]
            stream, index = entry
            items.append((stream, update_from_output(output, index)))
        self._send(items)

    def _fail_all(self, error: BaseException) -> None:
        request_ids = list(self._streams)
        streams = {id(s): s for s, _ in self._streams.values()}
        self._streams.clear()
        while True:  # requests still in the inbox fail too
            try:
                command = self._inbox.get_nowait()
            except Empty:
                break
            if command[0] == "add":
                streams[id(command[1])] = command[1]
        if request_ids and not isinstance(error, EngineFailed):
            try:
                self._engine.abort_request(request_ids)
            except Exception:
                log.exception("abort during shutdown failed")
        self._send([(stream, error) for stream in streams.values()])

    @staticmethod
    def _send(items: list) -> None:
        """Hand items to their greenlets: one post per hub per step, in order."""
        by_mailbox = defaultdict(list)
        for stream, item in items:
            by_mailbox[stream.mailbox].append((stream, item))
        for mailbox, batch in by_mailbox.items():
            mailbox.post(batch)
