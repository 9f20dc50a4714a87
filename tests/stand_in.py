"""A stand-in for vLLM's LLMEngine and tokenizer, for edge cases the real engine cannot produce on demand."""

import threading
import time
from types import SimpleNamespace

DEFAULT_ANSWER = "Hello from the stand-in engine ."
VOCAB_SIZE = 1000


class StandInTokenizer:
    """Whitespace tokenizer with a trivial chat template that shows a message's name, if any."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        text = "\n".join(f"{m['role']}{' ' + m['name'] if m.get('name') else ''}: {m['content']}"
                         for m in messages)
        return text + ("\nassistant:" if add_generation_prompt else "")

    def encode(self, text, add_special_tokens=True):
        return [len(word) for word in text.split()]

    def decode(self, token_ids):
        """A word of each id's length, so encode(decode(ids)) == ids for ids of 1 and up."""
        return " ".join("w" * token_id for token_id in token_ids)

    def __len__(self):
        return VOCAB_SIZE


class StandInEngine:
    """Implements the part of LLMEngine's synchronous API the bridge uses.

    Each request emits the words of `answer` one per step (per choice), then stops; it stops
    with "length" when max_tokens runs out first. `fail_after_steps` makes step() raise,
    `reject_prompt_len` makes add_request refuse prompts of that many tokens.
    """

    def __init__(self, answer=DEFAULT_ANSWER, step_delay=0.0, fail_after_steps=None,
                 reject_prompt_len=None, max_model_len=256):
        self.words = answer.split(" ")
        self.step_delay = step_delay
        self.fail_after_steps = fail_after_steps
        self.reject_prompt_len = reject_prompt_len
        self.model_config = SimpleNamespace(max_model_len=max_model_len, tokenizer="stand-in")
        self.requests = {}
        self.added = []
        # request id -> the LoRARequest it came with (None for the base model)
        self.lora_requests = {}
        self.aborted = []
        self.steps = 0
        self.step_threads = set()
        self.lock = threading.Lock()

    def add_request(self, request_id, prompt, params, lora_request=None):
        if len(prompt["prompt_token_ids"]) == self.reject_prompt_len:
            raise ValueError("the stand-in engine rejects this prompt")
        with self.lock:
            self.added.append(request_id)
            self.lora_requests[request_id] = lora_request
            self.requests[request_id] = {
                "prompt": prompt["prompt_token_ids"],
                "params": params,
                "produced": [0] * params.n,
            }

    def abort_request(self, request_ids):
        with self.lock:
            for request_id in request_ids:
                if self.requests.pop(request_id, None) is not None:
                    self.aborted.append(request_id)

    def has_unfinished_requests(self):
        return bool(self.requests)

    def get_num_unfinished_requests(self):
        return len(self.requests)

    def step(self):
        self.step_threads.add(threading.get_ident())
        if self.step_delay:
            time.sleep(self.step_delay)
        self.steps += 1
        if self.fail_after_steps is not None and self.steps > self.fail_after_steps:
            raise RuntimeError("stand-in engine failure")
        outputs = []
        with self.lock:
            for request_id, req in list(self.requests.items()):
                completions = []
                for index, produced in enumerate(req["produced"]):
                    if produced is None:
                        continue
                    word = self.words[produced]
                    text = word if produced == 0 else " " + word
                    produced += 1
                    finish = None
                    if produced >= len(self.words):
                        finish = "stop"
                    elif produced >= req["params"].max_tokens:
                        finish = "length"
                    req["produced"][index] = None if finish else produced
                    completions.append(SimpleNamespace(index=index, text=text, token_ids=[produced],
                                                       finish_reason=finish, stop_reason=None,
                                                       logprobs=None))
                finished = all(p is None for p in req["produced"])
                if finished:
                    del self.requests[request_id]
                outputs.append(SimpleNamespace(request_id=request_id, outputs=completions,
                                               finished=finished, prompt_token_ids=req["prompt"],
                                               prompt_logprobs=None))
        return outputs


FAIL_MARKER_MAX_TOKENS = 99


class FailOnMarkerEngine:
    """The real engine, except that step() raises once a request asks for 99 tokens.

    Lets the real server's engine thread die on demand: ENGINE_FACTORY=tests.stand_in:fail_on_marker.
    """

    def __init__(self, engine):
        self._engine = engine
        self._armed = False

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def add_request(self, request_id, prompt, params, **kwargs):
        self._armed |= params.max_tokens == FAIL_MARKER_MAX_TOKENS
        return self._engine.add_request(request_id, prompt, params, **kwargs)

    def step(self):
        if self._armed:
            raise RuntimeError("injected engine failure")
        return self._engine.step()


def fail_on_marker(settings):
    from engine_bridge.engine import build_engine

    return FailOnMarkerEngine(build_engine(settings))


# How long slow_load waits before it builds the real engine.
SLOW_LOAD_SECONDS = 8.0


def slow_load(settings):
    """The real engine, built after a pause: a model load slowed on purpose (ENGINE_FACTORY=tests.stand_in:slow_load)."""
    from engine_bridge.engine import build_engine

    time.sleep(SLOW_LOAD_SECONDS)
    return build_engine(settings)


def fail_to_load(settings):
    """An engine that never loads (ENGINE_FACTORY=tests.stand_in:fail_to_load)."""
    raise RuntimeError("injected load failure")


def stand_in_with_model_tokenizer(settings):
    """The stand-in engine behind the served model's tokenizer: a server that never answers as the model.

    ENGINE_FACTORY=tests.stand_in:stand_in_with_model_tokenizer, for a second replica that can only
    give the real model's answer by reading it from a shared cache.
    """
    # vLLM's SamplingParams imported here, in gunicorn's post_fork, as the real engine's build does:
    # the bridge converts every request's options to it, and importing it (torch and all) on the
    # gevent hub at the first request stalled the worker past its heartbeat timeout.
    from engine_bridge.conversion import sampling_params
    from engine_bridge.types import SamplingOptions

    sampling_params(SamplingOptions())

    engine = StandInEngine(max_model_len=8192)
    engine.model_config.tokenizer = settings.model
    return engine
