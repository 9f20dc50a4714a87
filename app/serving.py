"""Serving objects: turn a validated OpenAI request into engine calls and engine output into responses."""

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from engine_bridge import (
    ChoiceDelta,
    EngineBridge,
    GenerationStream,
    GenerationUpdate,
    SamplingOptions,
    TokenLogprob,
    ToolCalling,
    ToolCallParser,
)

from app import protocol, sse
from app.errors import APIError, excerpt, to_api_error
from app.concurrency import ConcurrencyLimit, SharedConcurrencyLimit
from app.telemetry import RequestRecord
from engine_bridge.offload import run_off_hub

log = logging.getLogger(__name__)

# How often a request waiting for the engine checks whether its client is still there.
CLIENT_CHECK_SECONDS = 0.25
# nginx's "client closed request": logged for a request whose client left; nobody receives it.
CLIENT_CLOSED_STATUS = 499


@dataclass
class Choice:
    """One choice being assembled from the engine's deltas."""

    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Call:
    """One request in flight: what the response needs to know besides the engine's output."""

    req: dict
    header: dict
    prompts: list[list[int]]
    prompt_texts: list[str | None]
    n: int
    # The request's log line and metrics: tokens, time to first token, whether the client left.
    record: RequestRecord = field(default_factory=RequestRecord)
    # Per prompt: prompt tokens and, for echo with logprobs, the prompt's own token logprobs.
    prompt_tokens: dict[int, int] = field(default_factory=dict)
    prompt_logprobs: dict[int, list] = field(default_factory=dict)
    # Per prompt: how many of its tokens the engine's prefix cache already held.
    cached_tokens: dict[int, int] = field(default_factory=dict)
    completion_tokens: int = 0
    # Echo with max_tokens 0: the engine generates one token that the response leaves out.
    discard_generated: bool = False
    # Streaming state per choice index: whether the prompt was echoed, and the next text offset.
    echoed: set[int] = field(default_factory=set)
    text_offsets: dict[int, int] = field(default_factory=dict)
    # A stream sent everything up to [DONE]; closed before that, its client went away.
    completed: bool = False
    # Whether the client has closed its connection (routes.helpers.client_gone_probe).
    client_gone: Callable[[], bool] = lambda: False
    # Chat with tools: how to read tool calls in the output; per choice index, its stream's parser
    # and whether it has called a tool.
    tools: ToolCalling | None = None
    tool_parsers: dict[int, ToolCallParser] = field(default_factory=dict)
    tool_called: set[int] = field(default_factory=set)

    def choice_index(self, prompt_index: int, index: int) -> int:
        """OpenAI numbers choices prompt by prompt: prompt i's choices are i*n .. i*n+n-1."""
        return prompt_index * self.n + index

    def observe(self, update: GenerationUpdate) -> None:
        self.prompt_tokens[update.prompt_index] = update.prompt_tokens
        self.cached_tokens[update.prompt_index] = update.num_cached_tokens
        if update.prompt_logprobs is not None:
            self.prompt_logprobs[update.prompt_index] = update.prompt_logprobs
        if not self.discard_generated:
            self.completion_tokens += sum(c.token_count for c in update.choices)
        self.record.first_token()
        usage = self.usage()
        self.record.prompt_tokens = usage["prompt_tokens"]
        self.record.completion_tokens = usage["completion_tokens"]

    def usage(self) -> dict:
        prompt_tokens = sum(self.prompt_tokens.get(i, len(p)) for i, p in enumerate(self.prompts))
        return {"prompt_tokens": prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": sum(self.cached_tokens.values())}}


def check_model(bridge: EngineBridge, model: str) -> None:
    """404 unless model is the one this server serves or one of its LoRA adapters."""
    if not bridge.serves(model):
        served = ", ".join(repr(name) for name in [bridge.model_name, *bridge.adapter_names])
        raise APIError(f"The model {excerpt(model)} does not exist. This server serves {served}.",
                       status=404, param="model", code="model_not_found")


class OpenAIServing:
    """What chat and text completions share: validation, sampling options, collecting, streaming."""

    schema = None
    id_prefix = ""
    object_name = ""
    chunk_object_name = ""
    prompt_param = "prompt"

    def __init__(self, bridge: EngineBridge, config, concurrency: "ConcurrencyLimit | SharedConcurrencyLimit"):
        self.bridge = bridge
        self.concurrency = concurrency
        self.max_prompt_tokens = config["MAX_PROMPT_TOKENS"]
        self.max_output_tokens = config["MAX_OUTPUT_TOKENS"]
        # A request heavier than the whole cap could never run: the cap bounds it too.
        self.max_sequences = min(config["MAX_SEQUENCES_PER_REQUEST"], concurrency.limit)
        self.max_request_tokens = config["MAX_REQUEST_TOKENS"] or 2 * (self.max_prompt_tokens + self.max_output_tokens)
        self.keepalive_seconds = config["SSE_KEEPALIVE_SECONDS"]

    def create(self, body: dict, request_id: str | None = None, record: RequestRecord | None = None,
               client_gone: Callable[[], bool] | None = None, validated: dict | None = None) -> "dict | EventStream":
        """The response body for body, or the SSE events when it asks to stream.

        A generation holds one concurrency slot per sequence (prompts x n) until its response is
        complete or its client gone (client_gone() says so; the engine work is then aborted);
        request_id becomes the prefix of its engine request ids; record gets the model, token
        counts and time to first token for the request's log line and metrics. validated is body
        already loaded by self.schema (the response cache loads it to find its entry).
        """
        record = record or RequestRecord()
        client_gone = client_gone or (lambda: False)
        # Validation walks every message and token id: for a large body that is real CPU work.
        req = validated if validated is not None else run_off_hub(self.schema.load, body)
        unknown = set(body) - set(self.schema.fields)
        if unknown:
            log.debug("ignoring unknown request fields: %s", ", ".join(sorted(unknown)[:20]))
        record.model = req["model"]
        check_model(self.bridge, req["model"])
        tools = self.tool_calling(req)
        options = self.sampling_options(req)
        if tools is not None and tools.json_schema is not None:
            # tool_choice "required" or a named function: the output follows vLLM's schema for
            # the calls, in place of any response_format (as vLLM's server does).
            options = replace(options, json_schema=tools.json_schema, json_object=False)
        # The request's weight, known before any tokenizing: refused if it is over the per-request
        # bounds, then it takes that many concurrency slots.
        sequences = self.prompt_count(req) * options.n
        self._check_sequences(req, sequences)
        self._check_tokens(sequences * options.max_tokens, 0, req)
        release = self.concurrency.acquire(sequences)
        try:
            prompts, prompt_texts = self.prompts(req)
            options = self.fit_options(req, options, prompts)
            for prompt in prompts:
                self._check_prompt_length(len(prompt))
            self._check_tokens(sequences * options.max_tokens, sum(len(p) for p in prompts), req)
            response_id = f"{self.id_prefix}{uuid.uuid4().hex}"
            header = {"id": response_id, "object": self.object_name, "created": int(time.time()),
                      "model": req["model"]}
            call = Call(req, header, prompts, prompt_texts, options.n, record=record,
                        discard_generated=req["max_tokens"] == 0, client_gone=client_gone, tools=tools)
            stream = self.bridge.generate(prompts, options, request_id=request_id or response_id,
                                          model=req["model"])
        except BaseException:
            release()
            raise
        if req["stream"]:
            return EventStream(self._stream(stream, call), stream, call, release)
        try:
            return self._collect(stream, call)
        finally:
            release()

    # -- per endpoint --------------------------------------------------------------------------

    def prompts(self, req: dict) -> tuple[list[list[int]], list[str | None]]:
        """The prompts as token ids, and their texts where the client sent text."""
        raise NotImplementedError

    def prompt_count(self, req: dict) -> int:
        """How many prompts the request holds (known before tokenizing)."""
        return 1

    def fit_options(self, req: dict, options: SamplingOptions, prompts: list[list[int]]) -> SamplingOptions:
        """options, adjusted once the prompts' lengths are known (the Responses API's default length)."""
        return options

    def extra_options(self, req: dict) -> dict:
        """Endpoint-specific SamplingOptions fields (logprobs)."""
        return {}

    def tool_calling(self, req: dict) -> ToolCalling | None:
        """How the request's tools shape generation and its output (chat only)."""
        return None

    def choice(self, call: Call, index: int, prompt_index: int, choice: Choice) -> dict:
        raise NotImplementedError

    def chunk_choice(self, call: Call, index: int, prompt_index: int, text: str | None,
                     logprobs: list[TokenLogprob] | None, finish_reason: str | None) -> dict:
        raise NotImplementedError

    def opening_chunk_choices(self, call: Call) -> list[dict]:
        """Choices sent before any token, one chunk each (chat sends the role there)."""
        return []

    def stream_choices(self, call: Call, index: int, prompt_index: int, delta: ChoiceDelta) -> list[dict]:
        """The chunk choices, one chunk each, for what one engine step added to choice index."""
        choices = []
        if delta.text or delta.logprobs:
            choices.append(self.chunk_choice(call, index, prompt_index, delta.text, delta.logprobs, None))
        if delta.finish_reason:
            choices.append(self.chunk_choice(call, index, prompt_index, None, None, delta.finish_reason))
        return choices

    # -- shared --------------------------------------------------------------------------------

    def sampling_options(self, req: dict) -> SamplingOptions:
        if req["max_tokens"] > self.max_output_tokens:
            param = "max_completion_tokens" if req.get("max_completion_tokens") is not None else "max_tokens"
            raise APIError(f"{param} is too large: {req['max_tokens']}. This server allows at most "
                           f"{self.max_output_tokens} completion tokens.", param=param)
        response_format = req.get("response_format") or {}
        json_schema = None
        if response_format.get("type") == "json_schema":
            json_schema = response_format["json_schema"]["schema"]
        return SamplingOptions(
            max_tokens=req["max_tokens"],
            temperature=req["temperature"],
            top_p=req["top_p"],
            frequency_penalty=req["frequency_penalty"],
            presence_penalty=req["presence_penalty"],
            n=req["n"],
            seed=req.get("seed"),
            stop=req["stop"],
            top_k=req["top_k"],
            min_p=req["min_p"],
            repetition_penalty=req["repetition_penalty"],
            ignore_eos=req["ignore_eos"],
            json_object=response_format.get("type") == "json_object",
            json_schema=json_schema,
            logit_bias=self._logit_bias(req.get("logit_bias")),
            **self.extra_options(req),
        )

    def _check_sequences(self, req: dict, sequences: int) -> None:
        if sequences <= self.max_sequences:
            return
        prompts = self.prompt_count(req)
        param = self.prompt_param if prompts > self.max_sequences else "n"
        raise APIError(f"This request asks for {sequences} sequences ({prompts} prompt(s) x n={req['n']}); this "
                       f"server generates at most {self.max_sequences} sequences per request. Send fewer "
                       "prompts or a smaller n, or split the request.", param=param)

    def _check_tokens(self, output_tokens: int, prompt_tokens: int, req: dict) -> None:
        """Prompt tokens plus max_tokens for every sequence must fit the per-request bound."""
        if output_tokens + prompt_tokens <= self.max_request_tokens:
            return
        if output_tokens > self.max_request_tokens or not prompt_tokens:
            param = "max_completion_tokens" if req.get("max_completion_tokens") is not None else "max_tokens"
        else:
            param = self.prompt_param
        raise APIError(f"This request could cost {prompt_tokens + output_tokens} tokens ({prompt_tokens} in "
                       f"its prompts, {output_tokens} = sequences x max_tokens to generate); this server "
                       f"allows at most {self.max_request_tokens} per request.", param=param)

    def _logit_bias(self, logit_bias: dict[int, float] | None) -> dict[int, float] | None:
        """logit_bias, once every token id in it is known to be in the vocabulary."""
        if not logit_bias:
            return None
        vocab_size = self.bridge.vocab_size
        for token_id in logit_bias:
            if token_id >= vocab_size:
                raise APIError(f"Invalid value for 'logit_bias.{token_id}': token id {token_id} is out "
                               f"of the vocabulary (0..{vocab_size - 1}).", param=f"logit_bias.{token_id}")
        return logit_bias

    def _check_prompt_length(self, prompt_tokens: int) -> None:
        if prompt_tokens > self.max_prompt_tokens:
            raise APIError(f"The prompt has {prompt_tokens} tokens; this server accepts at most "
                           f"{self.max_prompt_tokens} prompt tokens.",
                           param=self.prompt_param, code="context_length_exceeded")

    def _collect(self, stream: GenerationStream, call: Call) -> dict:
        choices = [Choice() for _ in range(len(call.prompts) * call.n)]
        try:
            checked = time.monotonic()
            while not stream.finished:
                update = stream.next_update(timeout=CLIENT_CHECK_SECONDS)
                # Checked by the clock, not only when the engine is quiet: tokens may keep coming
                # for minutes to a client that has long gone.
                if time.monotonic() - checked >= CLIENT_CHECK_SECONDS:
                    checked = time.monotonic()
                    if call.client_gone():
                        # Nobody will read the answer: stop generating it (finally aborts).
                        call.record.aborted = True
                        raise APIError("The client closed the connection.", status=CLIENT_CLOSED_STATUS,
                                       code="client_closed_request")
                if update is None:
                    continue
                call.observe(update)
                for delta in update.choices:
                    choice = choices[call.choice_index(update.prompt_index, delta.index)]
                    choice.text.append(delta.text)
                    if delta.logprobs:
                        choice.logprobs.extend(delta.logprobs)
                    if delta.finish_reason:
                        choice.finish_reason = delta.finish_reason
        finally:
            stream.close()
        return {
            **call.header,
            "choices": [self.choice(call, i, i // call.n, c) for i, c in enumerate(choices)],
            "usage": call.usage(),
        }

    def updates(self, stream: GenerationStream, call: Call) -> Iterator[GenerationUpdate | None]:
        """The stream's updates as they come, and None whenever a keep-alive comment is due.

        Waiting for the next update (queued, or a long prefill), a client that left is noticed
        here, not only at the next write: the iteration then ends early with call.record.aborted.
        """
        quiet_since = time.monotonic()
        while not stream.finished:
            update = stream.next_update(timeout=min(self.keepalive_seconds, CLIENT_CHECK_SECONDS))
            if update is None:
                if call.client_gone():
                    call.record.aborted = True
                    return
                if time.monotonic() - quiet_since >= self.keepalive_seconds:
                    quiet_since = time.monotonic()
                    yield None
                continue
            quiet_since = time.monotonic()
            yield update

    def _stream(self, stream: GenerationStream, call: Call) -> Iterator[str]:
        header = {**call.header, "object": self.chunk_object_name}
        stream_options = call.req.get("stream_options") or {}
        include_usage = stream_options.get("include_usage", False)
        if include_usage:
            header["usage"] = None

        def chunk(choices: list[dict]) -> str:
            return sse.event({**header, "choices": choices})

        try:
            opened = False
            for update in self.updates(stream, call):
                if update is None:
                    yield sse.KEEPALIVE
                    continue
                if not opened:
                    # With the first token, as vLLM's server does: a client's time to first
                    # chunk is then its real time to first token.
                    opened = True
                    for opening in self.opening_chunk_choices(call):
                        yield chunk([opening])
                call.observe(update)
                for delta in update.choices:
                    index = call.choice_index(update.prompt_index, delta.index)
                    for choice in self.stream_choices(call, index, update.prompt_index, delta):
                        yield chunk([choice])
            if call.record.aborted:  # the client left: nobody reads the rest
                return
            if include_usage:
                yield sse.event({**header, "choices": [], "usage": call.usage()})
        except Exception as exc:
            # Headers are gone already: the error travels as an event, then the stream ends.
            error = to_api_error(exc)
            call.record.error_code = error.code or error.type
            yield sse.event(error.body())
        finally:
            stream.close()
        call.completed = True
        yield sse.DONE


class EventStream:
    """The SSE events of a streaming response, and what must happen when it ends for any reason.

    The WSGI server calls close() when the response is done or the client went away, even if
    iteration never started; that aborts the engine request and frees the concurrency slot.
    """

    def __init__(self, events: Iterator[str], stream: GenerationStream, call: Call,
                 release: Callable[[], None]):
        self._events = events
        self._stream = stream
        self._call = call
        self._release = release
        self._closed = False

    def __iter__(self) -> Iterator[str]:
        return self._events

    def usage(self) -> dict:
        """The usage counted so far (all of it once the stream has ended)."""
        return self._call.usage()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._call.completed:
            self._call.record.aborted = True
        try:
            self._events.close()
            self._stream.close()
        finally:
            self._release()


_TEMPLATE_MESSAGE_FIELDS = ("name", "tool_calls", "tool_call_id")


def template_messages(messages: list[dict]) -> list[dict]:
    """Messages as the chat template takes them: role, content, and name, tool_calls and tool_call_id
    where the client gave them."""
    return [{"role": m["role"], "content": m.get("content"),
             **{key: m[key] for key in _TEMPLATE_MESSAGE_FIELDS if m.get(key)}}
            for m in messages]


def tool_definitions(tools: list[dict]) -> list[dict]:
    """The request's tools without the fields it sent as null (chat templates print what they get)."""
    return [{"type": "function", "function": {k: v for k, v in tool["function"].items() if v is not None}}
            for tool in tools]


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


class ChatServing(OpenAIServing):
    schema = protocol.chat_completion_request
    id_prefix = "chatcmpl-"
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"
    prompt_param = "messages"

    def prompts(self, req):
        # With tool_choice "none" the model may not call a tool, so it is not shown any (as vLLM's
        # --exclude-tools-when-tool-choice-none): a small model then answers instead of writing
        # a call that nobody would read. Calls and results in the history are still shown.
        tools = tool_definitions(req["tools"]) if req["tool_choice"] != "none" else None
        return [self.bridge.render_chat(template_messages(req["messages"]), tools=tools or None)], [None]

    def tool_calling(self, req):
        if not req["tools"] or req["tool_choice"] == "none":
            return None
        return self.bridge.tool_calling(tool_definitions(req["tools"]), req["tool_choice"],
                                        req["parallel_tool_calls"])

    def extra_options(self, req):
        if not req["logprobs"]:
            return {}
        return {"logprobs": req.get("top_logprobs") or 0}

    def _logprobs(self, call: Call, logprobs: list[TokenLogprob]) -> dict:
        top_n = call.req.get("top_logprobs") or 0
        return {"content": [{
            "token": lp.token,
            "logprob": lp.logprob,
            "bytes": _bytes(lp.token),
            "top_logprobs": [{"token": t, "logprob": v, "bytes": _bytes(t)} for t, v in lp.top[:top_n]],
        } for lp in logprobs]}

    def choice(self, call, index, prompt_index, choice):
        message = {"role": "assistant", "content": "".join(choice.text)}
        if call.tools is not None:
            message["content"], tool_calls = call.tools.parser().parse(message["content"])
            if not call.req["parallel_tool_calls"]:
                tool_calls = tool_calls[:1]  # auto: the grammar did not stop a second call (as vLLM)
            if tool_calls:
                call.tool_called.add(index)
                message["tool_calls"] = [{"id": c.id, "type": "function",
                                          "function": {"name": c.name, "arguments": c.arguments}}
                                         for c in tool_calls]
        return {"index": index, "message": message,
                "logprobs": self._logprobs(call, choice.logprobs) if call.req["logprobs"] else None,
                "finish_reason": self._finish_reason(call, index, choice.finish_reason)}

    @staticmethod
    def _finish_reason(call: Call, index: int, finish_reason: str | None) -> str | None:
        """"tool_calls" for a choice that called tools and stopped by itself (not at max_tokens)."""
        return "tool_calls" if finish_reason == "stop" and index in call.tool_called else finish_reason

    def stream_choices(self, call, index, prompt_index, delta):
        if call.tools is None:
            return super().stream_choices(call, index, prompt_index, delta)
        parser = call.tool_parsers.get(index)
        if parser is None:
            parser = call.tool_parsers[index] = call.tools.parser()
        message = parser.parse_delta(delta.text, delta.token_ids, finished=delta.finish_reason is not None)
        deltas = []
        if message is not None:
            if message.content:
                deltas.append({"content": message.content})
            for piece in message.tool_calls:
                if piece.index > 0 and not call.req["parallel_tool_calls"]:
                    continue
                call.tool_called.add(index)
                if piece.id is not None:
                    # OpenAI's shape: a call opens with its id, type and name, arguments "".
                    deltas.append({"tool_calls": [{"index": piece.index, "id": piece.id, "type": "function",
                                                   "function": {"name": piece.name or "", "arguments": ""}}]})
                if piece.arguments:
                    deltas.append({"tool_calls": [{"index": piece.index,
                                                   "function": {"arguments": piece.arguments}}]})
        logprobs = self._logprobs(call, delta.logprobs) if delta.logprobs else None
        if logprobs is not None and not deltas:
            deltas.append({})  # the tokens' logprobs are sent even while the parser holds their text
        choices = [{"index": index, "delta": d, "logprobs": logprobs if i == 0 else None, "finish_reason": None}
                   for i, d in enumerate(deltas)]
        if delta.finish_reason:
            choices.append({"index": index, "delta": {}, "logprobs": None,
                            "finish_reason": self._finish_reason(call, index, delta.finish_reason)})
        return choices

    def chunk_choice(self, call, index, prompt_index, text, logprobs, finish_reason):
        delta = {"content": text} if text is not None else {}
        return {"index": index, "delta": delta,
                "logprobs": self._logprobs(call, logprobs) if logprobs else None,
                "finish_reason": finish_reason}

    def opening_chunk_choices(self, call):
        return [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                 "finish_reason": None} for i in range(len(call.prompts) * call.n)]


class CompletionServing(OpenAIServing):
    schema = protocol.completion_request
    id_prefix = "cmpl-"
    object_name = "text_completion"
    chunk_object_name = "text_completion"

    def prompts(self, req):
        prompts, texts = [], []
        for prompt in req["prompt"]:
            if isinstance(prompt, str):
                prompts.append(self.bridge.tokenize(prompt))
                texts.append(prompt)
            else:
                prompts.append(prompt)
                texts.append(None)
        return prompts, texts

    def prompt_count(self, req):
        return len(req["prompt"])

    def sampling_options(self, req):
        options = super().sampling_options(req)
        if req["max_tokens"] == 0:
            # Echo without generation (scoring a text): vLLM needs one token, which is dropped.
            options = replace(options, max_tokens=1)
        return options

    def extra_options(self, req):
        logprobs = req.get("logprobs")
        extra = {"logprobs": logprobs}
        if req["echo"] and logprobs is not None:
            extra["prompt_logprobs"] = logprobs
        return extra

    def _prompt_text(self, call: Call, prompt_index: int) -> str:
        text = call.prompt_texts[prompt_index]
        return text if text is not None else self.bridge.detokenize(call.prompts[prompt_index])

    def _prompt_token_logprobs(self, call: Call, prompt_index: int) -> list[TokenLogprob | None]:
        """The prompt's tokens as TokenLogprobs; the first has no logprob (nothing precedes it)."""
        prompt = call.prompts[prompt_index]
        entries = call.prompt_logprobs.get(prompt_index) or [None] * len(prompt)
        missing = [token_id for token_id, entry in zip(prompt, entries) if entry is None]
        texts = iter(self.bridge.token_texts(missing) if missing else ())
        return [entry if entry is not None else TokenLogprob(next(texts), None)
                for entry in entries]

    @staticmethod
    def _logprobs(entries: list[TokenLogprob], offset: int) -> dict:
        tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
        for entry in entries:
            tokens.append(entry.token)
            token_logprobs.append(entry.logprob)
            top_logprobs.append(dict(entry.top) if entry.logprob is not None else None)
            text_offset.append(offset)
            offset += len(entry.token)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
                "text_offset": text_offset}

    def _generated(self, call: Call, text: str, logprobs: list[TokenLogprob]):
        """Text and logprob entries of the generated part (none for echo with max_tokens 0)."""
        return ("", []) if call.discard_generated else (text, logprobs)

    def _finish_reason(self, call: Call, finish_reason: str | None) -> str | None:
        return "length" if call.discard_generated and finish_reason else finish_reason

    def _echo(self, call: Call, prompt_index: int) -> tuple[str, list[TokenLogprob]]:
        """The prompt's text and, with logprobs, its token entries, for echo."""
        entries = self._prompt_token_logprobs(call, prompt_index) if call.req.get("logprobs") is not None else []
        return self._prompt_text(call, prompt_index), entries

    def choice(self, call, index, prompt_index, choice):
        text, entries = self._generated(call, "".join(choice.text), choice.logprobs)
        if call.req["echo"]:
            prefix, prefix_entries = self._echo(call, prompt_index)
            text, entries = prefix + text, prefix_entries + entries
        logprobs = self._logprobs(entries, 0) if call.req.get("logprobs") is not None else None
        return {"text": text, "index": index, "logprobs": logprobs,
                "finish_reason": self._finish_reason(call, choice.finish_reason)}

    def chunk_choice(self, call, index, prompt_index, text, logprobs, finish_reason):
        if finish_reason is not None:
            return {"text": "", "index": index, "logprobs": None,
                    "finish_reason": self._finish_reason(call, finish_reason)}
        text, entries = self._generated(call, text or "", logprobs or [])
        if call.req["echo"] and index not in call.echoed:
            call.echoed.add(index)
            prefix, prefix_entries = self._echo(call, prompt_index)
            text, entries = prefix + text, prefix_entries + entries
        logprobs_body = None
        if call.req.get("logprobs") is not None:
            offset = call.text_offsets.get(index, 0)
            logprobs_body = self._logprobs(entries, offset)
            call.text_offsets[index] = offset + sum(len(e.token) for e in entries)
        return {"text": text, "index": index, "logprobs": logprobs_body, "finish_reason": None}


class TokenizationServing:
    """POST /tokenize and /detokenize: the served model's tokenizer, as vLLM's server offers it."""

    def __init__(self, bridge: EngineBridge):
        self.bridge = bridge

    def _check_model(self, model: str | None, record: RequestRecord) -> None:
        """model is optional here, as in vLLM's server."""
        record.model = model or self.bridge.model_name
        if model is not None:
            check_model(self.bridge, model)

    def tokenize(self, body: dict, record: RequestRecord | None = None) -> dict:
        record = record or RequestRecord()
        req = run_off_hub(protocol.tokenize_request.load, body)
        self._check_model(req.get("model"), record)
        if "messages" in req:
            tokens = self.bridge.render_chat(template_messages(req["messages"]),
                                             add_generation_prompt=req["add_generation_prompt"],
                                             add_special_tokens=bool(req.get("add_special_tokens")))
        else:
            add_special_tokens = req.get("add_special_tokens")
            tokens = self.bridge.tokenize(req["prompt"], add_special_tokens=add_special_tokens is not False)
        record.prompt_tokens = len(tokens)
        return {"count": len(tokens), "max_model_len": self.bridge.max_model_len, "tokens": tokens}

    def detokenize(self, body: dict, record: RequestRecord | None = None) -> dict:
        record = record or RequestRecord()
        req = run_off_hub(protocol.detokenize_request.load, body)
        self._check_model(req.get("model"), record)
        vocab_size = self.bridge.vocab_size
        for i, token in enumerate(req["tokens"]):
            if token >= vocab_size:
                raise APIError(f"Token id {token} is out of the vocabulary (0..{vocab_size - 1}).",
                               param=f"tokens[{i}]")
        record.prompt_tokens = len(req["tokens"])
        return {"prompt": self.bridge.detokenize(req["tokens"])}
