"""What the engine bridge raises; app/errors.py maps each to an HTTP status and a stream event."""


class EngineError(Exception):
    """Base class for every error raised by the engine bridge."""


class EngineNotReady(EngineError):
    """The engine is still loading, draining or stopped; try again later."""


class GenerationInterrupted(EngineError):
    """The server stopped while this request was generating (its drain time was up); the work is lost.

    Not an EngineNotReady: that one is a 503 sent before any work, which a proxy in front may
    safely send to another replica; this request had started.
    """


class EngineFailed(EngineError):
    """The engine thread died or the engine raised; requests in flight are lost."""


class RequestRejected(EngineError):
    """The engine refused this one request (bad parameters it alone can check)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class ContextLengthExceeded(RequestRejected):
    """Prompt plus requested completion do not fit in the model's context."""

    def __init__(self, prompt_tokens: int, max_tokens: int, max_model_len: int):
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len
        super().__init__(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, "
            f"{max_tokens} for the completion). Please reduce the prompt or max_tokens."
        )
        self.param = None
