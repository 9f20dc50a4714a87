"""The soak's findings: every request matched to its log line, the targets, and a Markdown report."""

import json
import math
import time
from collections import Counter, defaultdict
from pathlib import Path

# A refusal at the cap is expected for a generation that overlapped a burst; this much earlier
# counts as overlapping (the burst's requests reach the server a moment after they are sent).
BURST_MARGIN_S = 1.0
MEMORY_GROWTH_LIMIT_PCT = 5.0
SAMPLES_SHOWN = 5


def read_log(path: Path, ids: set[str], timeout: float) -> dict:
    """The server's JSON log: request lines by request id (waiting for ids' lines up to timeout),
    and the lines that say something went wrong."""
    deadline = time.monotonic() + timeout
    while True:
        records, not_json = [], 0
        for line in path.read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                not_json += 1
        by_id: dict[str, list[dict]] = defaultdict(list)
        for record in records:
            if record.get("event") == "request" and record.get("request_id") in ids:
                by_id[record["request_id"]].append(record)
        if len(by_id) == len(ids) or time.monotonic() > deadline:
            break
        time.sleep(1)
    # What start-up logs (vLLM's notes on the CPU backend) is not the traffic's doing.
    ready = next((i for i, r in enumerate(records) if r.get("event") == "ready"), 0)
    serving = records[ready:]
    return {
        "by_id": by_id,
        "errors": [r for r in serving if r.get("level") in ("error", "critical") or "exception" in r],
        "warnings": [r for r in serving if r.get("level") == "warning"],
        "worker_boots": sum("Booting worker" in str(r.get("message", "")) for r in records),
        "not_json_lines": not_json,
    }


def percentile(values: list[float], p: float) -> float | None:
    """The nearest-rank percentile (p in 0..100) of values, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _ms(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": _round(percentile(values, 50)), "p99_ms": _round(percentile(values, 99))}


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _log_agrees(sent, kind, line: dict) -> str:
    """Why the server's log line disagrees with what the client saw ("" when it agrees)."""
    if sent.outcome == "left early":
        # A client that left before any response cannot disagree with whatever the server answered.
        if kind.leave == "after_tokens" and (line.get("status") != 200 or not line.get("aborted")):
            return f"client left mid-stream; log says status {line.get('status')}, aborted {line.get('aborted')}"
        return ""
    if sent.status is None:
        return ""  # no status reached the client: nothing to compare
    if line.get("status") != sent.status:
        return f"client got {sent.status}; log says {line.get('status')}"
    if line.get("aborted"):
        return "client read the whole response; log says aborted"
    return ""


