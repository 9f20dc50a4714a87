"""`make bench`: this server and vLLM's OpenAI server, one after the other, under vLLM's own benchmark client.

python -m bench.run [--servers ours,vllm,vllm-inproc,offline] [--only c1,c16] [--num-prompts N] [--out-dir bench/results]
"""

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TextIO

from bench import report
from bench.servers import MODEL_NAME, ROOT, SERVERS, START_TIMEOUT, TUNED_ENV, Server, default_model_dir

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SEED = 20261126
# Stop a run that takes this long (the server is killed and restarted), so a stuck server
# cannot hold the whole benchmark hostage.
RUN_TIMEOUT_S = 300


@dataclass(frozen=True)
class Scenario:
    """One `vllm bench serve` run: random prompts of input_len tokens (after prefix_len shared ones)."""

    name: str
    input_len: int
    output_len: int
    concurrency: int
    num_prompts: int
    prefix_len: int = 0
    warmups: int = 0
    seed: int = SEED


# Prompt counts are sized so each server's runs take about 8 minutes on 2 cores (35 for `make bench`).
SCENARIOS = tuple(replace(s, seed=SEED + i) for i, s in enumerate((
    Scenario("c1", 128, 64, 1, 4),
    Scenario("c16", 128, 64, 16, 32),
    Scenario("c64", 128, 64, 64, 64),
    Scenario("http_overhead", 32, 1, 32, 128),
    # 100 streams (the spec's limit) opened at once and each read to its end.
    Scenario("streams100", 32, 32, 100, 100),
    Scenario("len1024", 1024, 64, 16, 16),
    # As many as the 1 GiB KV cache (about 23,000 tokens) holds at once.
    Scenario("len4096", 4096, 64, 16, 5),
    # About 1,000 tokens shared by every request; one warm-up request fills the prefix cache.
    Scenario("shared_prefix", 32, 16, 4, 16, prefix_len=1000, warmups=1),
)))
# Every server and anchor, in the order they run: ours, vLLM's server as users start it, vLLM's
# server with its engine core in-process (as ours), vLLM's offline engine (the ceiling).
DEFAULT_SERVERS = ("ours", "vllm", "vllm-inproc", "offline")
# Untimed, first thing after each server start: wakes up allocators and the client's connections.
WARMUP = Scenario("warmup", 128, 16, 4, 4, seed=SEED - 1)
CLIENT_FLAGS = ("--backend", "openai-chat", "--endpoint", "/v1/chat/completions", "--dataset-name", "random",
                "--ignore-eos", "--temperature", "0", "--percentile-metrics", "ttft,tpot,itl,e2el",
                "--metric-percentiles", "50,99", "--save-result", "--save-detailed")


def client_args(scenario: Scenario, base_url: str, model_dir: Path, result_dir: Path, filename: str,
                progress_bar: bool) -> list[str]:
    """The `vllm bench serve` command line for one scenario against one server."""
    args = ["bench", "serve", *CLIENT_FLAGS, "--base-url", base_url,
            "--model", str(model_dir), "--served-model-name", MODEL_NAME,
            "--random-input-len", str(scenario.input_len), "--random-output-len", str(scenario.output_len),
            "--random-prefix-len", str(scenario.prefix_len),
            "--max-concurrency", str(scenario.concurrency), "--num-prompts", str(scenario.num_prompts),
            "--num-warmups", str(scenario.warmups), "--seed", str(scenario.seed),
            "--result-dir", str(result_dir), "--result-filename", filename]
    if not progress_bar:
        args.append("--disable-tqdm")
    return args


def run_client(scenario: Scenario, base_url: str, model_dir: Path, result_dir: Path, label: str,
               log: TextIO, progress_bar: bool = False) -> dict:
    """Run vLLM's benchmark client once, in this process, and summarize its result file.

    Its printout goes to log, which must stay open: vLLM's logging keeps writing to it.
    """
    from bench import client

    filename = f"{label}-{scenario.name}.json"
    args = client_args(scenario, base_url, model_dir, result_dir, filename, progress_bar)
    with contextlib.redirect_stdout(log):
        print(f"\n$ vllm {' '.join(args)}", flush=True)
        client.vllm_cli(args)
        log.flush()
    raw = json.loads((result_dir / filename).read_text())
    return report.summarize(raw, scenario.output_len)


