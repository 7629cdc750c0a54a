"""The results package: one schema, one set of formulas and one verdict for agent and report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from loadgen.report import build_report
from loadgen.results import gateway
from loadgen.results.figures import throughput_per_s
from loadgen.results.verdict import EXIT_CODES, verdict

RECORDED = os.path.join(os.path.dirname(__file__), "data", "run-200-cluster")
# fields that differ between two builds of the same run by nature: build time and output paths
BUILD_FIELDS = ("generated_at", "analysis_seconds", "report", "summary_json")


def test_report_of_a_recorded_run_is_unchanged(tmp_path):
    """A real run (`fab cluster-test --connections 200 --duration 10s`, recorded before the results package
    existed) rebuilds into the summary.json the report wrote then."""
    run_dir = str(tmp_path / "run")
    shutil.copytree(RECORDED, run_dir)
    with open(os.path.join(RECORDED, "summary.expected.json")) as f:
        expected = json.load(f)
    rebuilt = build_report(run_dir)
    with open(os.path.join(run_dir, "summary.json")) as f:
        written = json.load(f)
    for field in BUILD_FIELDS:
        expected.pop(field), rebuilt.pop(field), written.pop(field)
    assert written == expected
    assert rebuilt == expected



def test_building_a_report_does_not_import_the_agent_runtime():
    code = ("import sys, loadgen.report, loadgen.report.analysis, loadgen.report.html, loadgen.report.compare; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('picows', 'uvloop') "
            "or m.startswith('loadgen.agent.worker') or m.startswith('loadgen.agent.runner')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _row(name, passed):
    return {"name": name, "label": name, "op": "<", "target": 1.0, "actual": None if passed is None else 0.5,
            "passed": passed}


def test_one_verdict_rule_a_criterion_not_measured_is_never_a_pass():
    assert verdict([_row("a", True), _row("b", True)], []) == ("PASS", [])
    assert verdict([_row("a", True), _row("b", None)], []) == ("PARTIAL", ["not measured: b"])
    assert verdict([_row("a", None)], []) == ("PARTIAL", ["no success criterion could be measured"])
    assert verdict([], []) == ("PARTIAL", ["no success criterion to check"])
    assert verdict([_row("a", True)], ["agent g1: dead"]) == ("PARTIAL", ["agent g1: dead"])
    # a measured failure is a FAIL even when the run is also partial
    assert verdict([_row("a", False), _row("b", None)], ["agent g1: dead"])[0] == "FAIL"
    assert [EXIT_CODES[s] for s in ("PASS", "FAIL", "PARTIAL")] == [0, 99, 1]


def test_gateway_figures_from_an_agents_scrapes():
    rows = [{"ts": t, "url": "http://n1/metrics", "active_connections": c, "rss_bytes": r, "cpu_seconds": cpu}
            for t, c, r, cpu in ((0, 0, 1000, 0), (1, 50, 6000, 0.5), (2, 100, 11000, 1.0), (3, 100, 11060, 1.5),
                                 (4, 100, 11120, 2.0), (5, 100, 11180, 2.1), (6, 100, 11240, 2.2))]
    figures = gateway.scraped_figures(rows, hold=(2, 6))
    assert figures["gateway_memory_per_connection_bytes"] == 100.0  # (11000 - 1000) / 100 added
    assert figures["gateway_cpu_percent"] == pytest.approx(42.0)  # peak window: 2.1 CPU-s over seconds 0-5
    assert figures["gateway_rss_growth_bytes_per_min"] == pytest.approx(3600.0)  # 60 bytes/s during the hold
    assert figures["gateway_nodes_sampled"] == 1
    assert gateway.scraped_figures(rows, hold=None)["gateway_rss_growth_bytes_per_min"] is None


def test_throughput_is_per_worker_hold_rate_summed():
    # worker A: warm-up second excluded; worker B: a single hold row counts as it is
    assert throughput_per_s([(5, 10 + 12, 2), (7, 0, 0)], received=999, seconds=10) == 11.0 + 7.0
    assert throughput_per_s([], received=90, seconds=30) == 3.0  # no hold: received over the rows' seconds
