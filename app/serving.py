"""Serving objects: turn a validated OpenAI request into engine calls and engine output into responses."""

import time
import uuid
from collections.abc import Iterator

from engine_bridge import EngineBridge, GenerationStream, SamplingOptions

from app import protocol, sse
from app.errors import APIError, excerpt, to_api_error


class OpenAIServing:
    """What chat and text completions share: validation, sampling options, collecting, streaming."""

    schema = None
    id_prefix = ""
    object_name = ""
    chunk_object_name = ""

    def __init__(self, bridge: EngineBridge, config):
        self.bridge = bridge
        self.max_prompt_tokens = config["MAX_PROMPT_TOKENS"]
        self.max_output_tokens = config["MAX_OUTPUT_TOKENS"]

    def create(self, body: dict) -> dict | Iterator[str]:
        """The response body for body, or an iterator of SSE events when it asks to stream."""
        req = self.schema.load(body)
        self._check_model(req["model"])
        options = self._sampling_options(req)
        prompt_ids = self.prompt_token_ids(req)
        self._check_prompt_length(len(prompt_ids))
        response_id = f"{self.id_prefix}{uuid.uuid4().hex}"
        stream = self.bridge.generate(prompt_ids, options, request_id=response_id)
        header = {"id": response_id, "object": self.object_name, "created": int(time.time()),
                  "model": req["model"]}
        if req["stream"]:
            return self._stream(stream, header, options.n)
        return self._collect(stream, header, options.n)

    # -- per endpoint --------------------------------------------------------------------------

    def prompt_token_ids(self, req: dict) -> list[int]:
        raise NotImplementedError

    def choice(self, index: int, text: str, finish_reason: str | None) -> dict:
        raise NotImplementedError

    def chunk_choice(self, index: int, text: str | None, finish_reason: str | None) -> dict:
        raise NotImplementedError

    def opening_chunk_choices(self, n: int) -> list[dict]:
        """Choices of a first chunk sent before any token (chat sends the role there)."""
        return []

    # -- shared --------------------------------------------------------------------------------

    def _check_model(self, model: str) -> None:
        if model != self.bridge.model_name:
            raise APIError(f"The model {excerpt(model)} does not exist. "
                           f"This server serves {self.bridge.model_name!r}.",
                           status=404, param="model", code="model_not_found")

    def _sampling_options(self, req: dict) -> SamplingOptions:
        if req["max_tokens"] > self.max_output_tokens:
            raise APIError(f"max_tokens is too large: {req['max_tokens']}. This server allows at most "
                           f"{self.max_output_tokens} completion tokens.", param="max_tokens")
        return SamplingOptions(
            max_tokens=req["max_tokens"],
            temperature=req["temperature"],
            top_p=req["top_p"],
            frequency_penalty=req["frequency_penalty"],
            presence_penalty=req["presence_penalty"],
        )

    def _check_prompt_length(self, prompt_tokens: int) -> None:
        if prompt_tokens > self.max_prompt_tokens:
            raise APIError(f"The prompt has {prompt_tokens} tokens; this server accepts at most "
                           f"{self.max_prompt_tokens} prompt tokens.",
                           param=self.prompt_param, code="context_length_exceeded")

    @property
    def prompt_param(self) -> str:
        return "prompt"

    def _collect(self, stream: GenerationStream, header: dict, n: int) -> dict:
        texts = [[] for _ in range(n)]
        finish_reasons: list[str | None] = [None] * n
        completion_tokens = 0
        prompt_tokens = stream.prompt_tokens
        try:
            for update in stream:
                prompt_tokens = update.prompt_tokens or prompt_tokens
                for delta in update.choices:
                    texts[delta.index].append(delta.text)
                    completion_tokens += delta.token_count
                    if delta.finish_reason:
                        finish_reasons[delta.index] = delta.finish_reason
        finally:
            stream.close()
        return {
            **header,
            "choices": [self.choice(i, "".join(texts[i]), finish_reasons[i]) for i in range(n)],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _stream(self, stream: GenerationStream, header: dict, n: int) -> Iterator[str]:
        header = {**header, "object": self.chunk_object_name}

        def chunk(choices: list[dict]) -> str:
            return sse.event({**header, "choices": choices})

        try:
            opening = self.opening_chunk_choices(n)
            if opening:
                yield chunk(opening)
            for update in stream:
                for delta in update.choices:
                    if delta.text:
                        yield chunk([self.chunk_choice(delta.index, delta.text, None)])
                    if delta.finish_reason:
                        yield chunk([self.chunk_choice(delta.index, None, delta.finish_reason)])
        except Exception as exc:
            # Headers are gone already: the error travels as an event, then the stream ends.
            yield sse.event(to_api_error(exc).body())
        finally:
            stream.close()
        yield sse.DONE


class ChatServing(OpenAIServing):
    schema = protocol.chat_completion_request
    id_prefix = "chatcmpl-"
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"

    @property
    def prompt_param(self) -> str:
        return "messages"

    def prompt_token_ids(self, req: dict) -> list[int]:
        messages = [{"role": m["role"], "content": m["content"]} for m in req["messages"]]
        return self.bridge.render_chat(messages)

    def choice(self, index, text, finish_reason):
        return {"index": index, "message": {"role": "assistant", "content": text},
                "logprobs": None, "finish_reason": finish_reason}

    def chunk_choice(self, index, text, finish_reason):
        delta = {"content": text} if text is not None else {}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def opening_chunk_choices(self, n):
        return [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                 "finish_reason": None} for i in range(n)]


class CompletionServing(OpenAIServing):
    schema = protocol.completion_request
    id_prefix = "cmpl-"
    object_name = "text_completion"
    chunk_object_name = "text_completion"

    def prompt_token_ids(self, req: dict) -> list[int]:
        return self.bridge.tokenize(req["prompt"])

    def choice(self, index, text, finish_reason):
        return {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}

    def chunk_choice(self, index, text, finish_reason):
        return {"text": text or "", "index": index, "logprobs": None, "finish_reason": finish_reason}
