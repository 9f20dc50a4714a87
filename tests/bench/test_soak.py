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
