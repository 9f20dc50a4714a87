"""Turn vLLM benchmark-client results into metrics, ratios, targets, a Markdown report and a chart."""

from pathlib import Path

# (key in our summary, column title, key in vLLM's result file)
METRICS = (
    ("output_tok_s", "output tok/s", "output_throughput"),
    ("req_s", "req/s", "request_throughput"),
    ("ttft_p50_ms", "TTFT p50 ms", "median_ttft_ms"),
    ("ttft_p99_ms", "TTFT p99 ms", "p99_ttft_ms"),
    ("itl_p50_ms", "ITL p50 ms", "median_itl_ms"),
    ("itl_p99_ms", "ITL p99 ms", "p99_itl_ms"),
    # Per request, (end - first token) / (tokens - 1): unlike ITL, the same however the tokens
    # were grouped into events.
    ("tpot_p99_ms", "TPOT p99 ms", "p99_tpot_ms"),
)
# Higher is better for these; lower for the rest.
HIGHER_IS_BETTER = {"output_tok_s", "req_s"}
CONCURRENCY_RUNS = ("c1", "c16", "c64")
MAIN_RUNS = (*CONCURRENCY_RUNS, "http_overhead", "streams100")
LENGTH_RUNS = ("c16", "len1024", "len4096")
PREFIX_RUN = "shared_prefix"
OURS, THEIRS, THEIRS_INPROC, OFFLINE = "ours", "vllm", "vllm-inproc", "offline"
# Ours with vLLM's engine core in a process of its own (ENGINE_CORE=process): shown, not a target.
OURS_PROCESS = "ours-process"
# The anchors ours is compared with, in the order the tables show them.
ANCHORS = (THEIRS, THEIRS_INPROC, OFFLINE)
NO_CACHE = "-no-prefix-cache"
SERVER_TITLES = {OURS: "ours", OURS_PROCESS: "ours, engine core process", THEIRS: "vLLM",
                 THEIRS_INPROC: "vLLM in-process", OFFLINE: "offline LLM"}
SERVER_TITLES.update({name + NO_CACHE: title for name, title in list(SERVER_TITLES.items())})
# What the ratio row against each anchor is called.
RATIO_TITLES = {THEIRS: "ours/vLLM", THEIRS_INPROC: "ours/vLLM in-process",
                OFFLINE: "ours/offline (server efficiency)"}
# The issue's targets against the fair anchor (vLLM's server with its engine core in-process, as
# ours) and the engine's own ceiling: (run, anchor, metric, op, bound).
TARGETS = (
    *[(run, THEIRS_INPROC, "output_tok_s", ">=", 1.0 if run == "c1" else 1.3) for run in CONCURRENCY_RUNS],
    *[(run, THEIRS_INPROC, "ttft_p50_ms", "<=", 1.0) for run in CONCURRENCY_RUNS],
    *[(run, THEIRS_INPROC, "itl_p99_ms", "<=", 1.0) for run in CONCURRENCY_RUNS],
    *[(run, OFFLINE, "output_tok_s", ">=", 0.95) for run in CONCURRENCY_RUNS],
)
METRIC_TITLES = {"output_tok_s": "output throughput", "ttft_p50_ms": "median TTFT", "itl_p99_ms": "p99 ITL",
                 "req_s": "request throughput", "ttft_p99_ms": "p99 TTFT", "itl_p50_ms": "median ITL",
                 "tpot_p99_ms": "p99 TPOT"}


def peak_open(starts: list[float], ends: list[float]) -> int:
    """Most requests open at the same moment, given each one's start and end time."""
    events = sorted([(t, 1) for t in starts] + [(t, -1) for t in ends])
    open_now = peak = 0
    for _, step in events:
        open_now += step
        peak = max(peak, open_now)
    return peak


