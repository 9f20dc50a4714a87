"""Plain data exchanged between the app and the engine thread; no vLLM types cross this line."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingOptions:
    """What to generate and how; engine_bridge.conversion turns it into vLLM's SamplingParams."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # vLLM's extensions to the OpenAI parameters.
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    # Alternatives to report per generated token (0: the sampled token only); None: no logprobs.
    logprobs: int | None = None
    # The same for every prompt token (echo with logprobs).
    prompt_logprobs: int | None = None
    # Structured output: force a JSON object, or JSON matching this schema.
    json_object: bool = False
    json_schema: dict | None = None
    # Token id -> bias added to its logit before sampling (OpenAI's logit_bias).
    logit_bias: dict[int, float] | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One token with its log-probability and the most likely alternatives at its position."""

    token: str
    logprob: float
    # (token, logprob) pairs, most likely first; may include the token itself.
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class ChoiceDelta:
    """What one choice gained in one engine step."""

    index: int
    text: str
    token_count: int
    finish_reason: str | None
    logprobs: list[TokenLogprob] | None = None
    # The new tokens themselves (tool-call parsers may read them).
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class GenerationUpdate:
    """One engine step's output for one prompt of a request."""

    prompt_index: int
    choices: list[ChoiceDelta]
    prompt_tokens: int
    # Whether this prompt's choices are all done.
    finished: bool
    # Only on a prompt's first update, when asked for: one entry per prompt token (None for the first).
    prompt_logprobs: list[TokenLogprob | None] | None = field(default=None)
    # Prompt tokens whose KV cache the engine found in its prefix cache (vLLM's num_cached_tokens);
    # 0 when nothing was reused or prefix caching is off.
    num_cached_tokens: int = 0
