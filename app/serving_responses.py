"""POST /v1/responses (OpenAI's Responses API) on the shared serving machinery of app/serving.py.

A response is generated as a chat completion is (the same validation order, concurrency slots,
client-gone checks, metrics and engine calls); only the request's shape, the answer's shape and
the stream's typed events differ. Stored responses (store, the default) let a later request
continue the conversation with previous_response_id.
"""

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace

from app import protocol_responses, sse
from app.errors import APIError, excerpt, to_api_error
from app.serving import Call, Choice, OpenAIServing, template_messages
from engine_bridge import GenerationStream, SamplingOptions

# The chat template knows system, user and assistant; the Responses API's developer role is
# the system prompt by another name.
TEMPLATE_ROLES = {"developer": "system"}


def response_event(payload: dict) -> str:
    """One typed event as OpenAI sends them: `event: <type>` and `data: {json}`."""
    return f"event: {payload['type']}\n" + sse.event(payload)


def _check_call_outputs(history: list[dict]) -> None:
    """Each function_call_output must answer a function_call just before it (as OpenAI requires)."""
    open_calls: set[str] = set()
    for message in history:
        if message["role"] == "tool":
            if message["tool_call_id"] not in open_calls:
                raise APIError("No function call found for function_call_output with call_id "
                               f"{excerpt(message['tool_call_id'])}: it must follow the function_call "
                               "items it answers.", param="input")
        elif message["role"] == "assistant" and message.get("tool_calls"):
            open_calls = {c["id"] for c in message["tool_calls"]}
        else:
            open_calls = set()


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
        _check_call_outputs(history)
        messages = ([{"role": "system", "content": req["instructions"]}] if req.get("instructions") else [])
        messages += [{**m, "role": TEMPLATE_ROLES.get(m["role"], m["role"])} for m in history]
        # With tool_choice "none" the model is not shown the tools, as on chat (app/serving.py).
        tools = protocol_responses.chat_tools(req["tools"]) if req["tool_choice"] != "none" else None
        return [self.bridge.render_chat(template_messages(messages), tools=tools or None)], [None]

    def tool_calling(self, req):
        if not req["tools"] or req["tool_choice"] == "none":
            return None
        return self.bridge.tool_calling(protocol_responses.chat_tools(req["tools"]),
                                        protocol_responses.chat_tool_choice(req["tool_choice"]),
                                        req["parallel_tool_calls"])

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
        text, calls = "".join(choice.text), []
        if call.tools is not None:
            text, calls = call.tools.parser().parse(text)
            if not call.req["parallel_tool_calls"]:
                calls = calls[:1]  # auto: the grammar did not stop a second call (as on chat)
        return {"text": text or "", "finish_reason": choice.finish_reason,
                "calls": [(c.id, c.name, c.arguments) for c in calls]}

    def _collect(self, stream: GenerationStream, call: Call) -> dict:
        choice = super()._collect(stream, call)["choices"][0]
        text, calls, finish_reason = choice["text"], choice["calls"], choice["finish_reason"]
        # A message item only when there is text, or nothing else to answer with (as OpenAI).
        output = [self._message(f"msg_{uuid.uuid4().hex}", text, finish_reason)] if text or not calls else []
        output += [self._function_call(f"fc_{uuid.uuid4().hex}", *c, finish_reason) for c in calls]
        body = self._body(call, finish_reason, output)
        self._save(call, body, text, calls)
        return body

    @staticmethod
    def _function_call(item_id: str, call_id: str, name: str, arguments: str | None,
                       finish_reason: str | None) -> dict:
        """A function_call output item; arguments None while they are still being generated."""
        status = "in_progress" if arguments is None else "incomplete" if finish_reason == "length" else "completed"
        return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name,
                "arguments": arguments or "", "status": status}

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
            "tool_choice": req["tool_choice"],
            "tools": [{"type": "function", "name": t["name"], "description": t.get("description"),
                       "parameters": t.get("parameters"), "strict": t.get("strict")} for t in req["tools"]],
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

    def _save(self, call: Call, body: dict, text: str, calls: list[tuple[str, str, str]]) -> None:
        if not call.req["store"]:
            return
        answer = {"role": "assistant", "content": text}
        if calls:
            # Kept as chat keeps them, so a function_call_output of the next request answers them.
            answer = {"role": "assistant", "content": text or None, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
                for call_id, name, arguments in calls]}
        conversation = call.req["conversation"] + [answer]
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
        # Output items in the order they were opened: "message", or a call's parser index.
        items: list[str | int] = []
        # Per parser index: [item id, call id, name, argument pieces].
        calls: dict[int, list] = {}
        parser = call.tools.parser() if call.tools is not None else None
        # With tools, text is held until it is more than white space: before a call, the model
        # often writes a newline that is no message.
        held: list[str] = []
        finish_reason = None

        def event(kind: str, **fields) -> str:
            return response_event({"type": kind, "sequence_number": next(sequence), **fields})

        def part_ids() -> dict:
            return {"item_id": message_id, "output_index": items.index("message"), "content_index": 0}

        def open_message() -> Iterator[str]:
            items.append("message")
            yield event("response.output_item.added", output_index=len(items) - 1,
                        item=self._message(message_id, None, None))
            yield event("response.content_part.added", **part_ids(),
                        part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})

        def add_text(text: str) -> Iterator[str]:
            if "message" not in items:
                held.append(text)
                if parser is not None and not "".join(held).strip():
                    return
                yield from open_message()
                text = "".join(held)
            texts.append(text)
            yield event("response.output_text.delta", **part_ids(), delta=text, logprobs=[])

        def add_call_piece(piece) -> Iterator[str]:
            if piece.index > 0 and not call.req["parallel_tool_calls"]:
                return
            if piece.index not in calls:
                if piece.id is None:
                    return
                calls[piece.index] = [f"fc_{uuid.uuid4().hex}", piece.id, piece.name or "", []]
                items.append(piece.index)
                yield event("response.output_item.added", output_index=len(items) - 1,
                            item=self._function_call(*calls[piece.index][:3], None, None))
            if piece.arguments:
                calls[piece.index][3].append(piece.arguments)
                yield event("response.function_call_arguments.delta", item_id=calls[piece.index][0],
                            output_index=items.index(piece.index), delta=piece.arguments)

        try:
            yield event("response.created", response=self._body(call, None, [], done=False))
            yield event("response.in_progress", response=self._body(call, None, [], done=False))
            for update in self.updates(stream, call):
                if update is None:
                    yield sse.KEEPALIVE
                    continue
                if parser is None and not items:
                    yield from open_message()
                call.observe(update)
                for delta in update.choices:
                    if parser is None:
                        if delta.text:
                            yield from add_text(delta.text)
                    else:
                        parsed = parser.parse_delta(delta.text, delta.token_ids,
                                                    finished=delta.finish_reason is not None)
                        if parsed is not None:
                            if parsed.content:
                                yield from add_text(parsed.content)
                            for piece in parsed.tool_calls:
                                yield from add_call_piece(piece)
                    if delta.finish_reason:
                        finish_reason = delta.finish_reason
            if call.record.aborted:  # the client left: nobody reads the rest
                return
            if not calls and "message" not in items:
                # No call: the answer is a message, even an empty one (as without tools).
                yield from open_message()
                if held:
                    texts.append("".join(held))
                    yield event("response.output_text.delta", **part_ids(), delta=texts[-1], logprobs=[])
            text = "".join(texts)
            output = []
            for index, item in enumerate(items):
                if item == "message":
                    message = self._message(message_id, text, finish_reason)
                    yield event("response.output_text.done", **part_ids(), text=text, logprobs=[])
                    yield event("response.content_part.done", **part_ids(), part=message["content"][0])
                    output.append(message)
                else:
                    item_id, call_id, name, pieces = calls[item]
                    if not pieces:  # a call without arguments: "{}", as the whole answer has it
                        pieces.append("{}")
                        yield event("response.function_call_arguments.delta", item_id=item_id,
                                    output_index=index, delta="{}")
                    yield event("response.function_call_arguments.done", item_id=item_id, output_index=index,
                                arguments="".join(pieces))
                    output.append(self._function_call(item_id, call_id, name, "".join(pieces), finish_reason))
                yield event("response.output_item.done", output_index=index, item=output[-1])
            body = self._body(call, finish_reason, output)
            self._save(call, body, text, [(calls[i][1], calls[i][2], "".join(calls[i][3])) for i in sorted(calls)])
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