def failed_summary(scenario: Scenario, reason: str) -> dict:
    """A run that produced no result file (the client raised, or the run timed out)."""
    summary = {key: None for key, _, _ in report.METRICS}
    summary.update(completed=0, failed=scenario.num_prompts, short=0, errors=scenario.num_prompts,
                   error_samples=[reason[-300:]], e2el_p50_ms=None, duration_s=None, mean_prompt_tokens=None,
                   mean_output_tokens=None, expected_output_tokens=scenario.output_len, peak_open_requests=0,
                   valid=False)
    return summary


class Progress:
    """One line per step, with the time since the benchmark started."""

    def __init__(self, total_runs: int):
        self.started = time.monotonic()
        self.total = total_runs
        self.done = 0

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{int(elapsed // 60):02d}:{int(elapsed % 60):02d}] {text}", file=sys.stderr, flush=True)

    def run(self, label: str, scenario: Scenario) -> None:
        self.done += 1
        prefix = f"{scenario.prefix_len} shared + " if scenario.prefix_len else ""
        self.say(f"({self.done}/{self.total}) {label} {scenario.name}: {prefix}{scenario.input_len} -> "
                 f"{scenario.output_len} tokens, {scenario.num_prompts} requests at concurrency {scenario.concurrency}")

    def result(self, s: dict) -> None:
        def ms(value):
            return "-" if value is None else f"{value:,.0f} ms"
        out = "-" if s["output_tok_s"] is None else f"{s['output_tok_s']:.1f}"
        wrong = "" if s["valid"] or not s["completed"] else (
            f" ({s['short']} ended early), {s['mean_output_tokens']:.1f} tokens/request instead of "
            f"{s['expected_output_tokens']}")
        self.say(f"    {out} output tok/s, TTFT p50 {ms(s['ttft_p50_ms'])}, ITL p50 {ms(s['itl_p50_ms'])}, "
                 f"{s['errors']} errors{wrong}")


def run_session(server_cls: type[Server], prefix_caching: bool, scenarios: list[Scenario], model_dir: Path,
                work_dir: Path, log: TextIO, progress: Progress, timeout_s: float,
                progress_bar: bool) -> tuple[dict, dict]:
    """Start one server, run the scenarios against it, stop it; returns (settings, summaries)."""
    label = server_cls.name + ("" if prefix_caching else report.NO_CACHE)
    summaries: dict[str, dict] = {}
    server = first = None
    startup = []
    probe = None
    try:
        for scenario in [WARMUP, *scenarios]:
            if server is None:
                progress.say(f"starting {server_cls.label}, prefix caching {'on' if prefix_caching else 'off'}")
                try:
                    server = server_cls(model_dir, work_dir, prefix_caching=prefix_caching).start()
                except RuntimeError as exc:  # this server's remaining runs fail; the other server still runs
                    progress.say(f"    {exc}")
                    for missed in scenarios:
                        summaries.setdefault(missed.name, failed_summary(missed, f"server did not start: {exc}"))
                    break
                first = first or server
                startup.append(server.startup_s)
                progress.say(f"    ready in {server.startup_s:.1f} s on {server.base_url}")
                if probe is None:
                    try:
                        probe = server.probe_first_token()
                        progress.say(f"    one stream: first chunk after {probe['first_chunk_ms']} ms, "
                                     f"first text after {probe['first_text_ms']} ms")
                    except Exception as exc:  # reported, not fatal: the runs say more
                        probe = {"error": f"{type(exc).__name__}: {exc}", "opening_chunk_before_first_token": False}
                        progress.say(f"    first-token probe failed: {probe['error']}")
            if scenario is WARMUP:
                progress.say(f"{label} warm-up ({WARMUP.num_prompts} requests, not reported)")
            else:
                progress.run(label, scenario)
            abandoned = threading.Event()
            watchdog = threading.Timer(timeout_s, lambda s=server: (abandoned.set(), s.kill()))
            watchdog.start()
            try:
                summary = run_client(scenario, server.base_url, model_dir, work_dir, label, log, progress_bar)
            except Exception as exc:  # the client raised: record it and go on with the next run
                summary = failed_summary(scenario, f"{type(exc).__name__}: {exc}")
            finally:
                watchdog.cancel()
            if abandoned.is_set():
                summary = failed_summary(scenario, f"timed out after {timeout_s:.0f} s (server killed)")
            if not server.running():
                progress.say(f"    {label} is down (see {server.log_path}); restarting it for the next run")
                server.stop()
                server = None
            if scenario is not WARMUP:
                summaries[scenario.name] = summary
                progress.result(summary)
    finally:
        if server is not None:
            server.stop()
    settings = (first or server_cls(model_dir, work_dir, prefix_caching=prefix_caching)).settings()
    settings["startup_s"] = startup[0] if startup else None
    settings["first_token_probe"] = probe
    return settings, summaries


def run_offline_session(prefix_caching: bool, scenarios: list[Scenario], model_dir: Path, work_dir: Path,
                        progress: Progress, timeout_s: float) -> tuple[dict, dict]:
    """vLLM's offline engine on the same prompts (bench/offline.py, a process of its own); (settings, summaries)."""
    label = report.OFFLINE + ("" if prefix_caching else report.NO_CACHE)
    progress.say(f"{label}: vLLM's LLM in a process of its own, {len(scenarios)} run(s) after a warm-up")
    for scenario in scenarios:
        progress.run(label, scenario)
    plan_file = work_dir / f"{label}-scenarios.json"
    plan_file.write_text(json.dumps([asdict(s) for s in [WARMUP, *scenarios]]))
    out = work_dir / f"{label}.json"
    command = [sys.executable, "-m", "bench.offline", str(plan_file), str(model_dir), str(out)]
    if not prefix_caching:
        command.append("--no-prefix-caching")
    summaries, startup = {}, None
    with open(work_dir / f"{label}.log", "ab") as log:
        try:
            # The engine's load as a server's start may take, then each run's own budget.
            done = subprocess.run(command, cwd=ROOT, env=TUNED_ENV, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=START_TIMEOUT + timeout_s * (len(scenarios) + 1))
            failure = None if done.returncode == 0 else f"bench.offline exited with {done.returncode}"
        except subprocess.TimeoutExpired:
            failure = "bench.offline timed out"
    if failure is None:
        recorded = json.loads(out.read_text())
        summaries, startup = recorded["results"], recorded["startup_s"]
        summaries.pop(WARMUP.name, None)
    for scenario in scenarios:
        summary = summaries.setdefault(scenario.name, failed_summary(scenario, failure or "no result"))
        progress.result(summary)
    from bench.offline import ENGINE

    settings = {"command": "python -m bench.offline (vllm.LLM, closed loop of `concurrency` requests)",
                **ENGINE, "kv_cache_gib": 1, "prefix_caching": prefix_caching,
                "engine_core": "in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0), no server",
                "startup_s": startup, "first_token_probe": None}
    return settings, summaries


def plan(servers: list[str], only: set[str] | None, num_prompts: int | None) -> list[tuple[str, bool, list[Scenario]]]:
    """Sessions in order: each server with prefix caching on, then (for shared_prefix) with it off."""
    chosen = [s for s in SCENARIOS if only is None or s.name in only]
    if num_prompts:
        chosen = [replace(s, num_prompts=num_prompts) for s in chosen]
    sessions = [(name, True, chosen) for name in servers]
    prefix = [s for s in chosen if s.name == report.PREFIX_RUN]
    if prefix:
        sessions += [(name, False, prefix) for name in servers]
    return sessions


def output_stem(out_dir: Path, date: str) -> Path:
    """bench/results/<date>, or <date>-2, -3, ... when that day already has a result."""
    stem, n = out_dir / date, 1
    while stem.with_suffix(".json").exists():
        n += 1
        stem = out_dir / f"{date}-{n}"
    return stem


def machine() -> str:
    """A short description of the machine the numbers come from."""
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs ({cpu}), {platform.system()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                        help="comma-separated, in order: " + ", ".join(DEFAULT_SERVERS)
                        + " (and ours-process: ours with ENGINE_CORE=process)")
    parser.add_argument("--only", help="comma-separated scenario names: " + ", ".join(s.name for s in SCENARIOS))
    parser.add_argument("--num-prompts", type=int, help="override every scenario's number of requests (quick runs)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--model-dir", type=Path, default=default_model_dir())
    parser.add_argument("--run-timeout", type=float, default=RUN_TIMEOUT_S, help="seconds before a run is abandoned")
    args = parser.parse_args(argv)
    servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    known = [*DEFAULT_SERVERS, "ours-process"]
    unknown = [name for name in servers if name not in known]
    if unknown:
        parser.error(f"unknown server(s) {unknown}; choose from {known}")
    only = {name.strip() for name in args.only.split(",")} if args.only else None
    sessions = plan(servers, only, args.num_prompts)
    if not any(scenarios for _, _, scenarios in sessions):
        parser.error("no scenario selected")
    if not (args.model_dir / "config.json").exists():
        parser.error(f"no model at {args.model_dir} (run `make model`)")

    # Let `finally` blocks stop the servers on SIGTERM as they do on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started, now = time.monotonic(), datetime.now()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = output_stem(args.out_dir, now.strftime("%Y-%m-%d"))
    work_dir = stem.with_suffix(".tmp")  # server logs, client log, raw client results (git-ignored)
    work_dir.mkdir()
    progress = Progress(sum(len(scenarios) for _, _, scenarios in sessions))
    progress.say(f"loading vLLM's benchmark client; logs and raw results in {work_dir}")
    from bench import client

    # Held open to the end: vLLM's log handlers bind to the stream they first see.
    log = open(work_dir / "client.log", "a")
    with contextlib.redirect_stdout(log):
        import vllm.benchmarks.serve  # noqa: F401  (takes ~15 s; once, up front)

    load_before = os.getloadavg()
    results, server_settings = {}, {}
    for name, caching, scenarios in sessions:
        label = name + ("" if caching else report.NO_CACHE)
        if name == report.OFFLINE:
            server_settings[label], results[label] = run_offline_session(
                caching, scenarios, args.model_dir, work_dir, progress, args.run_timeout)
            continue
        server_settings[label], results[label] = run_session(
            SERVERS[name], caching, scenarios, args.model_dir, work_dir, log, progress, args.run_timeout,
            progress_bar=sys.stderr.isatty())

    chosen = {s.name: s for _, _, scenarios in sessions for s in scenarios}
    result = {
        "date": now.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "vllm_version": client.vllm_version(),
        "model": MODEL_NAME,
        "client_flags": list(CLIENT_FLAGS),
        # The same for every server and the offline engine (engine_bridge/cpu_tuning.py).
        "ld_preload": TUNED_ENV.get("LD_PRELOAD"),
        "servers": server_settings,
        "scenarios": [asdict(s) for s in chosen.values()],
        "results": results,
        "ratios": report.all_ratios(results, chosen),
        "targets": report.targets(results, server_settings),
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(report.markdown(result))
    try:
        report.chart(result, stem.with_suffix(".png"))
    except ImportError:
        progress.say("matplotlib is not installed (make bench installs requirements-bench.txt): no chart")
    progress.say(f"done in {result['wall_time_s']:.0f} s: {stem}.json, .md, .png")
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the client's Triton bindings print pages of "leaked" warnings there.
    os._exit(code)
