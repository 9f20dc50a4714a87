"""Every OpenAI request parameter, driven through the official openai client against the real server."""

import json

import jsonschema
import openai
import pytest
from transformers import AutoTokenizer

from engine_bridge.default_model import DEFAULT_MODEL_NAME, default_model_dir

MODEL = DEFAULT_MODEL_NAME
CAPITAL_QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="not-needed", max_retries=0)


def chat(client, **kwargs):
    kwargs.setdefault("messages", CAPITAL_QUESTION)
    return client.chat.completions.create(model=MODEL, **kwargs)


def test_n_gives_that_many_choices(client):
    response = chat(client, n=3, temperature=1.0, max_tokens=12, seed=7)
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert all(c.message.content for c in response.choices)
    assert response.usage.completion_tokens <= 3 * 12


def test_n_streams_each_choice_with_its_role_and_finish(client):
    chunks = list(chat(client, n=2, temperature=1.0, max_tokens=8, seed=3, stream=True))
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert [c.finish_reason for c in mine if c.finish_reason] in (["stop"], ["length"])
        assert "".join(c.delta.content or "" for c in mine)


def test_stop_ends_before_the_stop_text(client):
    whole = chat(client, temperature=0, max_tokens=30).choices[0].message.content
    assert " Paris" in whole
    for stop in (" Paris", [" Paris", "zzz"]):
        choice = chat(client, temperature=0, max_tokens=30, stop=stop).choices[0]
        assert choice.message.content == whole[: whole.index(" Paris")]
        assert choice.finish_reason == "stop"


def test_stop_applies_to_streams_too(client):
    chunks = list(chat(client, temperature=0, max_tokens=30, stop=" Paris", stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" not in text and text.startswith("The capital of France")
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_the_same_seed_gives_the_same_text(client):
    story = [{"role": "user", "content": "Write a poem about autumn."}]
    first = chat(client, messages=story, temperature=1.0, max_tokens=30, seed=1234).choices[0].message.content
    again = chat(client, messages=story, temperature=1.0, max_tokens=30, seed=1234).choices[0].message.content
    assert first == again
    others = {chat(client, messages=story, temperature=1.0, max_tokens=30, seed=s).choices[0].message.content
              for s in (1, 2, 3)}
    assert len(others | {first}) >= 2  # sampling really is random across seeds


def test_chat_logprobs(client):
    response = chat(client, temperature=0, max_tokens=10, logprobs=True, top_logprobs=3)
    choice = response.choices[0]
    entries = choice.logprobs.content
    # One entry per generated token, the end-of-sequence token included (it is not in the text).
    assert choice.finish_reason == "stop"
    assert len(entries) == response.usage.completion_tokens
    assert "".join(e.token for e in entries) == choice.message.content + "<|im_end|>"
    for entry in entries:
        assert entry.logprob <= 0
        assert entry.bytes == list(entry.token.encode("utf-8"))
        assert len(entry.top_logprobs) == 3
        alternatives = [t.logprob for t in entry.top_logprobs]
        assert alternatives == sorted(alternatives, reverse=True)
        # Greedy decoding picks the most likely token.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.logprob == pytest.approx(alternatives[0])


def test_chat_logprobs_without_alternatives_and_streamed(client):
    chunks = list(chat(client, temperature=0, max_tokens=6, logprobs=True, stream=True))
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(entries) == 6
    assert all(e.top_logprobs == [] for e in entries)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "".join(e.token for e in entries) == text


def test_completion_logprobs_with_echo_score_the_prompt(client):
    prompt = "The capital of France is"
    response = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=3,
                                         logprobs=2, echo=True)
    choice = response.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith(prompt)
    assert len(lp.tokens) == response.usage.prompt_tokens + response.usage.completion_tokens
    assert "".join(lp.tokens) == choice.text
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v <= 0 for v in lp.token_logprobs[1:])
    assert lp.text_offset[0] == 0
    assert lp.text_offset == sorted(lp.text_offset)
    assert all(choice.text[o:].startswith(t) for o, t in zip(lp.text_offset, lp.tokens))
    assert all(2 <= len(top) <= 3 for top in lp.top_logprobs[1:])


