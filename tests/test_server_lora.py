"""LoRA adapters served as models: a real adapter (made here with peft) next to the base model."""

import pytest
import requests
from openai import OpenAI

from engine_bridge.default_model import DEFAULT_MODEL_NAME, default_model_dir
from tests.conftest import ServerProcess

ADAPTER = "smol-test-lora"
PROMPT = "The capital of France is"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def make_adapter(folder) -> None:
    """A rank-8 LoRA on q_proj and v_proj with random, non-zero weights (peft's init_lora_weights=False)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(default_model_dir(), dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                        task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(folder)


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapter")
    make_adapter(folder)
    proc = ServerProcess(env={"LORA_MODULES": f"{ADAPTER}={folder}"}).start()
    yield proc
    proc.stop()


def client(proc) -> OpenAI:
    return OpenAI(base_url=proc.base_url + "/v1", api_key="unused", max_retries=0, timeout=300)


def completion(proc, model: str):
    return client(proc).completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=5)


def test_models_lists_the_adapter_with_the_base_model_as_parent(lora_server):
    models = requests.get(lora_server.base_url + "/v1/models", timeout=10).json()["data"]
    assert [(m["id"], m["parent"], m["root"]) for m in models] == [
        (DEFAULT_MODEL_NAME, None, DEFAULT_MODEL_NAME), (ADAPTER, DEFAULT_MODEL_NAME, DEFAULT_MODEL_NAME)]
    assert [m.id for m in client(lora_server).models.list()] == [DEFAULT_MODEL_NAME, ADAPTER]


def test_the_adapter_changes_the_output_and_the_base_model_is_unchanged(lora_server, server):
    base_alone = completion(server, DEFAULT_MODEL_NAME).choices[0]
    base_beside = completion(lora_server, DEFAULT_MODEL_NAME).choices[0]
    adapted = completion(lora_server, ADAPTER)
    assert adapted.model == ADAPTER
    adapted = adapted.choices[0]

    # The base model answers as it does on a server without adapters.
    assert base_beside.text == base_alone.text
    assert base_beside.logprobs.tokens == base_alone.logprobs.tokens
    for ours, theirs in zip(base_beside.logprobs.token_logprobs, base_alone.logprobs.token_logprobs):
        assert ours == pytest.approx(theirs, abs=1e-3)
    # The adapter's weights change the distribution of the very first token.
    first_adapted = adapted.logprobs.top_logprobs[0]
    first_base = base_alone.logprobs.top_logprobs[0]
    assert any(abs(first_adapted.get(token, 0.0) - logprob) > 0.05 for token, logprob in first_base.items()), \
        (first_adapted, first_base)


def test_chat_and_streaming_select_the_adapter(lora_server):
    openai = client(lora_server)
    base = openai.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=QUESTION, max_tokens=12,
                                          temperature=0, logprobs=True)
    adapted = openai.chat.completions.create(model=ADAPTER, messages=QUESTION, max_tokens=12, temperature=0,
                                             logprobs=True)
    assert adapted.model == ADAPTER
    assert [t.logprob for t in adapted.choices[0].logprobs.content] != \
        [t.logprob for t in base.choices[0].logprobs.content]
    streamed = openai.chat.completions.create(model=ADAPTER, messages=QUESTION, max_tokens=12, temperature=0,
                                              stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == \
        adapted.choices[0].message.content


def test_tokenize_accepts_the_adapter_and_an_unknown_model_is_still_404(lora_server):
    answer = requests.post(lora_server.base_url + "/tokenize", json={"model": ADAPTER, "prompt": PROMPT},
                           timeout=10)
    assert answer.status_code == 200 and answer.json()["count"] > 0
    unknown = requests.post(lora_server.base_url + "/v1/completions",
                            json={"model": "no-such-adapter", "prompt": PROMPT}, timeout=10)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert unknown.json()["error"]["param"] == "model"
