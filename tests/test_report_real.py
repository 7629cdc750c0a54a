"""The report from a real local run: two agents against the reference gateway, laid out as a run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from hdrh.histogram import HdrHistogram

from conftest import TOKEN, start_gateway
from loadgen.results import histogram as hdr
from loadgen.report import build_report


def real_run(tmp_path, run_dir) -> dict:
    """What `fab cluster-test` lays out, done by hand on 127.0.0.1: plan.json, run.json, agents/<host>/."""
    gw = start_gateway(tmp_path)
    start_at = time.time() + 1.5
    env = {**{k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}, "AUTH_TOKEN": TOKEN}
    procs = {}
    try:
        for host in ("gen-1", "gen-2"):
            procs[host] = subprocess.Popen(
                [sys.executable, "-m", "loadgen", "run", "throughput", "--rate", "5", "--stage", "1s:20",
                 "--stage", "2s:20", "--stage", "1s:0", "--workers", "1", "--agent-id", host, "--start-at", str(start_at),
                 "-e", f"GATEWAY_PORT={gw.port}", "--gateway-metrics", gw.metrics_url, "--quiet",
                 "--out", str(run_dir / "agents" / host)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for host, p in procs.items():
            out, err = p.communicate(timeout=60)
            assert p.returncode in (0, 1, 99), err  # the run completed: PASS, PARTIAL (a 2 s hold has no leak slope) or FAIL
        metrics = gw.metrics()
    finally:
        gw.stop()
    for when in ("before", "after"):
        d = run_dir / "probes" / "127.0.0.1" / when
        d.mkdir(parents=True)
        (d / "metrics.txt").write_text(metrics)
    (run_dir / "plan.json").write_text(json.dumps({
        "run_id": run_dir.name, "scenario": "throughput", "stages": ["1s:40", "2s:40", "1s:0"], "rate": 5,
        "start_at": start_at, "hosts": {"generators": ["gen-1", "gen-2"], "gateways": ["127.0.0.1"]}}))
    (run_dir / "run.json").write_text(json.dumps({"agents": {h: {"state": "done"} for h in procs}}))
    return {h: json.loads((run_dir / "agents" / h / "summary.json").read_text()) for h in procs}


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real")
    agents = real_run(tmp, tmp / "real-run")
    return agents, build_report(str(tmp / "real-run"))


def test_report_of_a_real_local_run(real):
    agents, s = real
    for key in ("sent", "received", "acked"):
        assert s["messages"][key] == sum(a["messages"][key] for a in agents.values()), key
    assert s["connections"]["established"] == sum(a["connections"]["established"] for a in agents.values()) == 40
    merged = hdr.new_histogram()
    for a in agents.values():
        merged.add(HdrHistogram.decode(a["histograms"]["latency"]))
    assert s["latency_ms"]["p99"] == merged.get_value_at_percentile(99) / 1000
    assert s["latency_ms"]["count"] == merged.get_total_count()
    assert s["messages"]["throughput_per_s"] == sum(a["messages"]["throughput_per_s"] for a in agents.values())
    assert s["gateway"]["source"] == "agents' gateway_metrics.csv" and s["gateway"]["gateway_cpu_percent"] is not None
    # a 2 s hold is too short for the leak slope: not measured, so PARTIAL at best (never a pass)
    assert s["status"] == "PARTIAL", s["criteria"]
    assert s["partial_reasons"] == ["not measured: Gateway RSS growth during hold (bytes/min, leak check)"]
    assert all(r["passed"] for r in s["criteria"] if r["name"] != "gateway_rss_growth_bytes_per_min")
    assert {h: a["state"] for h, a in s["agents"].items()} == {"gen-1": "done", "gen-2": "done"}
    assert all(abs(a["start_skew_ms"]) < 1000 for a in s["agents"].values())
    html = open(s["report"]).read()
    assert "Throughput Load Test Summary" in html and "im_gateway_active_connections" in html


@pytest.mark.browser
def test_real_report_opens_in_chromium(real, tmp_path):
    from test_report_browser import CHECK_JS, SECTIONS, Browser

    _, s = real
    b = Browser(str(tmp_path / "profile"))
    try:
        b.open(s["report"])
        result = b.evaluate(CHECK_JS)
        b.screenshot(str(tmp_path / "real.png"), result["height"])
        assert b.errors() == [] and result["bad"] == [] and result["sections"] == SECTIONS
        assert result["charts"] >= 8 and result["status"] == s["status"]
    finally:
        b.close()