def test_echo_with_zero_max_tokens_only_scores(client):
    prompt = "Paris is the capital of France."
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=0, logprobs=0, echo=True)
    choice = response.choices[0]
    assert choice.text == prompt
    assert response.usage.completion_tokens == 0
    assert len(choice.logprobs.tokens) == response.usage.prompt_tokens
    assert sum(choice.logprobs.token_logprobs[1:]) < 0


def test_completion_logprobs_streamed_match_the_text(client):
    chunks = list(client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0,
                                            max_tokens=8, logprobs=1, stream=True))
    text = "".join(c.choices[0].text for c in chunks)
    tokens = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    offsets = [o for c in chunks if c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert "".join(tokens) == text
    assert offsets == sorted(offsets) and offsets[0] == 0


def test_stream_include_usage(client):
    whole = chat(client, temperature=0, max_tokens=12)
    chunks = list(chat(client, temperature=0, max_tokens=12, stream=True,
                       stream_options={"include_usage": True}))
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == []
    # Only the prefix cache's share may differ: the second request reuses the first one's prompt.
    streamed, whole = chunks[-1].usage.model_dump(), whole.usage.model_dump()
    assert streamed.pop("prompt_tokens_details")["cached_tokens"] >= whole.pop("prompt_tokens_details")["cached_tokens"]
    assert streamed == whole | {"completion_tokens_details": None}


def test_json_object_output_parses(client):
    question = 'Return a JSON object with the keys "name" and "color" for a cat.'
    choice = chat(client, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=150,
                  response_format={"type": "json_object"}).choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content), dict)


def test_json_schema_output_matches_the_schema(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                                "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    response = chat(client, messages=[{"role": "user", "content": "Invent a person; give their name and age."}],
                    temperature=0, max_tokens=200,
                    response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    person = json.loads(response.choices[0].message.content)
    jsonschema.validate(person, schema)


def test_json_schema_is_enforced_strict_or_not(client):
    schema = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
              "required": ["city"], "additionalProperties": False}
    for strict in (True, False):
        response = chat(client, temperature=0, max_tokens=30, response_format={
            "type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": strict}})
        jsonschema.validate(json.loads(response.choices[0].message.content), schema)


def test_max_completion_tokens_and_user(client):
    response = chat(client, messages=[{"role": "user", "content": "Tell me a long story."}],
                    temperature=0, max_completion_tokens=5, user="user-123")
    assert response.usage.completion_tokens == 5
    assert response.choices[0].finish_reason == "length"


def test_content_parts_and_system_messages(client):
    plain = chat(client, temperature=0, max_tokens=20).choices[0].message.content
    parts = chat(client, temperature=0, max_tokens=20, messages=[
        {"role": "user", "content": [{"type": "text", "text": "What is the capital "},
                                     {"type": "text", "text": "of France?"}]}]).choices[0].message.content
    assert parts == plain
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    for messages in ([{"role": "system", "content": "You are a geography teacher."}, *CAPITAL_QUESTION],
                     [*CAPITAL_QUESTION, {"role": "assistant", "content": "Paris."},
                      {"role": "user", "content": "And of Italy?"}]):
        response = chat(client, temperature=0, max_tokens=20, messages=messages)
        assert response.choices[0].message.content
        # The model's own template renders every message, the system one included.
        templated = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                  return_dict=False)
        assert response.usage.prompt_tokens == len(templated)


def test_prompt_lists_give_one_choice_per_prompt_in_order(client):
    prompts = ["The capital of France is", "One, two, three,"]
    alone = [client.completions.create(model=MODEL, prompt=p, temperature=0, max_tokens=6).choices[0].text
             for p in prompts]
    together = client.completions.create(model=MODEL, prompt=prompts, temperature=0, max_tokens=6)
    assert [c.index for c in together.choices] == [0, 1]
    assert [c.text for c in together.choices] == alone


