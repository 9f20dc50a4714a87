"""The soak (bench/soak.py) for 30 seconds against the real server, so that `make soak` does not rot."""

import json
import subprocess
import sys
from pathlib import Path

from bench.soak import ALL_KINDS, CAP, KINDS

ROOT = Path(__file__).resolve().parents[2]
# Every status the mix may meet: its bad inputs (400, 401, 404, 405), the cap (429) and success.
EXPECTED_STATUSES = {"200", "400", "401", "404", "405", "429", "left early"}


def test_a_30_second_soak_sends_every_kind_and_loses_nothing(tmp_path):
    # Its own server, as `make soak` starts it; generous: the suite shares two cores.
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--duration", "30", "--warmup", "12", "--out-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=2400)
    assert done.returncode in (0, 1), done.stderr[-4000:]  # 1: a target missed, asserted below
    [result_file] = tmp_path.glob("soak-*.json")
    report = json.loads(result_file.read_text())

    assert report["server_errors_5xx"] == 0, report["problems"]["server_errors"]
    assert report["lost"] == 0 and report["duplicated"] == 0, report["problems"]
    assert report["log_mismatches"] == 0, report["problems"]["log_mismatches"]
    assert report["engine"]["running_at_end"] == 0 and report["engine"]["waiting_at_end"] == 0
    assert set(report["by_status"]) <= EXPECTED_STATUSES, report["by_status"]
    # The only outcome a kind may meet besides its own: the cap, when a slow machine keeps it full
    # outside the bursts too (the server refusing, as it should, rather than failing).
    others = {entry.split(": ", 1)[1] for entry in report["problems"]["unexpected_by_kind"]}
    assert others <= {CAP}, report["problems"]["unexpected_by_kind"]
    # About 30 s at 1,000 a minute, bursts included.
    assert 400 <= report["measured_requests"] <= 600
    for name in ALL_KINDS:
        kind = report["by_kind"][name]
        assert kind["sent"] >= 1, name
        assert kind["outcomes"].get(kind["expect"], 0) >= 1, (name, kind["outcomes"])
    burst = report["by_kind"]["burst"]["outcomes"]
    assert burst.get(CAP, 0) >= 1 and burst.get("200 ok", 0) >= 1, burst
    assert report["memory"]["start_mib"] > 100 and report["memory"]["growth_pct"] is not None
    assert len(report["latency_by_minute"]["chat"]) >= 1
    assert {k.name for k in KINDS} | {"burst"} == set(report["by_kind"])
    markdown = result_file.with_suffix(".md").read_text()
    assert "## Targets" in markdown and "| 5xx responses | 0 | yes |" in markdown


def test_the_report_counts_lost_duplicated_disagreeing_and_capped_requests():
    from bench import soak_report
    from bench.soak import ALL_KINDS, ALSO_EXPECTED, LEFT, OK, Sent

    def sent(request_id, kind, start, status, outcome):
        return Sent(request_id, kind, "soak", due=start, start=start, end=start + 0.5, status=status, outcome=outcome)

    requests = [
        sent("a", "chat", 1.0, 200, OK),
        sent("b", "chat", 2.0, None, "transport error"),        # no log line: lost
        sent("c", "models", 3.0, 200, OK),                      # two log lines: duplicated
        sent("d", "chat_stream", 4.0, 200, OK),                 # log says 500: a 5xx and a disagreement
        sent("e", "chat", 10.2, 429, CAP),                      # during the burst: expected
        sent("f", "chat", 30.0, 429, CAP),                      # outside it: unexpected
        sent("g", "leave_stream", 5.0, 200, LEFT),              # log not aborted: disagreement
        sent("h", "leave_waiting", 6.0, None, LEFT),            # left before any answer: any status agrees
        sent("i", "burst", 10.0, 429, CAP),
    ]
    log_lines = {"a": [{"status": 200}], "c": [{"status": 200}, {"status": 200}], "d": [{"status": 500}],
                 "e": [{"status": 429}], "f": [{"status": 429}], "g": [{"status": 200}],
                 "h": [{"status": 429}], "i": [{"status": 429}]}
    soak = type("Soak", (), {"sent": requests, "lags": [0.0], "bursts": [("soak", 10.0, 12.0)]})()
    log = {"by_id": log_lines, "errors": [], "warnings": [], "worker_boots": 1, "not_json_lines": 0}
    queue = {"running": 0.0, "waiting": 0.0, "generation_tokens": 0.0, "prompt_tokens": 0.0,
             "first_running": 0.0, "first_waiting": 0.0, "waited_s": 0.0}
    result = soak_report.summarize(
        soak, log, ALL_KINDS, ALSO_EXPECTED,
        memory={"worker_pid": 1, "start_kib": 1000, "end_kib": 1100, "samples": [(5.0, 1050)], "workers_at_end": [1]},
        engine={"at_start": queue, "at_end": queue, "soak_wall_s": 10.0})

    assert result["lost"] == 1 and result["duplicated"] == 1
    assert result["server_errors_5xx"] == 1 and result["log_mismatches"] == 2
    assert {s["id"] for s in result["problems"]["log_mismatches"]} == {"d", "g"}
    assert {s["id"] for s in result["problems"]["unexpected"]} == {"b", "f"}
    assert result["by_kind"]["chat"]["capped_in_burst"] == 1
    assert result["memory"]["growth_pct"] == 10.0
    met = {t["target"]: t["met"] for t in result["targets"]}
    assert not met["worker RSS growth after warm-up < 5 %"] and met["worker restarts"]
    result.update(date="d", machine="m", model="x", load_average_before=[0], load_average_after=[0],
                  wall_time_s=1.0, settings={"server": {"command": "c", "environment": "e", "rate_limit": "r",
                                                       "max_concurrent": 100},
                                             "server_startup_s": 1.0, "warmup_s": 1, "duration_s": 10,
                                             "rate_per_min": 60, "burst_size": 150, "client_threads": 1,
                                             "api_keys": 4})
    markdown = soak_report.markdown(result)
    assert "| 5xx responses | 1 | **no** |" in markdown and "## Problems" in markdown
