"""Smoke tests of the benchmark harness (bench/): not a timed benchmark, just enough that it does not rot.

One runs vLLM's real benchmark client, as the harness invokes it, against a tiny fake OpenAI server
(no model is loaded), which also pins down the request fields the client sends. The others feed
the report code a recorded-style result.
"""

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench import report
from bench.run import DEFAULT_SERVERS, SCENARIOS, Scenario, plan
from bench.servers import MODEL_NAME, SERVERS, VllmInprocessServer, default_model_dir

ROOT = Path(__file__).resolve().parents[2]


class FakeChatServer(BaseHTTPRequestHandler):
    """Streams max_completion_tokens one-word chunks, then usage, like an OpenAI server."""

    protocol_version = "HTTP/1.0"  # one request per connection; the body ends when the socket closes
    bodies: list[dict] = []

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            return self._not_found()
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.bodies.append(body)
        n = body["max_completion_tokens"]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        header = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
        events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": "word"}}]}]
        events += [{"choices": [{"index": 0, "delta": {"content": " word"}}]} for _ in range(n - 1)]
        events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": n,
                                                    "total_tokens": 20 + n}})
        for event in events:
            self.wfile.write(f"data: {json.dumps({**header, **event})}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")

    def do_GET(self):
        self._not_found()

    def _not_found(self):
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def fake_server():
    FakeChatServer.bodies = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeChatServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", FakeChatServer.bodies
    httpd.shutdown()
    httpd.server_close()


# In a child process: vLLM's CLI sets process-wide state (environment, logging, gc.freeze).
RUN_CLIENT = """
import json, sys
from pathlib import Path
from bench.run import Scenario, run_client
scenario = Scenario(**json.loads(sys.argv[1]))
with open(Path(sys.argv[3]) / "client.log", "a") as log:
    summary = run_client(scenario, sys.argv[2], Path(sys.argv[4]), Path(sys.argv[3]), "fake", log)
print("SUMMARY " + json.dumps(summary))
"""
SMOKE = Scenario("smoke", input_len=16, output_len=5, concurrency=2, num_prompts=4, seed=7)