def test_token_id_prompts_equal_text_prompts(client):
    ids = AutoTokenizer.from_pretrained(default_model_dir()).encode("The capital of France is")
    by_text = client.completions.create(model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=6)
    by_ids = client.completions.create(model=MODEL, prompt=ids, temperature=0, max_tokens=6)
    by_id_lists = client.completions.create(model=MODEL, prompt=[ids, ids], temperature=0, max_tokens=6)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert [c.text for c in by_id_lists.choices] == [by_text.choices[0].text] * 2
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt=[10**9], max_tokens=2)


def test_vllm_sampling_extensions(client):
    greedy = chat(client, temperature=0, max_tokens=20).choices[0].message.content
    top_k_1 = chat(client, temperature=1.0, max_tokens=20, extra_body={"top_k": 1}).choices[0].message.content
    assert top_k_1 == greedy
    min_p_1 = chat(client, temperature=1.0, max_tokens=20, extra_body={"min_p": 1.0}).choices[0].message.content
    assert min_p_1 == greedy
    ignoring = chat(client, temperature=0, max_tokens=40, extra_body={"ignore_eos": True})
    assert ignoring.usage.completion_tokens == 40 and ignoring.choices[0].finish_reason == "length"
    repeated = chat(client, temperature=0, max_tokens=20, extra_body={"repetition_penalty": 1.5})
    assert repeated.choices[0].message.content


def test_context_limits(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="hello " * 33000, max_tokens=1)
    assert info.value.body["code"] == "context_length_exceeded"
    assert "32768" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="hello " * 5000, max_tokens=4000)
    error = info.value.body
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    assert "8192" in error["message"] and "4000" in error["message"]
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, max_tokens=4097)
    assert info.value.body["param"] == "max_tokens"


def test_logit_bias_bans_the_greedy_token_and_forces_another(client):
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    prompt = "The capital of France is"
    greedy = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=3)
    first = tokenizer.encode(prompt + greedy.choices[0].text)[len(tokenizer.encode(prompt))]
    assert greedy.choices[0].text.startswith(tokenizer.decode([first]))
    banned = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=3, logprobs=0,
                                       logit_bias={str(first): -100})
    assert banned.choices[0].logprobs.tokens[0] != tokenizer.decode([first])
    banana = tokenizer.encode(" banana")
    assert len(banana) == 1
    forced = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=3,
                                       logit_bias={str(banana[0]): 100})
    assert forced.choices[0].text == " banana" * 3
    # The same on chat, sampling at temperature 1 too: a +100 bias leaves no other choice.
    answer = chat(client, temperature=1.0, seed=5, max_tokens=4, logit_bias={str(banana[0]): 100})
    assert answer.choices[0].message.content == " banana" * 4
    greedy_chat = chat(client, temperature=0, max_tokens=8, logprobs=True)
    first_chat = greedy_chat.choices[0].logprobs.content[0].token
    (first_id,) = tokenizer.encode(first_chat)
    banned_chat = chat(client, temperature=0, max_tokens=8, logprobs=True, logit_bias={str(first_id): -100})
    assert banned_chat.choices[0].logprobs.content[0].token != first_chat
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, max_tokens=2, logit_bias={"49152": 1})
    assert info.value.body["param"] == "logit_bias.49152"


def test_the_deprecated_function_fields_are_refused(client):
    weather = {"name": "get_weather", "parameters": {"type": "object"}}
    for param, value in (("functions", [weather]), ("function_call", "auto")):
        with pytest.raises(openai.BadRequestError) as info:
            chat(client, max_tokens=2, **{param: value})
        assert info.value.body["param"] == param
        assert "not supported" in info.value.body["message"]
    # Saying "no tools" is not refused.
    assert chat(client, max_tokens=2, tools=[], tool_choice="none").choices[0].message.content is not None


def test_message_names_reach_a_template_that_ignores_them(client):
    # SmolLM2's template renders role and content only; vLLM's server gives it the name too.
    named = [{"role": "user", "name": "alice", "content": "What is the capital of France?"}]
    assert (chat(client, messages=named, temperature=0, max_tokens=8).usage.prompt_tokens
            == chat(client, temperature=0, max_tokens=8).usage.prompt_tokens)
