"""The real vLLM engine on the default model, driven through the bridge in this process."""

import time

import gevent

from engine_bridge import EngineState, SamplingOptions

CAPITAL_QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def generate_text(bridge, prompt_ids, **options):
    text, finish, tokens, prompt_tokens = [], None, 0, None
    for update in bridge.generate([prompt_ids], SamplingOptions(**options)):
        prompt_tokens = update.prompt_tokens
        for choice in update.choices:
            text.append(choice.text)
            tokens += choice.token_count
            finish = choice.finish_reason or finish
    return "".join(text), finish, tokens, prompt_tokens


def test_the_default_model_answers_correctly(real_bridge):
    assert real_bridge.state is EngineState.READY
    prompt = real_bridge.render_chat(CAPITAL_QUESTION)
    text, finish, tokens, prompt_tokens = generate_text(real_bridge, prompt, max_tokens=30, temperature=0.0)
    assert "Paris" in text
    assert finish == "stop"
    assert prompt_tokens == len(prompt)
    assert 0 < tokens < 30


def test_max_tokens_is_honoured_exactly(real_bridge):
    prompt = real_bridge.tokenize("Here is a long story about a dragon:")
    text, finish, tokens, _ = generate_text(real_bridge, prompt, max_tokens=12, temperature=0.0)
    assert finish == "length"
    assert tokens == 12
    assert text.strip()


def test_concurrent_requests_match_their_solo_answers(real_bridge):
    prompts = [real_bridge.render_chat([{"role": "user", "content": q}]) for q in
               ("What is the capital of France?", "Name a primary colour.", "What is 2 + 2?")]
    solo = [generate_text(real_bridge, p, max_tokens=20, temperature=0.0)[0] for p in prompts]
    together = [gevent.spawn(generate_text, real_bridge, p, max_tokens=20, temperature=0.0) for p in prompts]
    gevent.joinall(together, raise_error=True)
    assert [g.value[0] for g in together] == solo


def test_closing_a_stream_frees_the_engine(real_bridge):
    prompt = real_bridge.tokenize("Count from one to one thousand: one, two, three,")
    streams = [real_bridge.generate([prompt], SamplingOptions(max_tokens=2000, temperature=1.0, seed=i))
               for i in range(3)]
    for stream in streams:
        stream.next_update()
    assert real_bridge.unfinished_requests() == 3
    for stream in streams:
        stream.close()
    deadline = time.monotonic() + 1.0
    while real_bridge.unfinished_requests() and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert real_bridge.unfinished_requests() == 0
