"""Baseline comparison (the spec's best practice 5): every headline figure of a candidate run B against a
baseline run A, judged against the run-to-run noise both runs show.

A latency, connect-time, throughput or gateway-CPU figure regresses only when all three hold:
  - its per-interval values (the same percentile of each interval's merged histogram, or the interval's rate)
    are worse in B than in A by a one-sided Mann-Whitney rank test at the chosen confidence (default 99.9 %),
    with at least MIN_INTERVALS intervals in each run: too few intervals and the figure is shown, not judged;
  - the typical interval got worse (Hodges-Lehmann shift: the median of all B-minus-A differences of interval
    values) by more than the intervals' own spread (the larger interquartile range of the two runs) and the
    figure's floor. The rank test alone is not enough: seconds of one run are not independent draws, and on a
    shared machine a whole run can sit a little higher than the next; a change smaller than the second-to-second
    spread is noise to a reader of the charts too;
  - the headline figure is worse by more than `tolerance` (relative) and the floor.
Events (failures, errors, unplanned disconnects; success rates as failure rates: 99.9 % -> 99.0 % is a 10x
worse failure rate) regress when worse by more than `tolerance` and their floor. A figure that is one value per
run (memory per connection, RSS growth, session length) has no spread to judge a change against: shown, and left
to the run's own criteria. A verdict that drops from PASS is a regression too.
"""

from __future__ import annotations

import math
import os

import numpy as np
from markupsafe import Markup

from loadgen.errors import UsageError
from loadgen.report import analyze_run, svg, write_json

MIN_INTERVALS = 5  # below this a one-sided rank test cannot reach 99 % even when every interval is worse
DEFAULT_CONFIDENCE = 0.999

# key, label, better ('lower' | 'higher' | 'rate' = success rate | None = shown only), unit, floor,
# judged by: 'spread' (rank test over intervals) | 'events' (tolerance + floor) | 'single' (not judged)
FIGURES = (
    ("connection_success_rate", "Connection success rate", "rate", "%", 0.001, "events"),
    ("connect_p50_ms", "Connect P50 (ms)", "lower", "ms", 1.0, "spread"),
    ("connect_p95_ms", "Connect P95 (ms)", "lower", "ms", 1.0, "spread"),
    ("connect_p99_ms", "Connect P99 (ms)", "lower", "ms", 1.0, "spread"),
    ("connect_max_ms", "Connect max (ms)", None, "ms", 0, None),
    ("latency_p50_ms", "Message latency P50 (ms)", "lower", "ms", 1.0, "spread"),
    ("latency_p95_ms", "Message latency P95 (ms)", "lower", "ms", 1.0, "spread"),
    ("latency_p99_ms", "Message latency P99 (ms)", "lower", "ms", 1.0, "spread"),
    ("latency_max_ms", "Message latency max (ms)", None, "ms", 0, None),
    ("throughput_per_s", "Throughput (msg/s, hold)", "higher", "/s", 1.0, "spread"),
    ("message_success_rate", "Message success rate", "rate", "%", 0.001, "events"),
    ("session_p95_s", "Session P95 (s)", "higher", "s", 1.0, "single"),
    ("peak_active", "Peak active connections", None, "", 0, None),
    ("disconnects", "Unplanned disconnects", "lower", "", 10, "events"),
    ("connect_failures", "Connection failures", "lower", "", 10, "events"),
    ("message_errors", "Message errors", "lower", "", 10, "events"),
    ("gateway_memory_per_connection_bytes", "Gateway memory per connection (bytes)", "lower", "B", 64, "single"),
    ("gateway_cpu_percent", "Gateway CPU peak (%)", "lower", "%", 2.0, "spread"),
    ("gateway_rss_growth_bytes_per_min", "Gateway RSS growth in hold (bytes/min)", "lower", "B", 262_144, "single"),
)
STATUS_RANK = {"PASS": 0, "PARTIAL": 1, "FAIL": 2, "ABORTED": 3}


