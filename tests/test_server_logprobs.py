"""Logprobs by position and by value: the real server against a plain transformers forward pass."""

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine_bridge.default_model import DEFAULT_MODEL_NAME, default_model_dir

MODEL = DEFAULT_MODEL_NAME
# float32 on both sides; what is left is the order of floating-point operations.
TOLERANCE = 1e-3
CAPITAL_QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
PROMPTS = ["The capital of France is", "Once upon a time, in a land far away,",
           "def fibonacci(n):\n    if n < 2:\n        return n\n"]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="not-needed", max_retries=0)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_model_dir())


@pytest.fixture(scope="module")
def reference(tokenizer):
    """The same model folder in Hugging Face transformers, float32."""
    model = AutoModelForCausalLM.from_pretrained(default_model_dir(), dtype=torch.float32)
    model.eval()
    # One thread: the server next door wants the cores too, and torch's threads then only wait
    # for each other (a forward pass took seconds instead of a fraction of one).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Reference(model, tokenizer)
    torch.set_num_threads(threads)


class Reference:
    """Log-probabilities and greedy continuations computed by transformers."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @torch.no_grad()
    def log_softmax(self, ids: list[int]) -> torch.Tensor:
        """Row i: the distribution of the token after ids[: i + 1]."""
        logits = self.model(torch.tensor([ids])).logits[0]
        return torch.log_softmax(logits.float(), dim=-1)

    @torch.no_grad()
    def greedy(self, ids: list[int], max_tokens: int) -> list[int]:
        """The greedy continuation of ids, up to and including the end-of-sequence token."""
        eos = self.tokenizer.eos_token_id
        output = self.model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False,
                                     eos_token_id=eos, pad_token_id=eos)
        return output[0][len(ids):].tolist()

    def text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])


def completion_entries(choices_logprobs) -> tuple[list, list, list, list]:
    """tokens, token_logprobs, top_logprobs and text_offset of one choice, chunks joined."""
    joined = ([], [], [], [])
    for lp in choices_logprobs:
        for whole, part in zip(joined, (lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset)):
            whole.extend(part)
    return joined


@pytest.mark.parametrize("prompt", PROMPTS)
def test_echoed_prompt_and_greedy_completion_logprobs_equal_transformers(client, reference, prompt):
    response = client.completions.create(model=MODEL, prompt=prompt, echo=True, logprobs=2, max_tokens=6,
                                         temperature=0)
    choice, usage = response.choices[0], response.usage
    lp = choice.logprobs
    prompt_ids = reference.tokenizer.encode(prompt)
    assert usage.prompt_tokens == len(prompt_ids)
    completion_ids = reference.greedy(prompt_ids, max_tokens=6)
    assert usage.completion_tokens == len(completion_ids)
    ids = prompt_ids + completion_ids
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == len(ids)
    assert lp.tokens == [reference.text(i) for i in ids]

    expected = reference.log_softmax(ids)
    # The first prompt token has nothing before it: null, as OpenAI sends it.
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for position in range(1, len(ids)):
        row = expected[position - 1]
        assert lp.token_logprobs[position] == pytest.approx(float(row[ids[position]]), abs=TOLERANCE), position
        best = torch.topk(row, 2)
        top = lp.top_logprobs[position]
        for value, token_id in zip(best.values.tolist(), best.indices.tolist()):
            assert top[reference.text(token_id)] == pytest.approx(value, abs=TOLERANCE), position
    # Greedy decoding: each completion token is the most likely one, and its logprob is that top-1.
    for position in range(len(prompt_ids), len(ids)):
        assert lp.token_logprobs[position] == pytest.approx(float(expected[position - 1].max()), abs=TOLERANCE)


def chat_template_prompt(tokenizer) -> str:
    return tokenizer.apply_chat_template(CAPITAL_QUESTION, add_generation_prompt=True, tokenize=False)


def test_a_completion_that_ends_on_eos_has_an_entry_for_it(client, reference):
    # The chat template's text as a plain prompt: the model answers and ends on <|im_end|>.
    prompt = chat_template_prompt(reference.tokenizer)
    response = client.completions.create(model=MODEL, prompt=prompt, logprobs=2, max_tokens=40, temperature=0)
    choice, usage = response.choices[0], response.usage
    assert choice.finish_reason == "stop"
    tokens, token_logprobs, top_logprobs, text_offset = completion_entries([choice.logprobs])
    assert len(tokens) == len(token_logprobs) == len(top_logprobs) == len(text_offset) == usage.completion_tokens
    eos = reference.tokenizer.eos_token
    assert eos == "<|im_end|>"
    # The text is what the model said; the end token is in the logprobs, not in the text.
    assert tokens[-1] == eos and not choice.text.endswith(eos)
    assert "".join(tokens[:-1]) == choice.text
    assert text_offset[-1] == len(choice.text)

    prompt_ids = reference.tokenizer.encode(prompt)
    completion_ids = reference.greedy(prompt_ids, max_tokens=40)
    assert completion_ids[-1] == reference.tokenizer.eos_token_id
    expected = reference.log_softmax(prompt_ids + completion_ids)[len(prompt_ids) - 1:]
    assert tokens == [reference.text(i) for i in completion_ids]
    assert token_logprobs == pytest.approx([float(row.max()) for row in expected[:-1]], abs=TOLERANCE)
    # At the end token, the alternatives are scored like any other position, the end token first.
    assert list(top_logprobs[-1])[0] == eos
    assert top_logprobs[-1][eos] == pytest.approx(token_logprobs[-1])

    echoed = client.completions.create(model=MODEL, prompt=prompt, logprobs=0, max_tokens=40, temperature=0,
                                       echo=True).choices[0].logprobs
    assert len(echoed.token_logprobs) == usage.prompt_tokens + usage.completion_tokens
    assert echoed.tokens[-1] == eos
    assert echoed.token_logprobs[usage.prompt_tokens:] == pytest.approx(token_logprobs, abs=TOLERANCE)

    streamed = list(client.completions.create(model=MODEL, prompt=prompt, logprobs=2, max_tokens=40,
                                              temperature=0, stream=True))
    assert completion_entries(c.choices[0].logprobs for c in streamed if c.choices[0].logprobs) == (
        tokens, token_logprobs, top_logprobs, text_offset)
    assert "".join(c.choices[0].text for c in streamed) == choice.text


def test_chat_logprobs_count_the_end_token_and_equal_transformers(client, reference):
    response = client.chat.completions.create(model=MODEL, messages=CAPITAL_QUESTION, temperature=0, max_tokens=40,
                                              logprobs=True, top_logprobs=2)
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    entries = choice.logprobs.content
    assert len(entries) == response.usage.completion_tokens
    eos = reference.tokenizer.eos_token
    assert entries[-1].token == eos and entries[-1].bytes == list(eos.encode())
    assert [e.token for e in entries[-1].top_logprobs][0] == eos
    assert "".join(e.token for e in entries) == choice.message.content + eos

    prompt_ids = reference.tokenizer.apply_chat_template(CAPITAL_QUESTION, add_generation_prompt=True,
                                                         tokenize=True, return_dict=False)
    assert response.usage.prompt_tokens == len(prompt_ids)
    completion_ids = reference.greedy(prompt_ids, max_tokens=40)
    assert [e.token for e in entries] == [reference.text(i) for i in completion_ids]
    expected = reference.log_softmax(prompt_ids + completion_ids)[len(prompt_ids) - 1:-1]
    assert [e.logprob for e in entries] == pytest.approx([float(row.max()) for row in expected], abs=TOLERANCE)
    for entry, row in zip(entries, expected):
        best = torch.topk(row, 2)
        assert [t.token for t in entry.top_logprobs] == [reference.text(i) for i in best.indices.tolist()]
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(best.values.tolist(), abs=TOLERANCE)

    chunks = list(client.chat.completions.create(model=MODEL, messages=CAPITAL_QUESTION, temperature=0,
                                                 max_tokens=40, logprobs=True, top_logprobs=2, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in entries]


def test_without_echo_there_is_one_entry_per_completion_token(client, reference):
    for max_tokens in (1, 5):
        response = client.completions.create(model=MODEL, prompt=PROMPTS[1], logprobs=0, max_tokens=max_tokens,
                                             temperature=0)
        lp = response.choices[0].logprobs
        assert response.choices[0].finish_reason == "length"
        assert len(lp.token_logprobs) == response.usage.completion_tokens == max_tokens
        assert all(len(top) == 1 for top in lp.top_logprobs)
