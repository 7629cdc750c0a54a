"""Render the analysis into one self-contained HTML file (jinja2 template, inline CSS, SVG and script)."""

from __future__ import annotations

import datetime as dt
import math
import os

import jinja2
import numpy as np
from markupsafe import Markup

from loadgen.report import svg

def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(os.path.dirname(__file__), "templates")),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.globals.update(chart_left=svg.ML, chart_right=svg.MR)  # the hover readout maps mouse x to data x
    env.filters["num"] = lambda v, unit="": svg.fmt_value(v, unit) if isinstance(v, (int, float)) and v is not None else "-"
    env.filters["pct"] = lambda v, digits=2: "-" if v is None else f"{v * 100:.{digits}f}%"
    env.filters["ms"] = lambda v: "-" if v is None else f"{v:,.2f} ms"
    env.filters["int"] = lambda v: "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:,.0f}"
    env.filters["clock"] = lambda v: "-" if v is None else svg.fmt_clock(v)
    env.filters["when"] = lambda v: "-" if not v else dt.datetime.fromtimestamp(float(v), dt.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC")
    env.filters["crit"] = lambda v, name: "not measured" if v is None else (
        f"{v * 100:.2f}%" if name.endswith("_rate") else f"{v:,.4g}" if isinstance(v, float) else f"{v:,}")
    env.filters["g"] = lambda v: "-" if v is None else (f"{v:,.4g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v))
    return env


def template(name: str) -> jinja2.Template:
    return _env().get_template(name)


def _chart(title, x, series, unit="", spans=None, note=None):
    # memory charts zoom on their range (growth is the point); counts and rates start at zero
    return {"title": title, "svg": Markup(svg.line_chart(title, x, series, unit, spans, y_min0=unit != "B") or ""), "note": note}


def charts(m: dict) -> dict:
    s = m["series"]
    x, spans = s["x"], s.get("phase_spans")
    ts = []
    if "active_total" in s:
        ts.append(_chart("Active connections (all generators)", x, {"total": s["active_total"]}, "", spans))
        ts.append(_chart("Active connections per generator", x, svg.band(s["active_by_generator"]), "", spans))
    if "active_by_node" in s:
        ts.append(_chart("Active connections per gateway node", x, svg.band(s["active_by_node"]), "", spans,
                         f"source: {s['gateway_source']}"))
    elif ts:
        ts.append({"title": "Active connections per gateway node", "svg": Markup(""),
                   "note": "not collected (no probes/samples.csv gateway_active_connections and no gateway_metrics.csv)"})
    if "connects_ok" in s:
        fails = {k[5:]: s[k] for k in s if k.startswith("fail_") and np.nansum(s[k]) > 0}
        ts.append(_chart("Connects per second and failures by reason", x,
                         {"connects ok": s["connects_ok"], **{f"failed: {k}": v for k, v in fails.items()},
                          "disconnects": s["disconnects"]}, "/s", spans))
        msgs = {"sent": s["msgs_sent"], "received": s["msgs_received"]}
        for k, label in (("msgs_errors", "error frames"), ("msgs_send_failed", "send failed")):
            if np.nansum(s[k]) > 0:
                msgs[label] = s[k]
        ts.append(_chart("Messages per second", x, msgs, "/s", spans))
    if "latency" in s:
        lat = s["latency"]
        ts.append(_chart(f"Message latency per {s['bin_s']} s interval (merged histograms)", x,
                         {"P50": lat["p50"], "P95": lat["p95"], "P99": lat["p99"]}, "ms", spans))
    if s.get("by_type"):  # a traffic model's types (docs/traffic.md)
        ts.append(_chart("Messages sent per second by type", x, s["by_type"]["sent"], "/s", spans))
        ts.append(_chart(f"Message latency P99 by type per {s['bin_s']} s interval", x, s["by_type"]["p99"], "ms", spans))
    hosts = []
    for c in m["hosts"]["charts"]:
        hosts.append(_chart(c["title"], x, c["series"], c["unit"], spans, c.get("note")))
    for key, title, unit in (("rss_by_node", "Gateway RSS per node", "B"), ("cpu_by_node", "Gateway process CPU per node", "%"),
                             ("fds_by_node", "Gateway open file descriptors per node", "")):
        if s.get(key) and s.get("gateway_source") != "probes/samples.csv":  # else the host charts show them
            hosts.append(_chart(title, x, svg.band(s[key]), unit, spans, f"source: {s['gateway_source']}"))
    d = m["distribution"]
    dist = []
    if d["nodes"]:
        dist.append({"title": "Connections per gateway node", "note": f"{d['node_measure']}; source {d['node_source']}",
                     "svg": Markup(svg.bar_chart("Connections per gateway node", list(d["nodes"]), list(d["nodes"].values())) or "")})
    if d["generators"]:
        dist.append({"title": "Peak connections per generator", "note": None,
                     "svg": Markup(svg.bar_chart("Peak connections per generator", list(d["generators"]),
                                                 list(d["generators"].values())) or "")})
    return {"timeseries": [c for c in ts if c["svg"] or c["note"]], "hosts": [c for c in hosts if c["svg"]], "distribution": dist}


def render_report(m: dict, path: str) -> str:
    html = template("report.html.j2").render(m=m, s=m["summary"], charts=charts(m), fmt=svg.fmt_value)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(html)
    os.replace(tmp, path)
    return path