def rank_test(a, b) -> float:
    """One-sided Mann-Whitney U test: the p-value of 'values in b tend to be larger than in a'.

    Normal approximation with average ranks for ties, the tie-corrected variance and a continuity correction."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n1, n2 = len(a), len(b)
    both = np.concatenate([a, b])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    avg_rank = upper - (counts - 1) / 2.0  # ranks 1..n, ties share their mean rank
    u_b = float(avg_rank[inverse[n1:]].sum()) - n2 * (n2 + 1) / 2.0
    n = n1 + n2
    var = n1 * n2 / 12.0 * ((n + 1) - float((counts ** 3 - counts).sum()) / (n * (n - 1)))
    if var <= 0:  # every value equal: no evidence either way
        return 1.0
    z = (u_b - n1 * n2 / 2.0 - 0.5) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _interval_values(m: dict, key: str) -> np.ndarray:
    """The per-interval values behind a 'spread' figure (steady state: hold intervals when there are enough)."""
    s = m["series"]
    hold = s.get("hold")

    def steady(y):
        y = np.asarray(y, dtype=float)
        if hold is not None and np.isfinite(y[hold]).sum() >= MIN_INTERVALS:
            y = y[hold]
        return y[np.isfinite(y)]

    kind, _, pct = key.rpartition("_")[0].partition("_")
    if kind == "latency" and "latency" in s:
        return steady(s["latency"][pct])
    if kind == "connect" and "connect" in s:  # connects happen in the ramp: every interval that had any
        y = s["connect"][pct]
        return y[np.isfinite(y)]
    if key == "throughput_per_s" and "msgs_received" in s and hold is not None:
        idx = np.flatnonzero(hold)[1:-1]  # the first and last hold intervals are partial
        y = s["msgs_received"][idx]
        return y[np.isfinite(y)]
    if key == "gateway_cpu_percent" and s.get("cpu_by_node"):
        worst = np.vstack(list(s["cpu_by_node"].values()))
        ok = np.isfinite(worst).any(0)
        y = np.full(worst.shape[1], np.nan)
        y[ok] = np.nanmax(worst[:, ok], 0)
        return steady(y)
    return np.array([])


def judge(key: str, a, b, better, floor: float, tolerance: float, how=None, xa=None, xb=None,
          confidence: float = DEFAULT_CONFIDENCE) -> dict:
    row = {"name": key, "a": a, "b": b, "change": None, "regression": False, "note": "", "judged_by": how}
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
    if better is None:
        return row
    worse = b - a if better == "lower" else a - b
    beyond_tolerance = worse > floor and worse > tolerance * abs(a)
    if how == "single":
        row["note"] = "not judged: one value per run, no spread to judge a change against"
        return row
    if how != "spread":
        row["regression"] = beyond_tolerance
        return row
    xa, xb = np.asarray(xa if xa is not None else [], dtype=float), np.asarray(xb if xb is not None else [], dtype=float)
    row.update({"n_a": len(xa), "n_b": len(xb)})
    if min(len(xa), len(xb)) < MIN_INTERVALS:
        row["note"] = f"not judged: {len(xa)} / {len(xb)} intervals (a rank test needs {MIN_INTERVALS} in each)"
        return row
    row.update({"median_a": float(np.median(xa)), "median_b": float(np.median(xb))})
    if better == "higher":  # worse = lower: test the mirrored values
        xa, xb = -xa, -xb
    p = rank_test(xa, xb)
    shift = float(np.median(np.subtract.outer(xb, xa)))  # Hodges-Lehmann: how much worse a typical interval is
    spread = max(_iqr(xa), _iqr(xb))
    row.update({"shift": shift, "spread": spread, "p": p, "confidence": 1.0 - p, "confidence_text": _confidence(p)})
    significant = p < 1.0 - confidence
    row["regression"] = significant and shift > max(floor, spread) and beyond_tolerance
    if not row["regression"] and worse > 0:
        row["note"] = ("within the run-to-run noise" if not significant else
                       f"a typical interval is worse by {shift:.3g}, within the intervals' spread {spread:.3g}"
                       if shift <= spread else
                       f"a typical interval is worse by {shift:.3g}, under the floor {floor:g}" if shift <= floor else
                       "within tolerance")
    return row


def _number(value, what: str, lo: float, hi: float, example: str) -> float:
    """A command-line number in [lo, hi), or one line saying what is wrong."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not lo <= v < hi:
        bound = f"at least {lo:g}" + ("" if hi == math.inf else f" and below {hi:g}")
        raise UsageError(f"{what} {value!r} must be a number {bound}, e.g. {example}")
    return v


def _iqr(x: np.ndarray) -> float:
    q75, q25 = np.percentile(x, [75, 25])
    return float(q75 - q25)


def _planned_start(m: dict) -> float:
    """Where a run's planned start sits on its own chart axis (0 when the run did not record one)."""
    return next((sp["from"] for sp in m["series"].get("phase_spans", []) if sp["phase"] == "start"), 0.0)


def _aligned(xa, ya, xb, yb) -> np.ndarray:
    """Run B's series on run A's time axis (xb already moved so both count from their planned start)."""
    ok = np.isfinite(yb)
    if not ok.any():
        return np.full(len(xa), np.nan)
    out = np.interp(xa, xb[ok], yb[ok], left=np.nan, right=np.nan)
    return out


