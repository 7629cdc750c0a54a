"""Baseline comparison (the spec's best practice 5): every headline figure of run B against run A.

A figure regresses when it is worse than the baseline by more than `tolerance` (relative) and by more
than its noise floor (absolute). Success rates are compared as failure rates: 99.9 % -> 99.0 % is a
10x worse failure rate, not a 0.9 % change. A verdict that drops from PASS is a regression too.
"""

from __future__ import annotations

import os

import numpy as np
from markupsafe import Markup

from loadgen.report import analyze_run, svg, write_json

# key, label, better ('lower' | 'higher' | 'rate' = success rate | None = shown only), unit, noise floor
FIGURES = (
    ("connection_success_rate", "Connection success rate", "rate", "%", 0.001),
    ("connect_p50_ms", "Connect P50 (ms)", "lower", "ms", 1.0),
    ("connect_p95_ms", "Connect P95 (ms)", "lower", "ms", 1.0),
    ("connect_p99_ms", "Connect P99 (ms)", "lower", "ms", 1.0),
    ("connect_max_ms", "Connect max (ms)", None, "ms", 0),
    ("latency_p50_ms", "Message latency P50 (ms)", "lower", "ms", 1.0),
    ("latency_p95_ms", "Message latency P95 (ms)", "lower", "ms", 1.0),
    ("latency_p99_ms", "Message latency P99 (ms)", "lower", "ms", 1.0),
    ("latency_max_ms", "Message latency max (ms)", None, "ms", 0),
    ("throughput_per_s", "Throughput (msg/s, hold)", "higher", "", 1.0),
    ("message_success_rate", "Message success rate", "rate", "%", 0.001),
    ("session_p95_s", "Session P95 (s)", "higher", "s", 1.0),
    ("peak_active", "Peak active connections", None, "", 0),
    ("disconnects", "Unplanned disconnects", "lower", "", 10),
    ("connect_failures", "Connection failures", "lower", "", 10),
    ("message_errors", "Message errors", "lower", "", 10),
    ("gateway_memory_per_connection_bytes", "Gateway memory per connection (bytes)", "lower", "B", 64),
    ("gateway_cpu_percent", "Gateway CPU peak (%)", "lower", "%", 2.0),
    ("gateway_rss_growth_bytes_per_min", "Gateway RSS growth in hold (bytes/min)", "lower", "B", 262_144),
)
STATUS_RANK = {"PASS": 0, "PARTIAL": 1, "FAIL": 2}


def judge(key: str, a, b, better, floor: float, tolerance: float) -> dict:
    row = {"name": key, "a": a, "b": b, "change": None, "regression": False, "note": ""}
    if a is None or b is None:
        row["note"] = "not measured in " + ("both runs" if a is None and b is None else "run A" if a is None else "run B")
        return row
    if better == "rate":  # compare failure rates
        fa, fb = 1.0 - a, 1.0 - b
        row["change"] = (b - a) * 100  # percentage points
        row["change_unit"] = "pp"
        row["regression"] = fb - fa > max(tolerance * fa, floor)
        return row
    row["change"] = (b - a) / abs(a) * 100 if a else (0.0 if b == a else None)
    row["change_unit"] = "%"
    if better == "lower":
        row["regression"] = b - a > floor and b > a + tolerance * abs(a)
    elif better == "higher":
        row["regression"] = a - b > floor and b < a - tolerance * abs(a)
    return row


def _aligned(xa, ya, xb, yb) -> np.ndarray:
    """Run B's series on run A's time axis (both: seconds since their own start)."""
    ok = np.isfinite(yb)
    if not ok.any():
        return np.full(len(xa), np.nan)
    out = np.interp(xa, xb[ok], yb[ok], left=np.nan, right=np.nan)
    return out


def compare(run_a: str, run_b: str, out_path: str | None = None, tolerance: float = 0.10) -> dict:
    from loadgen.report.html import template

    ma, mb = analyze_run(run_a), analyze_run(run_b)
    sa, sb = ma["summary"], mb["summary"]
    rows = []
    for key, label, better, unit, floor in FIGURES:
        row = judge(key, sa["figures"].get(key), sb["figures"].get(key), better, floor, tolerance)
        row.update({"label": label, "better": better, "unit": unit})
        rows.append(row)
    regressions = [r["name"] for r in rows if r["regression"]]
    if STATUS_RANK.get(sb["status"], 2) > STATUS_RANK.get(sa["status"], 2):
        regressions.insert(0, "status")
    warnings = []
    for key in ("stages", "rate", "peak"):
        if sa["plan"].get(key) != sb["plan"].get(key):
            warnings.append(f"plans differ in {key}: {sa['plan'].get(key)} vs {sb['plan'].get(key)}")
    if sa["scenario"] != sb["scenario"]:
        warnings.append(f"scenarios differ: {sa['scenario']} vs {sb['scenario']}")
    charts = []
    xa, xb = ma["series"]["x"], mb["series"]["x"]
    for title, get, unit in (("Message latency P99 per interval", lambda m: m["series"].get("latency", {}).get("p99"), "ms"),
                             ("Messages received per second", lambda m: m["series"].get("msgs_received"), "/s"),
                             ("Active connections", lambda m: m["series"].get("active_total"), "")):
        ya, yb = get(ma), get(mb)
        if ya is not None and yb is not None:
            chart = svg.line_chart(title + " (A vs B)", xa, {"A (baseline)": ya, "B": _aligned(xa, ya, xb, yb)}, unit)
            if chart:
                charts.append(Markup(chart))
    out_path = out_path or os.path.join(run_b, f"compare-{os.path.basename(os.path.normpath(run_a))}.html")
    result = {"run_a": os.path.abspath(run_a), "run_b": os.path.abspath(run_b), "tolerance": tolerance,
              "status_a": sa["status"], "status_b": sb["status"], "run_id_a": sa["run_id"], "run_id_b": sb["run_id"],
              "regressions": regressions, "figures": rows, "warnings": warnings, "report": os.path.abspath(out_path)}
    html = template("compare.html.j2").render(r=result, charts=charts)
    tmp = out_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(html)
    os.replace(tmp, out_path)
    write_json(result, os.path.splitext(out_path)[0] + ".json")
    return result
