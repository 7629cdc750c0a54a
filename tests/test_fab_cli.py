"""The fab tasks' own surface: help lines and what `fab report` prints."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAB = os.path.join(ROOT, ".venv", "bin", "fab")
RUN = os.path.join(ROOT, "tests", "data", "compare", "same-plan-1")  # a recorded real run
OPTION = re.compile(r"^  (-(?P<short>[a-z]) STRING, )?--(?P<long>[a-z][a-z-]*)(?P<value>=STRING|=INT)?  +\S")


def fab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FAB, "-r", ROOT, *args], capture_output=True, text=True, timeout=120)


def test_cluster_test_help_has_one_right_line_per_option():
    r = fab("cluster-test", "--help")
    assert r.returncode == 0, r.stderr
    body = r.stdout.split("Options:\n", 1)[1]
    starts = [line for line in body.splitlines() if line.startswith("  -")]
    parsed = [OPTION.match(line) for line in starts]
    assert all(parsed), [line for line, m in zip(starts, parsed) if not m]
    names = [m["long"] for m in parsed]
    assert len(names) == len(set(names))
    assert {"inventory", "reports-dir", "vus", "duration", "stage", "criterion", "deadman-timeout"} <= set(names)
    assert {m["long"]: m["short"] for m in parsed if m["short"]} == {"inventory": "i"}  # no derived short flags
    for m in parsed:  # every option but the repeatable ones shows its value; those say they take one
        line = next(s for s in starts if f"--{m['long']}" in s)
        assert m["value"] or "takes a value" in line, line


def test_fab_report_prints_verdict_and_failed_criteria(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(RUN, run)
    r = fab("report", str(run))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "PASS: 20261201-041130-cluster-c454"
    assert r.stdout.splitlines()[-1] == f"report: {run / 'report.html'}"
    plan = json.loads((run / "plan.json").read_text())
    plan["criteria"] = ["message_p99_ms<5"]  # as `fab cluster-test --criterion message_p99_ms<5` records it
    (run / "plan.json").write_text(json.dumps(plan))
    r = fab("report", str(run))
    lines = r.stdout.splitlines()
    assert lines[0] == "FAIL: 20261201-041130-cluster-c454"
    assert lines[1] == "  [FAIL] P99 message latency (ms): 13.54 (target < 5)"
    assert len(lines) == 3