def compare(run_a: str, run_b: str, out_path: str | None = None, tolerance: float | str = 0.10,
            confidence: float | str = DEFAULT_CONFIDENCE) -> dict:
    from loadgen.report.html import template

    tolerance = _number(tolerance, "tolerance", 0.0, math.inf, "0.10")
    confidence = _number(confidence, "confidence", 0.5, 1.0, "0.999")
    ma, mb = analyze_run(run_a), analyze_run(run_b)
    sa, sb = ma["summary"], mb["summary"]
    ca, cb = sa.get("capacity"), sb.get("capacity")
    if bool(ca) != bool(cb):
        raise UsageError("compare a capacity search with a capacity search (one of the runs is not `fab capacity`)")
    rows = []
    figures = FIGURES
    if ca:  # two capacity searches: the knee is the figure (the whole runs' seconds ran different loads)
        if ca["dimension"] != cb["dimension"]:
            raise UsageError(f"the capacity searches stepped different dimensions: {ca['dimension']} vs {cb['dimension']}")
        row = judge("capacity_knee", ca["knee"], cb["knee"], "higher", 0.0, tolerance)
        if ca["knee"] is not None and cb["knee"] is None and cb["first_bad"] is not None:
            row.update(regression=True, change=-100.0, change_unit="%")  # the candidate's first step failed already
        row.update({"label": f"Capacity knee ({ca['unit']})", "better": "higher", "unit": "", "floor": 0.0,
                    "note": row["note"] or f"cause A: {(ca.get('cause') or {}).get('kind', '-')}, "
                                           f"B: {(cb.get('cause') or {}).get('kind', '-')}"})
        rows.append(row)
        figures = ()
    for key, label, better, unit, floor, how in figures:
        xa, xb = (_interval_values(ma, key), _interval_values(mb, key)) if how == "spread" else (None, None)
        row = judge(key, sa["figures"].get(key), sb["figures"].get(key), better, floor, tolerance, how, xa, xb, confidence)
        row.update({"label": label, "better": better, "unit": unit, "floor": floor})
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
    # B's chart axis moved so that both runs' planned starts coincide (each axis begins at its first probe sample)
    xa, xb = ma["series"]["x"], mb["series"]["x"] - _planned_start(mb) + _planned_start(ma)
    for title, get, unit in (("Message latency P50 per interval", lambda m: m["series"].get("latency", {}).get("p50"), "ms"),
                             ("Message latency P99 per interval", lambda m: m["series"].get("latency", {}).get("p99"), "ms"),
                             ("Messages received per second", lambda m: m["series"].get("msgs_received"), "/s"),
                             ("Active connections", lambda m: m["series"].get("active_total"), "")):
        ya, yb = get(ma), get(mb)
        if ya is not None and yb is not None:
            chart = svg.line_chart(title + " (A baseline, B candidate)", xa,
                                   {"A (baseline)": ya, "B (candidate)": _aligned(xa, ya, xb, yb)}, unit)
            if chart:
                charts.append(Markup(chart))
    out_path = out_path or os.path.join(run_b, f"compare-{os.path.basename(os.path.normpath(run_a))}.html")
    result = {"run_a": os.path.abspath(run_a), "run_b": os.path.abspath(run_b), "tolerance": tolerance,
              "confidence": confidence, "min_intervals": MIN_INTERVALS,
              "status_a": sa["status"], "status_b": sb["status"], "run_id_a": sa["run_id"], "run_id_b": sb["run_id"],
              "regressions": regressions, "figures": rows, "warnings": warnings, "report": os.path.abspath(out_path)}
    html = template("compare.html.j2").render(r=result, charts=charts)
    tmp = out_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(html)
    os.replace(tmp, out_path)
    write_json(result, os.path.splitext(out_path)[0] + ".json")
    return result


def _fmt(v, unit: str, better) -> str:
    if v is None:
        return "-"
    if better == "rate":
        return f"{v * 100:.2f}%"
    return f"{v:,.4g}" + (f" {unit}" if unit not in ("", "%") else unit)


def _confidence(p: float) -> str:
    c = (1.0 - p) * 100
    return ">99.99%" if c > 99.99 else f"{c:.2f}%"


def format_comparison(r: dict) -> str:
    """What `fab compare` prints: the verdict, each regression with its figures and confidence, the page."""
    lines = [f"compare: candidate {r['run_id_b']} against baseline {r['run_id_a']}: "
             + (f"REGRESSION ({len(r['regressions'])})" if r["regressions"] else "no regression")]
    if "status" in r["regressions"]:
        lines.append(f"  verdict: {r['status_a']} -> {r['status_b']}")
    for f in r["figures"]:
        if not f["regression"]:
            continue
        change = f"{f['change']:+.3g} {f['change_unit']}" if f["change"] is not None else "new"
        line = f"  {f['label']}: {_fmt(f['a'], f['unit'], f['better'])} -> {_fmt(f['b'], f['unit'], f['better'])} ({change})"
        if f.get("p") is not None:
            line += (f"; per interval median {f['median_a']:,.4g} -> {f['median_b']:,.4g}, typical interval worse by "
                     f"{f['shift']:,.3g} (spread {f['spread']:,.3g}, floor {f['floor']:g}); rank test p={f['p']:.2g} "
                     f"over {f['n_a']} / {f['n_b']} intervals, confidence {f['confidence_text']}")
        else:
            line += f"; tolerance {r['tolerance'] * 100:.0f}%, floor {f['floor']:g}"
        lines.append(line)
    unjudged = [f["label"] for f in r["figures"] if f["note"].startswith("not judged")]
    if unjudged:
        lines.append(f"  not judged (too few intervals, or one value per run): {', '.join(unjudged)}")
    for w in r["warnings"]:
        lines.append(f"  warning: {w}")
    lines.append(f"judged at {r['confidence'] * 100:g}% confidence, tolerance {r['tolerance'] * 100:g}%; page: {r['report']}")
    return "\n".join(lines)
