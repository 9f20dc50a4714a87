"""usage.prompt_tokens_details.cached_tokens: the engine's prefix-cache hits, on the real server."""

import uuid

import openai
import pytest

from engine_bridge.default_model import DEFAULT_MODEL_NAME

# vLLM's CPU backend caches prefixes in KV blocks of 128 tokens (16 on GPUs): only whole blocks
# are reused, so a hit is a multiple of the block size.
CPU_BLOCK_SIZE = 128
# Long enough for several blocks.
LONG_TEXT = " ".join(f"Fact {i}: the number {i} squared is {i * i}." for i in range(60))


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="not-needed", max_retries=0)


def unique_prefix() -> str:
    """A prompt start no earlier request shared, so the first request of a test finds nothing cached."""
    return f"Session {uuid.uuid4().hex}. "


def cached(usage) -> int:
    return usage.prompt_tokens_details.cached_tokens


def assert_prefix_hit(usage) -> None:
    assert 0 < cached(usage) < usage.prompt_tokens
    assert cached(usage) % CPU_BLOCK_SIZE == 0
    # The last, partial block is computed again.
    assert usage.prompt_tokens - cached(usage) <= CPU_BLOCK_SIZE


def test_chat_reports_the_prefix_cache_hit_of_a_repeated_prompt(client):
    messages = [{"role": "system", "content": unique_prefix() + LONG_TEXT},
                {"role": "user", "content": "What is 7 squared?"}]
    first = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=messages, max_tokens=4,
                                           temperature=0).usage
    assert first.prompt_tokens > 3 * CPU_BLOCK_SIZE
    assert cached(first) == 0
    second = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=messages, max_tokens=4,
                                            temperature=0).usage
    assert second.prompt_tokens == first.prompt_tokens
    assert_prefix_hit(second)


def test_a_shared_system_prompt_is_reused_by_another_question(client):
    system = {"role": "system", "content": unique_prefix() + LONG_TEXT}
    first = client.chat.completions.create(model=DEFAULT_MODEL_NAME, max_tokens=2, messages=[
        system, {"role": "user", "content": "What is 3 squared?"}]).usage
    other = client.chat.completions.create(model=DEFAULT_MODEL_NAME, max_tokens=2, messages=[
        system, {"role": "user", "content": "And what is 5 squared, please?"}]).usage
    assert cached(first) == 0
    assert 0 < cached(other) <= other.prompt_tokens - len("And what is 5 squared?".split())
    assert cached(other) % CPU_BLOCK_SIZE == 0


def test_completions_report_it_streamed_and_not(client):
    prompt = unique_prefix() + LONG_TEXT + " Fact 60:"
    first = client.completions.create(model=DEFAULT_MODEL_NAME, prompt=prompt, max_tokens=4, temperature=0).usage
    assert cached(first) == 0
    chunks = list(client.completions.create(model=DEFAULT_MODEL_NAME, prompt=prompt, max_tokens=4, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].usage.prompt_tokens == first.prompt_tokens
    assert_prefix_hit(chunks[-1].usage)


def test_a_streamed_chat_reports_it_in_its_usage_chunk(client):
    messages = [{"role": "user", "content": unique_prefix() + LONG_TEXT + " What is 9 squared?"}]
    chunks = list(client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=messages, max_tokens=3,
                                                 stream=True, stream_options={"include_usage": True}))
    assert cached(chunks[-1].usage) == 0
    chunks = list(client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=messages, max_tokens=3,
                                                 stream=True, stream_options={"include_usage": True}))
    assert_prefix_hit(chunks[-1].usage)


def test_responses_report_it_as_input_tokens_details_streamed_and_not(client):
    text = unique_prefix() + LONG_TEXT + " What is 11 squared?"
    first = client.responses.create(model=DEFAULT_MODEL_NAME, input=text, max_output_tokens=3, temperature=0,
                                    store=False).usage
    assert first.input_tokens > 3 * CPU_BLOCK_SIZE
    assert first.input_tokens_details.cached_tokens == 0
    events = list(client.responses.create(model=DEFAULT_MODEL_NAME, input=text, max_output_tokens=3,
                                          temperature=0, store=False, stream=True))
    usage = events[-1].response.usage
    cached_tokens = usage.input_tokens_details.cached_tokens
    assert usage.input_tokens == first.input_tokens
    assert 0 < cached_tokens < usage.input_tokens and cached_tokens % CPU_BLOCK_SIZE == 0
    assert usage.input_tokens - cached_tokens <= CPU_BLOCK_SIZE