@pytest.fixture(scope="module")
def client_run(fake_server, tmp_path_factory):
    """vLLM's client, as the harness drives it, once against the fake server: (summary, bodies, dir)."""
    model_dir = default_model_dir()
    assert (model_dir / "tokenizer.json").exists(), "the default model is not prepared (make model)"
    base_url, bodies = fake_server
    work = tmp_path_factory.mktemp("client")
    done = subprocess.run(
        [sys.executable, "-c", RUN_CLIENT, json.dumps(SMOKE.__dict__), base_url, str(work), str(model_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:] + (work / "client.log").read_text()[-3000:]
    return json.loads(done.stdout.split("SUMMARY ", 1)[1]), list(bodies), work


def test_vllm_bench_client_runs_as_the_harness_drives_it(client_run):
    summary, bodies, work = client_run
    assert summary["completed"] == 4 and summary["errors"] == 0
    assert summary["valid"] and summary["mean_output_tokens"] == 5
    assert summary["output_tok_s"] > 0 and summary["ttft_p50_ms"] > 0 and summary["itl_p50_ms"] is not None
    assert (work / "fake-smoke.json").exists()
    # What vLLM's client asks of a server; ours must accept every one of these fields.
    assert len(bodies) == 4
    for body in bodies:
        assert set(body) == {"model", "messages", "max_completion_tokens", "stream", "stream_options",
                             "ignore_eos", "temperature"}
        assert body["model"] == MODEL_NAME
        [message] = body["messages"]
        assert message["role"] == "user"
        [part] = message["content"]  # a list of content parts, not a string
        assert part["type"] == "text" and isinstance(part["text"], str)
        assert body["max_completion_tokens"] == 5  # not max_tokens
        assert body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert body["ignore_eos"] is True
        assert body["temperature"] == 0


def test_the_offline_engine_runs_the_prompts_the_client_sends(client_run, tmp_path):
    _, bodies, _ = client_run
    plan_file = tmp_path / "scenarios.json"
    plan_file.write_text(json.dumps([SMOKE.__dict__]))
    out = tmp_path / "offline.json"
    # The real engine (vllm.LLM) on the default model, in a process of its own as make bench runs it.
    done = subprocess.run([sys.executable, "-m", "bench.offline", str(plan_file), str(default_model_dir()), str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    recorded = json.loads(out.read_text())
    sent = sorted(body["messages"][0]["content"][0]["text"] for body in bodies)
    assert sorted(recorded["prompts"]["smoke"]) == sent
    summary = recorded["results"]["smoke"]
    assert summary["completed"] == 4 and summary["errors"] == 0 and summary["valid"]
    assert summary["mean_output_tokens"] == 5 and summary["mean_prompt_tokens"] > 16  # the chat template's too
    assert summary["output_tok_s"] > 0
    assert 0 < summary["ttft_p50_ms"] <= summary["ttft_p99_ms"] <= summary["e2el_p50_ms"] * 2
    assert 0 < summary["itl_p50_ms"] <= summary["itl_p99_ms"]
    assert 0 < summary["tpot_p99_ms"] <= summary["e2el_p50_ms"] * 2


def test_vllm_in_process_anchor_differs_from_vllm_only_in_its_engine_core(tmp_path):
    model_dir = default_model_dir()
    default = SERVERS["vllm"](model_dir, tmp_path)
    inproc = VllmInprocessServer(model_dir, tmp_path)
    def without_port(server):
        return [arg for arg in server.command() if arg != str(server.port)]

    assert without_port(inproc) == without_port(default)
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in default.env()
    assert inproc.env()["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert inproc.env()["VLLM_CPU_KVCACHE_SPACE"] == default.env()["VLLM_CPU_KVCACHE_SPACE"] == "1"


def run_summary(tok_s: float, ttft: float, errors: int = 0, tokens: float = 64.0, expected: int = 64) -> dict:
    return {"output_tok_s": tok_s, "req_s": tok_s / 64, "ttft_p50_ms": ttft, "ttft_p99_ms": ttft * 2,
            "itl_p50_ms": 50.0, "itl_p99_ms": 120.0, "tpot_p99_ms": 60.0,
            "completed": 10 - errors, "failed": errors, "short": 0,
            "errors": errors, "error_samples": ["ClientConnectorError: refused"] if errors else [],
            "e2el_p50_ms": ttft + 3000, "duration_s": 10.0,
            "mean_prompt_tokens": 158.0, "mean_output_tokens": tokens, "expected_output_tokens": expected,
            "peak_open_requests": 10 - errors, "valid": tokens == expected}


@pytest.fixture
def sample_report():
    theirs = {s.name: run_summary(100.0, 1000.0, expected=s.output_len, tokens=float(s.output_len))
              for s in SCENARIOS}
    ours = {name: dict(s) for name, s in theirs.items()}
    ours["c1"] = run_summary(120.0, 500.0)           # faster: targets met
    ours["c16"] = run_summary(90.0, 1500.0)          # slower: both targets missed
    ours["c64"] = run_summary(130.0, 900.0, tokens=16.0)  # wrong token count: not comparable
    ours["streams100"] = run_summary(80.0, 2000.0, errors=3, tokens=32.0, expected=32)
    servers = {name: {"command": name, "engine_core": "x", "prefix_caching": True, "startup_s": 1.0,
                      "first_token_probe": {"first_chunk_ms": 900.0, "first_text_ms": 901.0,
                                            "opening_chunk_before_first_token": False}}
               for name in ("ours", "vllm", "vllm-inproc")}
    servers["offline"] = {"command": "offline", "engine_core": "x", "prefix_caching": True, "startup_s": 1.0,
                          "first_token_probe": None}
    inproc = {name: dict(s) for name, s in theirs.items()}
    offline = {name: {**s, "output_tok_s": 150.0} for name, s in theirs.items()}
    results = {"ours": ours, "vllm": theirs, "vllm-inproc": inproc, "offline": offline,
               "vllm-no-prefix-cache": {"shared_prefix": run_summary(10.0, 4000.0, tokens=16.0, expected=16)}}
    return {"date": "2026-11-26 12:00", "machine": "2 CPUs", "vllm_version": "0.32.0", "model": MODEL_NAME,
            "client_flags": ["--ignore-eos"], "servers": servers, "scenarios": [s.__dict__ for s in SCENARIOS],
            "results": results, "targets": report.targets(results, servers), "wall_time_s": 600.0}


def test_targets_and_ratios_from_a_result(sample_report):
    targets = {t["target"]: t for t in sample_report["targets"]}
    c1 = "output throughput ours/vLLM in-process at c1 >= 1"
    assert targets[c1]["met"] and targets[c1]["value"] == pytest.approx(1.2)
    assert targets["median TTFT ours/vLLM in-process at c1 <= 1"]["value"] == pytest.approx(0.5)
    assert targets["p99 ITL ours/vLLM in-process at c1 <= 1"]["met"]
    # The ceiling: 120 of the offline engine's 150 tokens/s is an efficiency of 0.8.
    efficiency = targets["output throughput ours/offline (server efficiency) at c1 >= 0.95"]
    assert efficiency["value"] == pytest.approx(0.8) and not efficiency["met"] and efficiency["comparable"]
    assert not targets["output throughput ours/vLLM in-process at c16 >= 1.3"]["met"]
    assert not targets["median TTFT ours/vLLM in-process at c16 <= 1"]["met"]
    assert not targets["output throughput ours/vLLM in-process at c64 >= 1.3"]["comparable"]
    assert not targets["errors in ours with 100 concurrent streams <= 0"]["met"]
    assert targets["errors in ours with 100 concurrent streams <= 0"]["value"] == 3
    ratios = report.all_ratios(sample_report["results"], ["c16"])
    assert set(ratios) == {"vllm", "vllm-inproc", "offline"}
    assert ratios["vllm"]["c16"]["output_tok_s"] == pytest.approx(0.9)
    assert ratios["vllm"]["c16"]["ttft_p50_ms"] == pytest.approx(1.5)
    assert ratios["offline"]["c16"]["output_tok_s"] == pytest.approx(0.6)


def test_an_early_opening_chunk_makes_ttft_targets_not_comparable(sample_report):
    servers = sample_report["servers"]
    servers["ours"]["first_token_probe"].update(first_chunk_ms=5.0, opening_chunk_before_first_token=True)
    targets = {t["target"]: t for t in report.targets(sample_report["results"], servers)}
    assert not targets["median TTFT ours/vLLM in-process at c1 <= 1"]["comparable"]
    assert targets["output throughput ours/vLLM in-process at c1 >= 1"]["met"]
    sample_report["targets"] = list(targets.values())
    assert "TTFT targets are not comparable" in report.markdown(sample_report)


def test_markdown_has_every_anchor_the_tables_and_the_problems(sample_report):
    sample_report["load_average_before"] = [7.5, 6.0, 5.0]
    text = report.markdown(sample_report)
    assert "Load average (1, 5, 15 min) before: [7.5, 6.0, 5.0]" in text
    assert "| c1 | ours | 120.0 | 1.9 | 500.0 | 1,000.0 | 50.0 | 120.0 | 60.0 | 0 |" in text
    assert "| c1 | vLLM in-process | 100.0 |" in text and "| c1 | offline LLM | 150.0 |" in text
    assert "| c1 | **ours/vLLM** | 1.20 | 1.20 | 0.50 | 0.50 | 1.00 | 1.00 | 1.00 | |" in text
    assert "| c1 | **ours/vLLM in-process** | 1.20 |" in text
    assert "| c1 | **ours/offline (server efficiency)** | 0.80 |" in text
    assert "| c64 | ours | 130.0 | 2.0 | 900.0 | 1,800.0 | 50.0 | 120.0 | 60.0 | 0 (got 16.0 tokens/request) |" in text
    assert "fewer events than tokens" not in text
    assert "## By prompt length (concurrency 16)" in text
    assert "| 4096 | **ours/vLLM** |" in text
    assert "| vLLM | off | 4,000.0 | 8,000.0 | 7,000.0 | 10.0 | 0 |" in text
    assert "| vLLM | off/on | 4.00x | | 1.75x | | |" in text
    assert "- ours streams100: 3 failed, 0 ended before their 32 tokens" in text
    assert "| output throughput ours/vLLM in-process at c16 >= 1.3 | 0.90 | no |" in text
    assert "| output throughput ours/offline (server efficiency) at c1 >= 0.95 | 0.80 | no |" in text


def test_tokens_grouped_into_fewer_events_are_explained(sample_report):
    # 64 tokens in 60 events (four special tokens sent with the next token's text) at c1.
    sample_report["results"]["ours"]["c1"]["mean_events"] = 60.0
    sample_report["results"]["vllm"]["c1"]["mean_events"] = 64.0
    text = report.markdown(sample_report)
    assert "**Note:** fewer events than tokens per request in ours c1." in text
    assert "TPOT" in text


def test_chart_is_a_png(sample_report, tmp_path):
    path = tmp_path / "chart.png"
    report.chart(sample_report, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_summarize_reads_vllm_bench_result_fields():
    raw = {"completed": 3, "failed": 1, "num_prompts": 4, "duration": 2.0, "output_throughput": 96.0,
           "request_throughput": 1.5, "median_ttft_ms": 30.0, "p99_ttft_ms": 80.0, "median_itl_ms": 12.0,
           "p99_itl_ms": 40.0, "median_e2el_ms": 900.0, "total_input_tokens": 300, "total_output_tokens": 192,
           "errors": ["", "", "", "Traceback ...\naiohttp.ClientPayloadError: Response payload is not completed"],
           "output_lens": [64, 64, 64, 0], "start_times": [0.0, 0.1, 1.05, 0.3], "latencies": [1.0, 1.0, 0.03, 0.0],
           "ttfts": [0.1, 0.1, 0.1, 0.0], "p99_tpot_ms": 15.0,
           "itls": [[0.01] * 63, [0.01] * 60, [0.01] * 63, []]}
    summary = report.summarize(raw, expected_output_tokens=64)
    assert summary["tpot_p99_ms"] == 15.0
    assert summary["mean_events"] == 63.0  # (64 + 61 + 64) / 3: the failed request does not count
    assert summary["output_tok_s"] == 96.0 and summary["ttft_p99_ms"] == 80.0 and summary["itl_p50_ms"] == 12.0
    assert summary["e2el_p50_ms"] == 900.0
    assert summary["failed"] == 1 and summary["short"] == 0 and summary["errors"] == 1 and summary["valid"]
    assert summary["error_samples"] == ["aiohttp.ClientPayloadError: Response payload is not completed"]
    assert summary["peak_open_requests"] == 2  # the third starts after the first has ended

    # A stream that ended early (e.g. with an error event) is a success to the client, not to us.
    early = report.summarize({**raw, "output_lens": [64, 64, 0, 0], "total_output_tokens": 128}, 64)
    assert early["short"] == 1 and early["errors"] == 2 and not early["valid"]
    without_detail = {k: v for k, v in raw.items() if k != "output_lens"}
    assert not report.summarize({**without_detail, "total_output_tokens": 48}, 64)["valid"]
    assert report.summarize(raw, expected_output_tokens=1)["itl_p50_ms"] is None


def test_plan_runs_every_anchor_by_default_and_the_prefix_cache_comparison_last():
    assert DEFAULT_SERVERS == ("ours", "vllm", "vllm-inproc", "offline")
    assert set(DEFAULT_SERVERS) | {"ours-process"} == set(SERVERS) | {"offline"}
    sessions = plan(["ours", "vllm"], None, None)
    assert [(name, caching) for name, caching, _ in sessions] == [
        ("ours", True), ("vllm", True), ("ours", False), ("vllm", False)]
    assert [s.name for s in sessions[2][2]] == ["shared_prefix"]
    assert len({s.seed for s in SCENARIOS}) == len(SCENARIOS)  # no run reuses another's prompts
    quick = plan(["ours"], {"c1"}, 2)
    assert quick == [("ours", True, [Scenario("c1", 128, 64, 1, 2, seed=SCENARIOS[0].seed)])]
