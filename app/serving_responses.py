"""POST /v1/responses (OpenAI's Responses API) on the shared serving machinery of app/serving.py.

A response is generated as a chat completion is (the same validation order, concurrency slots,
client-gone checks, metrics and engine calls); only the request's shape, the answer's shape and
the stream's typed events differ. Stored responses (store, the default) let a later request
continue the conversation with previous_response_id.
"""

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace

from app import protocol_responses, sse
from app.errors import APIError, excerpt, to_api_error
from app.serving import CLIENT_CHECK_SECONDS, Call, Choice, OpenAIServing
from engine_bridge import GenerationStream, SamplingOptions

# The chat template knows system, user and assistant; the Responses API's developer role is
# the system prompt by another name.
TEMPLATE_ROLES = {"developer": "system"}


def response_event(payload: dict) -> str:
    """One typed event as OpenAI sends them: `event: <type>` and `data: {json}`."""
    return f"event: {payload['type']}\n" + sse.event(payload)


class ResponsesServing(OpenAIServing):
    schema = protocol_responses.response_request
    id_prefix = "resp_"
    object_name = "response"
    prompt_param = "input"

    def __init__(self, bridge, config, concurrency, store):
        super().__init__(bridge, config, concurrency)
        self.store = store

    # -- the request ---------------------------------------------------------------------------

    def prompts(self, req):
        history = self._previous_conversation(req.get("previous_response_id")) + req["input"]
        # Kept for storing: this turn's conversation, without its instructions (which, as in
        # OpenAI's API, do not carry over to the next response).
        req["conversation"] = history
        messages = ([{"role": "system", "content": req["instructions"]}] if req.get("instructions") else [])
        messages += [{"role": TEMPLATE_ROLES.get(m["role"], m["role"]), "content": m["content"]} for m in history]
        return [self.bridge.render_chat(messages)], [None]

    def _previous_conversation(self, response_id: str | None) -> list[dict]:
        if response_id is None:
            return []
        stored = self.store.get(response_id)
        if stored is None:
            raise APIError(f"Previous response with id {excerpt(response_id)} not found.", status=404,
                           param="previous_response_id", code="previous_response_not_found")
        return json.loads(stored)["conversation"]

    def sampling_options(self, req) -> SamplingOptions:
        requested = req["max_tokens"]
        if requested is not None and requested > self.max_output_tokens:
            raise APIError(f"max_output_tokens is too large: {requested}. This server allows at most "
                           f"{self.max_output_tokens} output tokens.", param="max_output_tokens")
        # Without max_output_tokens, as much as the server allows; fit_options then leaves room
        # for the prompt in the model's context.
        return super().sampling_options({**req, "max_tokens": requested or self.max_output_tokens})

    def fit_options(self, req, options, prompts):
        if req["max_tokens"] is not None:
            return options
        room = self.bridge.max_model_len - max(len(p) for p in prompts)
        return replace(options, max_tokens=max(1, min(options.max_tokens, room)))

    # -- the answer ----------------------------------------------------------------------------

    def choice(self, call, index, prompt_index, choice: Choice) -> dict:
        return {"text": "".join(choice.text), "finish_reason": choice.finish_reason}

    def _collect(self, stream: GenerationStream, call: Call) -> dict:
        choice = super()._collect(stream, call)["choices"][0]
        message_id = f"msg_{uuid.uuid4().hex}"
        body = self._body(call, choice["finish_reason"], [self._message(message_id, choice["text"],
                                                                         choice["finish_reason"])])
        self._save(call, body, choice["text"])
        return body

    @staticmethod
    def _message(message_id: str, text: str | None, finish_reason: str | None) -> dict:
        """The assistant's output message; text None while it is still being generated."""
        status = "in_progress" if text is None else "incomplete" if finish_reason == "length" else "completed"
        content = [] if text is None else [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        return {"type": "message", "id": message_id, "status": status, "role": "assistant", "content": content}

    def _body(self, call: Call, finish_reason: str | None, output: list[dict], done: bool = True) -> dict:
        req = call.req
        if not done:
            status = "in_progress"
        else:
            status = "incomplete" if finish_reason == "length" else "completed"
        return {
            "id": call.header["id"],
            "object": "response",
            "created_at": call.header["created"],
            "status": status,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": req.get("instructions"),
            "max_output_tokens": req.get("max_output_tokens"),
            "model": req["model"],
            "output": output,
            "parallel_tool_calls": req["parallel_tool_calls"],
            "previous_response_id": req.get("previous_response_id"),
            "store": req["store"],
            "temperature": req["temperature"],
            "top_p": req["top_p"],
            "text": {"format": req["text_format"]},
            "tool_choice": "none",
            "tools": [],
            "truncation": "disabled",
            "metadata": req["metadata"],
            "user": req.get("user"),
            "usage": self._usage(call) if done else None,
        }

    @staticmethod
    def _usage(call: Call) -> dict:
        usage = call.usage()
        # Cached prompt tokens where the serving layer reports them (prompt_tokens_details), else 0.
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        return {"input_tokens": usage["prompt_tokens"], "input_tokens_details": {"cached_tokens": cached},
                "output_tokens": usage["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage["total_tokens"]}

    def _save(self, call: Call, body: dict, text: str) -> None:
        if not call.req["store"]:
            return
        conversation = call.req["conversation"] + [{"role": "assistant", "content": text}]
        self.store.put(body["id"], json.dumps({"response": body, "conversation": conversation},
                                              ensure_ascii=False, separators=(",", ":")))

    def retrieve(self, response_id: str) -> dict:
        """A stored response, as it was answered; 404 once it is gone (or was never stored)."""
        stored = self.store.get(response_id)
        if stored is None:
            raise APIError(f"Response with id {excerpt(response_id)} not found.", status=404,
                           param="response_id", code="response_not_found")
        return json.loads(stored)["response"]

    def delete(self, response_id: str) -> dict:
        if not self.store.delete(response_id):
            raise APIError(f"Response with id {excerpt(response_id)} not found.", status=404,
                           param="response_id", code="response_not_found")
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    # -- the stream ----------------------------------------------------------------------------

    def _stream(self, stream: GenerationStream, call: Call) -> Iterator[str]:
        sequence = iter(range(1 << 62))
        message_id = f"msg_{uuid.uuid4().hex}"
        texts: list[str] = []
        finish_reason = None

        def event(kind: str, **fields) -> str:
            return response_event({"type": kind, "sequence_number": next(sequence), **fields})

        part_ids = {"item_id": message_id, "output_index": 0, "content_index": 0}
        try:
            yield event("response.created", response=self._body(call, None, [], done=False))
            yield event("response.in_progress", response=self._body(call, None, [], done=False))
            opened = False
            quiet_since = time.monotonic()
            while not stream.finished:
                update = stream.next_update(timeout=min(self.keepalive_seconds, CLIENT_CHECK_SECONDS))
                if update is None:
                    if call.client_gone():
                        call.record.aborted = True
                        return
                    if time.monotonic() - quiet_since >= self.keepalive_seconds:
                        quiet_since = time.monotonic()
                        yield sse.KEEPALIVE
                    continue
                quiet_since = time.monotonic()
                if not opened:
                    opened = True
                    yield event("response.output_item.added", output_index=0,
                                item=self._message(message_id, None, None))
                    yield event("response.content_part.added", **part_ids,
                                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
                call.observe(update)
                for delta in update.choices:
                    if delta.text:
                        texts.append(delta.text)
                        yield event("response.output_text.delta", **part_ids, delta=delta.text, logprobs=[])
                    if delta.finish_reason:
                        finish_reason = delta.finish_reason
            text = "".join(texts)
            message = self._message(message_id, text, finish_reason)
            yield event("response.output_text.done", **part_ids, text=text, logprobs=[])
            yield event("response.content_part.done", **part_ids, part=message["content"][0])
            yield event("response.output_item.done", output_index=0, item=message)
            body = self._body(call, finish_reason, [message])
            self._save(call, body, text)
            kind = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
            yield event(kind, response=body)
        except Exception as exc:
            # Headers are gone already: the error travels as an event, then the stream ends. The
            # envelope under "error" makes OpenAI's SDKs raise it.
            error = to_api_error(exc)
            call.record.error_code = error.code or error.type
            yield event("error", code=error.code or error.type, message=error.message, param=error.param,
                        error=error.body()["error"])
        finally:
            stream.close()
        call.completed = True

