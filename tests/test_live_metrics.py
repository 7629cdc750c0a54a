"""The agents' live /metrics: the exposition text from merged rows, and a scrape every 2 s during
`fab cluster-test` on inventory/local (counters rise; the fleet-merged histogram's p99 is the report's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

from loadgen.agent.metrics_endpoint import render
from loadgen.agent.runner import Totals
from loadgen.results import histogram as hdr
from loadgen.results.columns import COUNTERS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAB = os.path.join(os.path.dirname(sys.executable), "fab")


def parse(text: str) -> dict[str, float]:
    """'name{labels}' -> value, from Prometheus text format (comments skipped)."""
    return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
            if ln and not ln.startswith("#")}


def buckets(samples: dict[str, float], name: str) -> list[tuple[float, float]]:
    """[(le, cumulative count)] of one histogram, summed over every label set (fleet-merged: counts add)."""
    out: dict[float, float] = {}
    for key, value in samples.items():
        if key.startswith(name + "_bucket{"):
            le = key.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            out[bound] = out.get(bound, 0) + value
    return sorted(out.items())


def quantile(q: float, cumulative: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding the rank."""
    total = cumulative[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / max(count - prev_count, 1e-9)
        prev_bound, prev_count = bound, count
    return prev_bound


def row(worker: int, latencies_us: list[int], **counts) -> dict:
    lat, con, ses = hdr.new_histogram(), hdr.new_histogram(), hdr.new_histogram()
    for v in latencies_us:
        lat.record_value(v)
    con.record_value(1500)
    r = {name: 0 for name in COUNTERS}
    r.update(counts, ts=1000.0 + worker, worker=worker, phase="hold", active=counts.get("connects_ok", 0),
             latency_hdr=hdr.encode(lat), connect_hdr=hdr.encode(con), session_hdr=hdr.encode(ses), login_hdr="")
    return r


def test_render_counters_and_histograms_from_merged_rows():
    totals = Totals()
    totals.add(row(0, [800] * 98 + [40_000, 90_000], connects_ok=10, fail_refused=2, msgs_sent=100,
                   msgs_received=99, msgs_acked=100, msgs_errors=1))
    totals.add(row(1, [1200] * 100, connects_ok=5, fail_timeout=1, msgs_sent=100, msgs_received=100))
    labels = {"run_id": "r1", "generator": "gen1", "scenario": "cluster"}
    text = render(totals, active=15, connecting=2, planned=20, labels=labels)
    s = parse(text)
    base = 'run_id="r1",generator="gen1",scenario="cluster"'
    assert s[f"loadgen_connections_active{{{base}}}"] == 15
    assert s[f"loadgen_connections_connecting{{{base}}}"] == 2
    assert s[f"loadgen_connections_planned{{{base}}}"] == 20
    assert s[f"loadgen_connections_opened_total{{{base}}}"] == 15
    assert s[f'loadgen_connections_failed_total{{{base},reason="refused"}}'] == 2
    assert s[f'loadgen_connections_failed_total{{{base},reason="timeout"}}'] == 1
    assert s[f'loadgen_messages_total{{{base},type="sent"}}'] == 200
    assert s[f'loadgen_messages_total{{{base},type="delivered"}}'] == 199
    assert s[f'loadgen_messages_total{{{base},type="errors"}}'] == 1
    lat = buckets(s, "loadgen_message_latency_seconds")
    counts = [c for _, c in lat]
    assert counts == sorted(counts) and counts[-1] == 200 == s[f"loadgen_message_latency_seconds_count{{{base}}}"]
    assert dict(lat)[0.0008] == 98  # le: values up to and including the bound
    # p99 by histogram_quantile agrees with HDR's own to a bucket's width (2^(1/8): 9 %)
    p99 = quantile(0.99, lat)
    assert abs(p99 - hdr.percentile_ms(totals.latency, 99) / 1000) <= 0.09 * p99
    assert "# TYPE loadgen_message_latency_seconds histogram" in text
    assert buckets(s, "loadgen_connect_seconds")[-1][1] == 2


def scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.read().decode()
    except OSError:
        return None


def test_scrapes_during_fab_cluster_test_on_inventory_local_rise_and_agree_with_the_report(tmp_path):
    reports = tmp_path / "reports"
    urls = ["http://127.0.0.1:19464/metrics", "http://127.0.0.1:19465/metrics"]  # inventory/local's generators
    env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
    proc = subprocess.Popen([FAB, "-r", ROOT, "cluster-test", "-i", "inventory/local", "--reports-dir", str(reports),
                             "--stage", "3s:300", "--stage", "20s:300", "--stage", "2s:0", "--rate", "2",
                             "--message-size", "256",
                             # latency is compared, not judged: its verdict belongs to the machine's load
                             "--criterion", "message_p99_ms=off", "--criterion", "connect_p95_ms=off"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    scrapes: list[dict] = []  # per round: url -> samples
    done = threading.Event()

    def scraper():
        deadline = time.time() + 150
        while not done.is_set() and time.time() < deadline:
            t0 = time.time()
            got = {u: parse(t) for u in urls if (t := scrape(u)) is not None}
            if got:
                scrapes.append(got)
            done.wait(max(0.0, 2.0 - (time.time() - t0)))

    t = threading.Thread(target=scraper, daemon=True)
    t.start()
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        done.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        t.join(10)
    assert proc.returncode == 0, out[-3000:]
    run = [d for d in reports.iterdir() if d.is_dir()][0]
    summary = json.loads((run / "summary.json").read_text())
    targets = json.loads((run / "prometheus-targets.json").read_text())
    assert sorted(t for g in targets for t in g["targets"]) == ["127.0.0.1:19464", "127.0.0.1:19465"]

    def fleet(samples_by_url: dict, prefix: str) -> float:
        return sum(v for s in samples_by_url.values() for k, v in s.items() if k.startswith(prefix))

    both = [s for s in scrapes if len(s) == 2]
    assert len(both) >= 6, f"{len(both)} rounds with both agents answering"
    run_id = summary["run_id"] if "run_id" in summary else os.path.basename(run)
    assert all(f'run_id="{run_id}"' in k for s in both[-1].values() for k in s)
    assert {k.split('generator="')[1].split('"')[0] for s in both[-1].values() for k in s} == {"local-gen1", "local-gen2"}
    sent = [fleet(s, 'loadgen_messages_total{') for s in both]
    opened = [fleet(s, "loadgen_connections_opened_total{") for s in both]
    assert sent == sorted(sent) and opened == sorted(opened)  # counters never go back
    assert len(set(sent)) >= 4, sent  # and rose while the run went on
    assert max(fleet(s, "loadgen_connections_active{") for s in both) >= 250
    assert max(fleet(s, "loadgen_connections_planned{") for s in both) == 300  # the fleet's plan, summed
    # the last scrape's fleet-merged histogram: its p99 is the report's, to 10 % (0.5 ms floor: bucket width)
    last = max(both, key=lambda s: fleet(s, "loadgen_message_latency_seconds_count{"))
    merged = buckets({k: v for s in last.values() for k, v in s.items()}, "loadgen_message_latency_seconds")
    assert merged[-1][1] >= 0.8 * summary["latency_ms"]["count"], (merged[-1], summary["latency_ms"])
    live_p99_ms = quantile(0.99, merged) * 1000
    report_p99_ms = summary["latency_ms"]["p99"]
    print(f"\nlive p99 {live_p99_ms:.2f} ms, report p99 {report_p99_ms:.2f} ms, {len(both)} scrapes", file=sys.stderr)
    assert abs(live_p99_ms - report_p99_ms) <= max(0.10 * report_p99_ms, 0.5), (live_p99_ms, report_p99_ms)