def summarize(soak, log: dict, kinds: dict, also_expected: dict, memory: dict, engine: dict) -> dict:
    """The report's numbers. Targets cover every request (warm-up included); tables the measured part."""
    windows = defaultdict(list)
    for phase, start, end in soak.bursts:
        windows[phase].append((start - BURST_MARGIN_S, end))
    unexpected, mismatches, lost, duplicated, server_errors = [], [], [], [], []
    for sent in soak.sent:
        kind = kinds[sent.kind]
        sent.in_burst = kind.takes_slot and any(
            sent.start <= end and sent.end >= start for start, end in windows[sent.phase])
        lines = log["by_id"].get(sent.request_id, [])
        if not lines:
            lost.append(sent)
        elif len(lines) > 1:
            duplicated.append(sent)
        else:
            sent.log = lines[0]
            why = _log_agrees(sent, kind, sent.log)
            if why:
                mismatches.append((sent, why))
        if (sent.status or 0) >= 500 or any(line.get("status", 0) >= 500 for line in lines):
            server_errors.append(sent)
        allowed = {kind.expect, *also_expected.get(kind.name, ())}
        if sent.in_burst:
            allowed.add("429 concurrency_limit_exceeded")
        if sent.outcome not in allowed:
            unexpected.append(sent)

    measured = [s for s in soak.sent if s.phase == "soak"]
    by_status = Counter(str(s.status) if s.status is not None else s.outcome for s in measured)
    unexpected_ids = {s.request_id for s in unexpected}
    by_kind, per_minute = {}, {}
    for name, kind in kinds.items():
        rows = [s for s in measured if s.kind == name]
        outcomes = Counter(s.outcome for s in rows)
        # Latency of the requests that got their kind's outcome: a 2 ms refusal at the cap says
        # nothing about how long a generation takes.
        served = [s for s in rows if s.outcome == kind.expect]
        by_kind[name] = {
            "sent": len(rows), "expect": kind.expect, "outcomes": dict(outcomes.most_common()),
            "capped_in_burst": sum(1 for s in rows if s.in_burst and s.outcome == "429 concurrency_limit_exceeded"),
            "unexpected": sum(1 for s in rows if s.request_id in unexpected_ids),
            **_ms([s.end - s.start for s in served]),
        }
        minutes = defaultdict(list)
        for s in served:
            minutes[int(s.start // 60)].append(s.end - s.start)
        per_minute[name] = {str(m + 1): _ms(v) for m, v in sorted(minutes.items())}
    # Non-streamed requests whose client hung up while the server was generating.
    left_waiting = [s for s in soak.sent if s.kind == "leave_waiting" and s.outcome == "left early"
                    and s.log and s.log.get("status") == 200]
    wanted_tokens = kinds["leave_waiting"].tokens

    start_kib, end_kib = memory["start_kib"], memory["end_kib"]
    growth = 100.0 * (end_kib - start_kib) / start_kib if start_kib and end_kib else None
    at_start, at_end = engine["at_start"], engine["at_end"]
    wall = engine["soak_wall_s"]
    duration = max((s.due for s in measured), default=0) or 1
    problems = {
        "unexpected": [_sample(s) for s in unexpected[:SAMPLES_SHOWN]],
        "unexpected_by_kind": dict(Counter(f"{s.kind}: {s.outcome}" for s in unexpected).most_common()),
        "lost": [_sample(s) for s in lost[:SAMPLES_SHOWN]],
        "duplicated": [_sample(s) for s in duplicated[:SAMPLES_SHOWN]],
        "log_mismatches": [{**_sample(s), "why": why} for s, why in mismatches[:SAMPLES_SHOWN]],
        "server_errors": [_sample(s) for s in server_errors[:SAMPLES_SHOWN]],
        "server_log_errors": [_log_sample(r) for r in log["errors"][:SAMPLES_SHOWN]],
        "server_log_warnings": sorted({r.get("message", "")[:200] for r in log["warnings"]})[:SAMPLES_SHOWN],
    }
    worker_restarted = memory["workers_at_end"] != [memory["worker_pid"]] or log["worker_boots"] > 1
    result = {
        "requests": len(soak.sent),
        "measured_requests": len(measured),
        "warmup_requests": len(soak.sent) - len(measured),
        "achieved_rate_per_min": round(len(measured) / duration * 60, 1),
        "send_lag_ms": {"p50": _round(percentile(soak.lags, 50)), "p99": _round(percentile(soak.lags, 99)),
                        "max": _round(max(soak.lags, default=None))},
        "bursts": [{"phase": p, "start_s": round(a, 1), "end_s": round(b, 1)} for p, a, b in soak.bursts],
        "by_status": dict(sorted(by_status.items())),
        "by_kind": by_kind,
        "latency_by_minute": per_minute,
        "server_errors_5xx": len(server_errors),
        "lost": len(lost),
        "duplicated": len(duplicated),
        "log_mismatches": len(mismatches),
        "unexpected": len(unexpected),
        "left_while_generating": {
            "requests": len(left_waiting),
            "asked_tokens": wanted_tokens,
            "seen_as_aborted": sum(1 for s in left_waiting if s.log.get("aborted")),
            "generated_to_the_end": sum(1 for s in left_waiting if s.log.get("completion_tokens") == wanted_tokens),
        },
        "memory": {
            "worker_pid": memory["worker_pid"], "workers_at_end": memory["workers_at_end"],
            "start_mib": _mib(start_kib), "end_mib": _mib(end_kib),
            "peak_mib": _mib(max((kib for _, kib in memory["samples"]), default=None)),
            "growth_pct": None if growth is None else round(growth, 2),
            "samples_mib": [[t, _mib(kib)] for t, kib in memory["samples"]],
        },
        "engine": {
            "running_at_end": at_end["running"], "waiting_at_end": at_end["waiting"],
            "running_when_clients_done": at_end["first_running"], "waiting_when_clients_done": at_end["first_waiting"],
            "seconds_to_empty": at_end["waited_s"],
            "generation_tok_s": round((at_end["generation_tokens"] - at_start["generation_tokens"]) / wall, 1),
            "prompt_tok_s": round((at_end["prompt_tokens"] - at_start["prompt_tokens"]) / wall, 1),
        },
        "server_log": {"error_lines": len(log["errors"]), "warning_lines": len(log["warnings"]),
                       "worker_boots": log["worker_boots"], "not_json_lines": log["not_json_lines"]},
        "problems": problems,
    }
    result["targets"] = [
        _target("5xx responses", len(server_errors), len(server_errors) == 0),
        _target("requests without exactly one log line (lost + duplicated)", len(lost) + len(duplicated),
                not lost and not duplicated),
        _target("log lines that disagree with what the client saw", len(mismatches), not mismatches),
        _target("requests with an outcome other than their kind's", len(unexpected), not unexpected),
        _target(f"worker RSS growth after warm-up < {MEMORY_GROWTH_LIMIT_PCT:g} %",
                None if growth is None else round(growth, 2),
                growth is not None and growth < MEMORY_GROWTH_LIMIT_PCT),
        _target("engine requests running + waiting at the end", at_end["running"] + at_end["waiting"],
                at_end["running"] == at_end["waiting"] == 0),
        _target("worker restarts", int(worker_restarted), not worker_restarted),
    ]
    return result


def _mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def _log_sample(record: dict) -> dict:
    return {k: record[k] for k in ("time", "logger", "message", "request_id", "exception") if k in record}


def _sample(sent) -> dict:
    return {"id": sent.request_id, "kind": sent.kind, "phase": sent.phase, "status": sent.status,
            "outcome": sent.outcome, "detail": sent.detail, "log_status": (sent.log or {}).get("status")}


def _target(name: str, value, met: bool) -> dict:
    return {"target": name, "value": value, "met": met}


def _fmt(value, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(report: dict) -> str:
    """The human-readable report: setup, targets, outcomes, latency over time, memory, engine."""
    s = report["settings"]
    lines = [
        f"# Soak {report['date']}", "",
        f"{report['machine']}; model {report['model']}; load average before {report['load_average_before']}, "
        f"after {report['load_average_after']}; `make soak` took {_fmt(report['wall_time_s'])} s.", "",
        f"Server: `{s['server']['command']}` ({s['server']['environment']}: RATE_LIMIT {s['server']['rate_limit']}, "
        f"MAX_CONCURRENT {s['server']['max_concurrent']}), ready in {_fmt(s['server_startup_s'], 1)} s.", "",
        f"Traffic: {_fmt(s['warmup_s'])} s of warm-up, then {_fmt(s['duration_s'])} s measured at "
        f"{_fmt(s['rate_per_min'])} requests a minute (achieved {_fmt(report['achieved_rate_per_min'])}), "
        f"bursts included; {_fmt(report['requests'])} requests in all, {_fmt(report['measured_requests'])} measured. "
        f"Bursts of {s['burst_size']} streams at once: "
        + ", ".join(f"{b['phase']} {b['start_s']:.0f}-{b['end_s']:.0f} s" for b in report["bursts"])
        + f". Client: {s['client_threads']} threads for the steady traffic, {s['api_keys']} API keys in turn; "
        f"sending fell behind schedule by {_fmt(report['send_lag_ms']['p50'])} ms (p50), "
        f"{_fmt(report['send_lag_ms']['p99'])} ms (p99), {_fmt(report['send_lag_ms']['max'])} ms (max).", "",
        "## Targets (every request, warm-up included)", "",
        "| target | measured | met |", "| --- | --- | --- |",
    ]
    lines += [f"| {t['target']} | {_fmt(t['value'], 2)} | {'yes' if t['met'] else '**no**'} |" for t in report["targets"]]
    m, e, lw = report["memory"], report["engine"], report["left_while_generating"]
    lines += [
        "", f"Worker {m['worker_pid']} RSS: {_fmt(m['start_mib'], 1)} MiB after warm-up, {_fmt(m['end_mib'], 1)} MiB "
        f"at the end ({_fmt(m['growth_pct'], 2)} %), peak {_fmt(m['peak_mib'], 1)} MiB. Engine at the end: "
        f"{_fmt(e['running_at_end'])} running, {_fmt(e['waiting_at_end'])} waiting (when the last client was done: "
        f"{_fmt(e['running_when_clients_done'])} running, {_fmt(e['waiting_when_clients_done'])} waiting; empty "
        f"{_fmt(e['seconds_to_empty'], 1)} s later). Measured part: "
        f"{_fmt(e['generation_tok_s'], 1)} generated and {_fmt(e['prompt_tok_s'], 1)} prompt tokens/s. "
        f"Server log once ready: {report['server_log']['error_lines']} error lines, "
        f"{report['server_log']['warning_lines']} warnings. Non-streamed requests whose client hung up while the "
        f"server was generating: {lw['requests']}, of which the server saw {lw['seen_as_aborted']} as aborted and "
        f"generated all {lw['asked_tokens']} tokens for {lw['generated_to_the_end']}.",
        "", "## Requests by status (measured part)", "", "| status | requests |", "| --- | --- |",
    ]
    lines += [f"| {status} | {_fmt(n)} |" for status, n in report["by_status"].items()]
    lines += ["", "## Requests by kind (measured part; latency of those that got the expected outcome)", "",
              "| kind | sent | expected outcome | outcomes | unexpected | p50 ms | p99 ms |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, k in report["by_kind"].items():
        outcomes = ", ".join(f"{o}: {_fmt(n)}" for o, n in k["outcomes"].items())
        if k["capped_in_burst"]:
            outcomes += f" (429s during a burst: {k['capped_in_burst']})"
        lines.append(f"| {name} | {_fmt(k['sent'])} | {k['expect']} | {outcomes} | {k['unexpected']} | "
                     f"{_fmt(k['p50_ms'])} | {_fmt(k['p99_ms'])} |")
    minutes = sorted({int(mm) for per in report["latency_by_minute"].values() for mm in per})
    lines += ["", "## Latency over time: p50 / p99 ms per minute of sending (measured part, expected outcomes)", "",
              "| kind | " + " | ".join(f"min {mm}" for mm in minutes) + " |",
              "| --- |" + " --- |" * len(minutes)]
    for name, per in report["latency_by_minute"].items():
        cells = [f"{_fmt(per[str(mm)]['p50_ms'])} / {_fmt(per[str(mm)]['p99_ms'])}" if str(mm) in per else "-"
                 for mm in minutes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    by_minute = defaultdict(list)
    for t, mib in m["samples_mib"]:
        by_minute[int(t // 60) + 1].append(mib)
    if by_minute:
        lines += ["", "## Worker RSS per minute (MiB, last sample of the minute)", "",
                  "| " + " | ".join(f"min {mm}" for mm in by_minute) + " |", "|" + " --- |" * len(by_minute),
                  "| " + " | ".join(_fmt(v[-1], 1) for v in by_minute.values()) + " |"]
    p = report["problems"]
    if any(p[key] for key in ("unexpected", "lost", "duplicated", "log_mismatches", "server_errors",
                              "server_log_errors")):
        lines += ["", "## Problems", ""]
        if p["unexpected_by_kind"]:
            lines.append("Unexpected outcomes: " + ", ".join(f"{k} x{n}" for k, n in p["unexpected_by_kind"].items()))
        for key in ("unexpected", "lost", "duplicated", "log_mismatches", "server_errors", "server_log_errors"):
            for sample in p[key]:
                lines.append(f"- {key}: `{json.dumps(sample)[:400]}`")
    if p["server_log_warnings"]:
        lines += ["", "Server warnings once ready: " + "; ".join(f"`{w}`" for w in p["server_log_warnings"]) + "."]
    return "\n".join(lines) + "\n"
