"""Between the bridge's plain types and vLLM's: SamplingParams in, RequestOutput out."""

from engine_bridge.errors import RequestRejected
from engine_bridge.types import ChoiceDelta, GenerationUpdate, SamplingOptions, TokenLogprob


def client_errors() -> tuple[type[BaseException], ...]:
    """What vLLM raises for a request it refuses (as opposed to an engine fault)."""
    from vllm.exceptions import VLLMClientError

    return (ValueError, TypeError, VLLMClientError)


def rejection(exc: BaseException) -> RequestRejected:
    """The RequestRejected that tells the client what vLLM refused."""
    param = getattr(exc, "parameter", None)
    # vLLM's message ends with "(parameter=..., value=...)"; the param field already says it.
    message = exc.args[0] if param is not None and exc.args else str(exc)
    return RequestRejected(str(message), param=param)


def sampling_params(options: SamplingOptions):
    """vLLM's SamplingParams for options; raises RequestRejected for values vLLM refuses."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    structured = None
    if options.json_schema is not None:
        structured = StructuredOutputsParams(json=options.json_schema)
    elif options.json_object:
        structured = StructuredOutputsParams(json_object=True)
    try:
        return SamplingParams(
            n=options.n,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            top_k=options.top_k,
            min_p=options.min_p,
            frequency_penalty=options.frequency_penalty,
            presence_penalty=options.presence_penalty,
            repetition_penalty=options.repetition_penalty,
            seed=options.seed,
            stop=list(options.stop) or None,
            ignore_eos=options.ignore_eos,
            logit_bias=options.logit_bias,
            logprobs=options.logprobs,
            prompt_logprobs=options.prompt_logprobs,
            structured_outputs=structured,
            # Only the new tokens of each step: the bridge never re-sends the text so far.
            output_kind=RequestOutputKind.DELTA,
        )
    except client_errors() as exc:
        raise rejection(exc) from exc


def lora_request(name: str, index: int, path: str):
    """vLLM's LoRARequest for the index-th adapter of LORA_MODULES (vLLM's ids start at 1)."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(lora_name=name, lora_int_id=index + 1, lora_path=path)


def _token_logprob(token_id: int, position: dict) -> TokenLogprob:
    chosen = position[token_id]
    ranked = sorted(position.values(), key=lambda lp: lp.rank if lp.rank is not None else 0)
    return TokenLogprob(chosen.decoded_token or "", chosen.logprob,
                        tuple((lp.decoded_token or "", lp.logprob) for lp in ranked))


def _logprobs(token_ids, positions) -> list[TokenLogprob | None] | None:
    if positions is None:
        return None
    return [None if position is None else _token_logprob(token_id, position)
            for token_id, position in zip(token_ids, positions)]


def _choice_delta(c) -> ChoiceDelta:
    # One entry per generated token, the end-of-sequence token included (as OpenAI and vLLM do):
    # it is counted in usage, so tools that read logprobs by position need its entry too.
    return ChoiceDelta(c.index, c.text, len(c.token_ids), c.finish_reason, _logprobs(c.token_ids, c.logprobs),
                       tuple(c.token_ids))


def update_from_output(output, prompt_index: int) -> GenerationUpdate:
    """The GenerationUpdate for one of vLLM's (delta) RequestOutputs."""
    choices = [_choice_delta(c) for c in output.outputs]
    prompt_ids = output.prompt_token_ids or ()
    # In delta mode vLLM sends the prompt's logprobs with the first output only.
    prompt_logprobs = _logprobs(prompt_ids, output.prompt_logprobs) if output.prompt_logprobs else None
    # Set once the prompt is prefilled and repeated on every later output (None from engines that
    # do not report it).
    cached = getattr(output, "num_cached_tokens", None) or 0
    return GenerationUpdate(prompt_index, choices, len(prompt_ids), output.finished, prompt_logprobs,
                            num_cached_tokens=cached)
