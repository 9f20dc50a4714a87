"""DTYPE=auto on CPU: bfloat16 only where vLLM's bf16 path is native (AMX), float32 elsewhere."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine_bridge import SamplingOptions
from engine_bridge.default_model import default_model_dir
from engine_bridge.settings import cpu_auto_dtype, cpu_flags

QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "Who wrote Romeo and Juliet?",
             "What is 2 + 2?"]
MAX_TOKENS = 16


def test_auto_picks_bfloat16_only_with_amx(tmp_path):
    assert cpu_auto_dtype(frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})) == "bfloat16"
    # AVX-512 BF16 without AMX: the wrong text of docs/engine-notes.md.
    assert cpu_auto_dtype(frozenset({"avx2", "avx512f", "avx512_bf16"})) == "float32"
    assert cpu_auto_dtype(frozenset({"avx", "avx2", "fma"})) == "float32"
    assert cpu_auto_dtype(frozenset()) == "float32"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2 amx_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(str(cpuinfo)) == frozenset({"fpu", "avx", "avx2", "amx_bf16"})
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def greedy_with_logprobs(bridge, prompt_ids) -> tuple[str, list[float]]:
    text, logprobs = [], []
    options = SamplingOptions(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=0)
    for update in bridge.generate([prompt_ids], options):
        for choice in update.choices:
            text.append(choice.text)
            logprobs += [entry.logprob for entry in choice.logprobs or []]
    return "".join(text), logprobs


def transformers_greedy(model, prompt_ids) -> tuple[list[int], list[float]]:
    """Greedy ids and their log-probabilities from a plain transformers forward pass."""
    ids = list(prompt_ids)
    logprobs = []
    with torch.no_grad():
        for _ in range(MAX_TOKENS):
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            step = torch.log_softmax(logits, dim=-1)
            token = int(step.argmax())
            ids.append(token)
            logprobs.append(float(step[token]))
    return ids[len(prompt_ids):], logprobs


def test_the_engine_runs_in_the_dtype_auto_picks_for_this_cpu(real_bridge):
    chosen = cpu_auto_dtype(cpu_flags())
    assert real_bridge.settings.dtype == "auto"
    assert real_bridge._engine.model_config.dtype == getattr(torch, chosen)
    if chosen == "float32":
        return  # this CPU has no AMX: float32, whose answers the other tests check
    # bfloat16 chosen (an AMX machine): greedy answers as float32's, and per-token logprobs within
    # what bf16 itself costs in transformers on the same folder (measured here, doubled).
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    fp32 = AutoModelForCausalLM.from_pretrained(default_model_dir(), dtype=torch.float32)
    bf16 = AutoModelForCausalLM.from_pretrained(default_model_dir(), dtype=torch.bfloat16)
    for question in QUESTIONS:
        prompt = real_bridge.render_chat([{"role": "user", "content": question}])
        reference_ids, reference = transformers_greedy(fp32, prompt)
        _, hf_bf16 = transformers_greedy(bf16, prompt)
        text, logprobs = greedy_with_logprobs(real_bridge, prompt)
        n = len(logprobs)  # fewer than MAX_TOKENS when the model stops
        assert text == tokenizer.decode(reference_ids[:n], skip_special_tokens=True), question
        tolerance = 2 * max(abs(a - b) for a, b in zip(reference, hf_bf16)) + 0.05
        assert max(abs(a - b) for a, b in zip(logprobs[:n], reference[:n])) <= tolerance, question