def summarize(raw: dict, expected_output_tokens: int) -> dict:
    """The numbers we report from one `vllm bench serve --save-result --save-detailed` file.

    The client counts a request as failed only when its HTTP status is not 200 or no chunk with
    choices arrived; a stream that ends early (an error event, a finish before its tokens) counts
    as completed. With --ignore-eos every request must produce exactly the asked-for tokens, so
    such requests are counted here as `short`, and errors = failed + short.
    """
    summary = {key: raw.get(source) for key, _, source in METRICS}
    if expected_output_tokens <= 1:  # no second token, no inter-token latency
        summary["itl_p50_ms"] = summary["itl_p99_ms"] = summary["tpot_p99_ms"] = None
    completed = raw.get("completed", 0)
    num_prompts = raw.get("num_prompts", completed + raw.get("failed", 0))
    per_request_errors = raw.get("errors") or []
    ok = [i for i, e in enumerate(per_request_errors) if not e]
    output_lens = raw.get("output_lens")
    short = sum(1 for i in ok if output_lens[i] != expected_output_tokens) if output_lens else None
    mean_output = raw["total_output_tokens"] / completed if completed else None
    starts = [raw["start_times"][i] for i in ok]
    ends = [raw["start_times"][i] + raw["latencies"][i] for i in ok]
    # The client times events, not tokens: one event per chunk with choices (the first is TTFT).
    itls = raw.get("itls")
    events = [len(itls[i]) + 1 for i in ok] if itls else []
    summary.update(
        completed=completed,
        failed=num_prompts - completed,
        short=short,
        errors=num_prompts - completed + (short or 0),
        error_samples=sorted({e.strip().splitlines()[-1][:300] for e in per_request_errors if e})[:3],
        e2el_p50_ms=raw.get("median_e2el_ms"),
        duration_s=raw.get("duration"),
        mean_prompt_tokens=raw["total_input_tokens"] / completed if completed else None,
        mean_output_tokens=mean_output,
        expected_output_tokens=expected_output_tokens,
        peak_open_requests=peak_open(starts, ends) if starts else 0,
        mean_events=sum(events) / len(events) if events else None,
        # Comparable only if every request produced what was asked for.
        valid=bool(completed) and (short == 0 if short is not None else mean_output == expected_output_tokens),
    )
    return summary


def ratios(ours: dict | None, theirs: dict | None) -> dict:
    """ours / theirs for every metric (None where either side is missing or zero)."""
    out = {}
    for key, _, _ in METRICS:
        a, b = (ours or {}).get(key), (theirs or {}).get(key)
        out[key] = a / b if a is not None and b else None
    return out


def early_opening_chunk(servers: dict) -> list[str]:
    """Servers whose first streamed chunk comes before their first token (their TTFT is not one)."""
    return [name for name, settings in servers.items()
            if (settings.get("first_token_probe") or {}).get("opening_chunk_before_first_token")]


def all_ratios(results: dict, runs) -> dict:
    """{anchor: {run: ours/anchor for every metric}} for every anchor that ran."""
    ours = results.get(OURS, {})
    return {anchor: {run: ratios(ours.get(run), results[anchor].get(run)) for run in runs}
            for anchor in ANCHORS if anchor in results}


def targets(results: dict, servers: dict) -> list[dict]:
    """The issue's targets, each with the measured value and whether it was met."""
    ours = results.get(OURS, {})
    early = set(early_opening_chunk(servers))
    rows = []
    for run, anchor, metric, op, bound in TARGETS:
        theirs = results.get(anchor, {})
        r = ratios(ours.get(run), theirs.get(run))
        comparable = (ours.get(run) or {}).get("valid", False) and (theirs.get(run) or {}).get("valid", False)
        if metric.startswith("ttft"):
            comparable = comparable and not {OURS, anchor} & early
        name = f"{METRIC_TITLES[metric]} {RATIO_TITLES[anchor]} at {run}"
        rows.append(_target(name, r[metric], op, bound, comparable))
    streams = ours.get("streams100")
    rows.append(_target("errors in ours with 100 concurrent streams", streams["errors"] if streams else None,
                        "<=", 0, streams is not None))
    return rows


def _target(name: str, value, op: str, bound: float, comparable: bool) -> dict:
    met = value is not None and comparable and (value >= bound if op == ">=" else value <= bound)
    return {"target": f"{name} {op} {bound:g}", "value": value, "met": met,
            "comparable": comparable, "measured": value is not None}


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _server_rows(label: str, run: str, results: dict) -> list[str]:
    ours = results.get(OURS, {}).get(run)
    rows = []
    for name in (OURS, OURS_PROCESS, *ANCHORS):
        summary = results.get(name, {}).get(run)
        if summary is None:
            continue
        note = "" if summary["valid"] else f" (got {_fmt(summary['mean_output_tokens'])} tokens/request)"
        if summary.get("short"):
            note = f" ({summary['short']} ended early; {_fmt(summary['mean_output_tokens'])} tokens/request)"
        cells = [_fmt(summary.get(key)) for key, _, _ in METRICS]  # older result files lack TPOT
        rows.append(f"| {label} | {SERVER_TITLES[name]} | " + " | ".join(cells)
                    + f" | {summary['errors']}{note} |")
    for anchor in ANCHORS:
        theirs = results.get(anchor, {}).get(run)
        if ours is None or theirs is None:
            continue
        r = ratios(ours, theirs)
        rows.append(f"| {label} | **{RATIO_TITLES[anchor]}** | "
                    + " | ".join(_fmt(r[key], 2) for key, _, _ in METRICS) + " | |")
    return rows


