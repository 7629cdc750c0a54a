"""--abort-on EXPR / --abort-grace: parsed once (loadgen.plan.abort), judged over a sliding window of merged
counters and histogram buckets (loadgen.results.live), on `loadgen run` and `fab cluster-test`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from xml.etree import ElementTree as ET

import pytest

from conftest import run_loadgen
from loadgen.errors import UsageError
from loadgen.plan.abort import parse_abort
from loadgen.results import histogram as hdr
from loadgen.results import live

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAB = os.path.join(os.path.dirname(sys.executable), "fab")
TRIPS = "message_p99_ms>0.001 over 5s"  # any delivered message is slower than 1 µs
HOLDS = "message_p99_ms>60000 over 5s"  # no message takes a minute here


def test_expressions_parse_once_and_bad_ones_name_the_problem():
    r = parse_abort("connect_success<0.9 over 60s")
    assert (r.metric, r.op, r.threshold, r.window_s, r.text) == ("connect_success", "<", 0.9, 60.0,
                                                                 "connect_success<0.9 over 60s")
    assert parse_abort("message_p99_ms>1000 over 2m").window_s == 120
    for bad, words in (("message_p99_ms>1000", "must be METRIC<VALUE over DURATION"),
                       ("p99<1 over 5s", "unknown metric 'p99'"),
                       ("message_p99_ms>1 over 0s", "between 1s and 3600s")):
        with pytest.raises(UsageError, match=words):
            parse_abort(bad)


def snap(ok=0, failed=0, sent=0, errors=0, latencies_us=()):
    h = hdr.new_histogram()
    for v in latencies_us:
        h.record_value(v)
    cum = hdr.cumulative_counts(h)[0]
    return {"connects_ok": ok, "connects_failed": failed, "msgs_sent": sent, "msgs_errors": errors,
            "msgs_send_failed": 0, "latency": cum, "connect": [0] * len(cum)}


def test_the_window_is_the_difference_of_two_snapshots_and_percentiles_come_from_merged_buckets():
    early = snap(ok=100, sent=1000, latencies_us=[1000] * 1000)
    # the fleet: two agents' later snapshots summed; in the window 90 of 100 connects failed, latency 100 ms
    later = live.merge([snap(ok=105, failed=45, sent=1500, latencies_us=[1000] * 1000 + [100_000] * 250),
                        snap(failed=45, sent=500, errors=20, latencies_us=[100_000] * 250)])
    fig = live.window_figures(early, later)
    assert fig["connect_success"] == pytest.approx(5 / 95)
    assert fig["message_success"] == pytest.approx(1 - 20 / 1000)
    assert abs(fig["message_p99_ms"] - 100) <= 9  # one bucket (9 %), never the cumulative run's 1 ms
    assert live.window_figures(early, early)["message_p99_ms"] is None  # nothing in the window: nothing judged


def test_a_rule_trips_only_after_the_grace_and_on_a_full_window_and_a_holding_one_never():
    rules = [parse_abort("connect_success<0.9 over 10s"), parse_abort(HOLDS)]
    w = live.AbortWatch(rules, grace_s=20, start_at=1000)
    ok = 0
    for t in range(0, 60, 2):
        failed = 50 * t if t >= 4 else 0  # connects fail from t=4 on
        ok += 10
        tripped = w.feed(1000 + t, snap(ok=ok, failed=failed, sent=10 * t, latencies_us=[2000] * (10 * t)))
        if t < 20:
            assert tripped is None, t
        else:
            break
    assert tripped and tripped["metric"] == "connect_success" and tripped["elapsed_s"] == 20
    assert tripped["value"] < 0.9 and "connect_success<0.9 over 10s" in tripped["text"]
    holding = live.AbortWatch([parse_abort(HOLDS)], grace_s=0, start_at=0)
    assert all(holding.feed(t, snap(sent=t, latencies_us=[5000] * t)) is None for t in range(0, 40, 2))


def test_loadgen_run_aborts_within_15s_of_the_grace_exit_99_and_says_aborted(gateway, tmp_path):
    out, junit = tmp_path / "out", tmp_path / "junit.xml"
    r = run_loadgen("run", "throughput", "--vus", "60", "--rate", "2", "--duration", "2m", "--workers", "1",
                    "-e", "GATEWAY_HOST=127.0.0.1", "-e", f"GATEWAY_PORT={gateway.port}", "--out", str(out),
                    "--abort-on", HOLDS, "--abort-on", TRIPS, "--abort-grace", "5s", "--junit", str(junit),
                    timeout=150)
    assert r.returncode == 99, r.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "ABORTED" and s["aborted"]["rule"] == TRIPS and s["aborted"]["value"] > 0.001
    assert "Result: ABORTED" in r.stdout and "ABORTED at t+" in r.stdout
    # the trip within 15 s of the grace; then the users close (quiesced) and the agent ends within seconds
    assert s["aborted"]["elapsed_s"] <= 5 + 15, s["aborted"]
    assert s["ended_at"] - s["aborted"]["at"] <= 15, (s["ended_at"], s["aborted"])
    aborted = [c for c in ET.parse(junit).getroot().findall("testcase") if c.get("name") == "aborted"]
    assert aborted and TRIPS in aborted[0].find("failure").get("message")


def test_loadgen_run_with_a_threshold_that_holds_runs_to_the_end(gateway, tmp_path):
    out = tmp_path / "out"
    r = run_loadgen("run", "throughput", "--vus", "40", "--rate", "2", "--duration", "10s", "--workers", "1",
                    "-e", "GATEWAY_HOST=127.0.0.1", "-e", f"GATEWAY_PORT={gateway.port}", "--out", str(out),
                    "--abort-on", HOLDS, "--abort-on", "connect_success<0.5 over 3s", "--abort-grace", "0s",
                    "--criterion", "message_p99_ms=off", "--quiet")
    s = json.loads((out / "summary.json").read_text())
    assert s["aborted"] is None and s["stopped_by"] is None and s["status"] != "ABORTED", s["status"]
    assert r.returncode in (0, 1), r.stderr  # PASS, or PARTIAL for a criterion this short run cannot measure


def test_bad_abort_expressions_are_one_line_exit_2():
    r = run_loadgen("run", "throughput", "--abort-on", "message_p99_ms>>1 over 5s")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--abort-on" in r.stderr, r.stderr
    r = subprocess.run([FAB, "-r", ROOT, "cluster-test", "-i", "inventory/local", "--abort-on", "x<1 over 5s"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "fab: error: --abort-on 'x<1 over 5s': unknown metric 'x'; choose one of: connect_success, message_success, "
        "message_p50_ms, message_p95_ms, message_p99_ms, connect_p95_ms, connect_p99_ms"], r.stderr


def test_fab_cluster_test_aborts_every_agent_exit_99_and_the_report_says_aborted(tmp_path):
    reports = tmp_path / "reports"
    env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
    r = subprocess.run([FAB, "-r", ROOT, "cluster-test", "-i", "inventory/local", "--reports-dir", str(reports),
                        "--stage", "5s:200", "--stage", "110s:200", "--stage", "5s:0", "--rate", "2",
                        "--abort-on", HOLDS, "--abort-on", TRIPS, "--abort-grace", "5s"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 99, r.stdout[-3000:] + r.stderr[-2000:]
    run = [d for d in reports.iterdir() if d.is_dir()][0]
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "ABORTED" and s["aborted"]["rule"] == TRIPS, s.get("aborted")
    assert r.stdout.count("ABORTED") >= 2 and "ABORTED" in (run / "report.html").read_text()
    assert s["aborted"]["elapsed_s"] <= 5 + 15, s["aborted"]
    # every agent ramped down within seconds of the trip (its users closed, quiesced), not at the plan's end
    for agent in ("local-gen1", "local-gen2"):
        a = json.loads((run / "agents" / agent / "summary.json").read_text())
        assert a["ended_at"] - s["aborted"]["at"] <= 20, (agent, a["ended_at"], s["aborted"]["at"])
