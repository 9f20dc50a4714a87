"""The engine's own ceiling: vLLM's offline `LLM` on the same prompts, with no server in between.

python -m bench.offline <scenarios.json> <model_dir> <result.json> [--no-prefix-caching]

Each scenario's prompts are the ones vLLM's benchmark client sends (its random dataset, same
seed, same arguments), put through the model's chat template as a chat server does. They run
through `LLM(...).llm_engine` in a closed loop of `concurrency` requests, as the client keeps
them: a request is added when one finishes, and the loop is vLLM's own `LLM.generate` loop
(`add_request`, then `step()` until done) with a clock read after every step. So the numbers
are the client's (output throughput, TTFT from the moment a request is added, the gaps between
a request's tokens), minus HTTP, JSON, and everything a server does around the engine.
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench.run import Scenario, client_args
from bench.servers import MODEL_NAME

# The engine settings both servers get in `make bench` (bench/servers.py).
ENGINE = {"dtype": "float32", "enforce_eager": True, "seed": 0}


def sample_prompts(scenario: Scenario, model_dir: Path) -> list[tuple[str, int]]:
    """(prompt text, output tokens) per request, exactly as `vllm bench serve` draws them for scenario."""
    from vllm.benchmarks.datasets import get_samples
    from vllm.benchmarks.serve import add_cli_args
    from vllm.tokenizers import get_tokenizer
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    argv = client_args(scenario, "http://unused", model_dir, Path("/tmp"), "unused.json", progress_bar=False)
    args = parser.parse_args(argv[2:])  # without "bench serve"
    tokenizer = get_tokenizer(str(model_dir), tokenizer_mode=args.tokenizer_mode,
                              trust_remote_code=args.trust_remote_code)
    samples = get_samples(args, tokenizer)
    return [(s.prompt, s.expected_output_len) for s in samples]


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) * 1000 if values else None


def run_scenario(llm, tokenizer, scenario: Scenario, prompts: list[tuple[str, int]]) -> dict:
    """Closed loop of scenario.concurrency requests through llm's engine; the client's metrics."""
    from vllm import SamplingParams

    engine = llm.llm_engine
    pending = []
    for i, (text, output_len) in enumerate(prompts):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        ids = tokenizer.encode(rendered, add_special_tokens=False)
        params = SamplingParams(max_tokens=output_len, ignore_eos=True, temperature=0)
        pending.append((f"{scenario.name}-{i}", ids, params))
    warmups, pending = pending[:scenario.warmups], pending[scenario.warmups:]
    for request_id, ids, params in warmups:  # as the client's --num-warmups: run, not counted
        engine.add_request(request_id + "-warmup", {"prompt_token_ids": ids}, params)
        while engine.has_unfinished_requests():
            engine.step()

    added: dict[str, float] = {}
    last_token: dict[str, float] = {}
    first_token: dict[str, float] = {}
    ended: dict[str, float] = {}
    tokens: dict[str, int] = {}
    itls: list[float] = []
    queue = list(pending)
    cpu_before = os.times()
    started = time.perf_counter()
    while queue or engine.has_unfinished_requests():
        while queue and len(added) - len(ended) < scenario.concurrency:
            request_id, ids, params = queue.pop(0)
            added[request_id] = time.perf_counter()
            engine.add_request(request_id, {"prompt_token_ids": ids}, params)
        outputs = engine.step()
        now = time.perf_counter()
        for output in outputs:
            rid = output.request_id
            count = len(output.outputs[0].token_ids)
            if count > tokens.get(rid, 0):
                if rid in last_token:
                    itls.append(now - last_token[rid])
                else:
                    first_token[rid] = now - added[rid]
                last_token[rid] = now
                tokens[rid] = count
            if output.finished:
                ended[rid] = now
    duration = time.perf_counter() - started
    cpu_after = os.times()
    # CPU seconds this process used (all its threads): less sensitive than wall time to other
    # processes on the same cores, though OpenMP threads that spin while they wait count too.
    cpu_s = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)

    ids_done = list(ended)
    total_out = sum(tokens.get(rid, 0) for rid in ids_done)
    expected = scenario.output_len
    short = sum(1 for rid in ids_done if tokens.get(rid, 0) != expected)
    ttfts = [first_token[rid] for rid in ids_done if rid in first_token]
    e2el = [ended[rid] - added[rid] for rid in ids_done]
    tpots = [(ended[rid] - added[rid] - first_token[rid]) / (tokens[rid] - 1)
             for rid in ids_done if rid in first_token and tokens.get(rid, 0) > 1]
    completed = len(ids_done)
    prompt_tokens = sum(len(ids) for _, ids, _ in pending)
    return {
        "output_tok_s": total_out / duration,
        "req_s": completed / duration,
        "ttft_p50_ms": percentile(ttfts, 50), "ttft_p99_ms": percentile(ttfts, 99),
        "itl_p50_ms": percentile(itls, 50) if expected > 1 else None,
        "itl_p99_ms": percentile(itls, 99) if expected > 1 else None,
        "tpot_p99_ms": percentile(tpots, 99) if expected > 1 else None,
        "completed": completed, "failed": len(pending) - completed, "short": short,
        "errors": len(pending) - completed + short, "error_samples": [],
        "e2el_p50_ms": percentile(e2el, 50), "duration_s": duration,
        "mean_prompt_tokens": prompt_tokens / len(pending) if pending else None,
        "mean_output_tokens": total_out / completed if completed else None,
        "expected_output_tokens": expected, "peak_open_requests": min(scenario.concurrency, len(pending)),
        "mean_events": None,  # no events: every step's tokens are counted as they come
        "valid": completed == len(pending) and short == 0,
        "process_cpu_s": cpu_s,
    }


def main(argv: list[str]) -> int:
    scenarios = [Scenario(**s) for s in json.loads(Path(argv[0]).read_text())]
    model_dir, out = Path(argv[1]), Path(argv[2])
    prefix_caching = "--no-prefix-caching" not in argv
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    prompts = {s.name: sample_prompts(s, model_dir) for s in scenarios}

    from transformers import AutoTokenizer
    from vllm import LLM

    started = time.monotonic()
    llm = LLM(model=str(model_dir), served_model_name=MODEL_NAME, enable_prefix_caching=prefix_caching,
              disable_log_stats=True, **ENGINE)
    startup_s = time.monotonic() - started
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    results = {}
    for scenario in scenarios:
        print(f"offline {scenario.name}", file=sys.stderr, flush=True)
        results[scenario.name] = run_scenario(llm, tokenizer, scenario, prompts[scenario.name])
    # The prompts too, so a test can check they are the ones vLLM's client sends.
    out.write_text(json.dumps({"startup_s": startup_s, "results": results,
                               "prompts": {name: [text for text, _ in p] for name, p in prompts.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip vLLM's and torch's slow exit handlers