def _grouped_tokens_note(results: dict) -> list[str]:
    """Why ITL can differ between servers that stream the same tokens in different numbers of events."""
    grouped = sorted({(name, run) for name, runs in results.items() for run, s in runs.items()
                      if s.get("mean_events") and s["valid"] and s["expected_output_tokens"] > 1
                      and s["mean_events"] < s["expected_output_tokens"]})
    if not grouped:
        return []
    where = ", ".join(f"{name} {run}" for name, run in grouped)
    return ["", f"**Note:** fewer events than tokens per request in {where}. A token with no text of its own "
                "(a special token the model produces under `--ignore-eos`, such as `<|im_end|>`, or the first "
                "bytes of a character) goes out with the next token's text, as OpenAI's API does, where "
                "vLLM's server sends an empty chunk for each token. vLLM's client takes one inter-token "
                "latency per event, so each grouped token shows as one longer ITL; TPOT (per request, time "
                "per output token after the first) does not depend on how tokens are grouped."]


def markdown(report: dict) -> str:
    """The human-readable report: setup, targets, and the three tables."""
    results, scenarios = report["results"], {s["name"]: s for s in report["scenarios"]}
    head = "| run | server | " + " | ".join(title for _, title, _ in METRICS) + " | errors |"
    rule = "|" + " --- |" * (len(METRICS) + 3)
    lines = [f"# Benchmark {report['date']}", "",
             f"{report['machine']}; vLLM {report['vllm_version']}; model {report['model']}; "
             f"`make bench` took {_fmt(report.get('wall_time_s'), 0)} s.", "",
             "Client: vLLM's own `vllm bench serve` " + " ".join(report["client_flags"]) + ".", ""]
    if "ld_preload" in report:
        lines += [f"Preloaded into every server and the offline engine (LD_PRELOAD): "
                  f"`{report['ld_preload'] or 'nothing'}`.", ""]
    if report.get("load_average_before"):
        # Another process on the cores changes every number here: say how busy the machine was.
        lines += [f"Load average (1, 5, 15 min) before: {report['load_average_before']}, after: "
                  f"{report.get('load_average_after')}; above the CPU count, the servers shared their cores.", ""]
    for name, settings in report["servers"].items():
        lines.append(f"- **{SERVER_TITLES.get(name, name)}** ({name}): `{settings['command']}`; "
                     f"engine core {settings['engine_core']}; prefix caching "
                     f"{'on' if settings['prefix_caching'] else 'off'}; ready in {_fmt(settings.get('startup_s'))} s")
    if OFFLINE in report["servers"]:
        lines += ["", "The offline LLM row is vLLM's engine with no server: the same prompts in the same closed "
                      "loop of `concurrency` requests, timed after every engine step (bench/offline.py). Its "
                      "throughput is the ceiling of any server on this engine; ours/offline is the server's "
                      "efficiency."]
    for name in early_opening_chunk(report["servers"]):
        probe = report["servers"][name]["first_token_probe"]
        lines += ["", f"**Note:** {name} sent its first streamed chunk (role only, no text) after "
                      f"{probe['first_chunk_ms']} ms but its first token after {probe['first_text_ms']} ms. vLLM's "
                      "client takes TTFT at the first chunk, so its TTFT below is the time to that empty chunk "
                      "and its first inter-token latency holds the prefill; TTFT targets are not comparable."]
    lines += _grouped_tokens_note(results)
    lines += ["", "## Targets (same run; anchors: vLLM's server with its engine core in-process, and the "
                  "offline engine)", "",
              "| target | measured | met |", "| --- | --- | --- |"]
    for t in report["targets"]:
        met = "yes" if t["met"] else "no" if t["comparable"] else "not comparable" if t["measured"] else "not run"
        lines.append(f"| {t['target']} | {_fmt(t['value'], 2)} | {met} |")

    def describe(run: str) -> str:
        s = scenarios[run]
        prefix = f"{s['prefix_len']} shared + " if s["prefix_len"] else ""
        return (f"{run}: {prefix}{s['input_len']} prompt / {s['output_len']} output tokens, "
                f"concurrency {s['concurrency']}, {s['num_prompts']} requests")

    main_runs = [run for run in MAIN_RUNS if run in scenarios]
    if main_runs:
        lines += ["", "## By concurrency", ""]
        lines += [f"- {describe(run)}" for run in main_runs]
        lines += ["", head, rule]
        for run in main_runs:
            lines += _server_rows(run, run, results)
    streams = results.get(OURS, {}).get("streams100")
    if streams:
        lines += ["", f"100 concurrent streams against ours: {streams['errors']} errors, "
                      f"{streams['peak_open_requests']} streams open at once."]
    length_runs = [run for run in LENGTH_RUNS if run in scenarios]
    if length_runs:
        lines += ["", "## By prompt length (concurrency 16)", ""]
        lines += [f"- {describe(run)}" for run in length_runs]
        lines += ["", head.replace("| run |", "| prompt tokens |"), rule]
        for run in length_runs:
            lines += _server_rows(str(scenarios[run]["input_len"]), run, results)
    if PREFIX_RUN in scenarios:
        lines += ["", "## Shared system prompt: prefix caching on and off", "", f"- {describe(PREFIX_RUN)}", "",
                  "| server | prefix caching | TTFT p50 ms | TTFT p99 ms | E2E latency p50 ms | output tok/s "
                  "| errors |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for base in (OURS, OURS_PROCESS, *ANCHORS):
            for name, state in ((base, "on"), (base + NO_CACHE, "off")):
                s = results.get(name, {}).get(PREFIX_RUN)
                if s:
                    lines.append(f"| {SERVER_TITLES[name]} | {state} | {_fmt(s['ttft_p50_ms'])} | "
                                 f"{_fmt(s['ttft_p99_ms'])} | {_fmt(s.get('e2el_p50_ms'))} | "
                                 f"{_fmt(s['output_tok_s'])} | {s['errors']} |")
            on, off = results.get(base, {}).get(PREFIX_RUN), results.get(base + NO_CACHE, {}).get(PREFIX_RUN)
            if on and off and on["ttft_p50_ms"]:
                e2e = (off.get("e2el_p50_ms") or 0) / on["e2el_p50_ms"] if on.get("e2el_p50_ms") else None
                lines.append(f"| {SERVER_TITLES[base]} | off/on | {_fmt(off['ttft_p50_ms'] / on['ttft_p50_ms'], 2)}x "
                             f"| | {_fmt(e2e, 2)}{'x' if e2e else ''} | | |")
    problems = [(name, run, s) for name, runs in results.items() for run, s in runs.items()
                if s["errors"] or not s["valid"]]
    if problems:
        lines += ["", "## Problems", ""]
        for name, run, s in problems:
            lines.append(f"- {name} {run}: {s.get('failed', s['errors'])} failed, {s.get('short') or 0} ended "
                         f"before their {s['expected_output_tokens']} tokens, "
                         f"{_fmt(s['mean_output_tokens'])} output tokens per completed request"
                         + "".join(f"; `{e}`" for e in s["error_samples"]))
    return "\n".join(lines) + "\n"


def chart(report: dict, path: Path) -> None:
    """Output throughput, median TTFT and p99 ITL by concurrency, for ours and every anchor, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    scenarios = {s["name"]: s for s in report["scenarios"]}
    runs = [run for run in CONCURRENCY_RUNS if run in scenarios]
    panels = (("output_tok_s", "Output throughput", "tokens/s", 1),
              ("ttft_p50_ms", "Median time to first token", "s", 1000),
              ("itl_p99_ms", "p99 inter-token latency", "s", 1000))
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.2))
    styles = {OURS: "o-", OURS_PROCESS: "v-", THEIRS: "s--", THEIRS_INPROC: "^-.", OFFLINE: "d:"}
    labels = {OURS: "this server", OURS_PROCESS: "this server, ENGINE_CORE=process", THEIRS: "vLLM's server",
              THEIRS_INPROC: "vLLM's server, engine core in-process",
              OFFLINE: "offline LLM (ceiling)"}
    for name in (OURS, OURS_PROCESS, *ANCHORS):
        measured = [(scenarios[run]["concurrency"], report["results"].get(name, {}).get(run)) for run in runs]
        measured = [(c, s) for c, s in measured if s]
        if not measured:
            continue
        for ax, (key, _, _, scale) in zip(axes, panels):
            points = [(c, s[key] / scale) for c, s in measured if s.get(key) is not None]
            if points:
                ax.plot([c for c, _ in points], [v for _, v in points], styles[name], label=labels[name])
    for ax, (_, title, unit, _) in zip(axes, panels):
        ax.set_xscale("log", base=2)
        ax.set_xticks([scenarios[run]["concurrency"] for run in runs])
        ax.set_xticklabels([str(scenarios[run]["concurrency"]) for run in runs])
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{report['model']}, 128 prompt / 64 output tokens ({report['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
