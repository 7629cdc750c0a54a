"""The capacity section of a `fab capacity` run (its capacity.json, written by loadgen.capacity.run): the knee,
its cause, one table row per step and charts of the steps. summary.json carries the knee and the cause."""

from __future__ import annotations

import os

from markupsafe import Markup

from loadgen.report import svg
from loadgen.report.load import read_json

FILE_NAME = "capacity.json"


def read(run_dir: str, problems: list[str]) -> dict | None:
    data = read_json(os.path.join(run_dir, FILE_NAME), problems)
    return data if data is not None and isinstance(data.get("steps"), list) else None


def _max_over(res: dict, hosts, metric: str):
    values = [res.get(h, {}).get(metric) for h in hosts]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def step_rows(cap: dict, gateways: list[str], generators: list[str]) -> list[dict]:
    """One table row per step, in the order they ran."""
    out = []
    for s in cap["steps"]:
        res, conns, msgs = s.get("resources", {}), s["connections"], s["messages"]
        lag = max((v["end_ms"] for v in s.get("send_lag", {}).values() if v.get("end_ms") is not None), default=None)
        out.append({
            "index": s["index"], "phase": s["phase"], "load": s["load"], "target": s.get("fleet_connections"),
            "active_end": conns.get("active_end"), "connect_success": conns.get("success_rate"),
            "connect_failed": conns.get("failed"), "offered_per_s": s.get("offered_per_s"),
            "throughput_per_s": msgs.get("throughput_per_s"), "errors": msgs.get("errors"),
            "p50_ms": s["latency_ms"].get("p50"), "p99_ms": s["latency_ms"].get("p99"),
            "gateway_cpu_percent": _max_over(res, gateways, "gateway_cpu_percent"),
            "gateway_cpu_limit": _max_over(res, gateways, "gateway_cpu_limit"),
            "gateway_rss_bytes": _max_over(res, gateways, "max_gateway_rss_bytes"),
            "gateway_fds": _max_over(res, gateways, "max_gateway_fds"),
            "agent_cpu_percent": _max_over(res, generators, "agent_cpu_percent"),
            "send_lag_ms": lag, "passed": s["passed"],
            "failed": [r["name"] for r in s["criteria"] if r["passed"] is not True],
            "cause": (s.get("cause") or {}).get("text"),
        })
    return out


def section(cap: dict, gateways: list[str], generators: list[str]) -> dict:
    rows = step_rows(cap, gateways, generators)
    ordered = sorted(rows, key=lambda r: (r["load"], r["index"]))
    labels = [f"{r['load']:g}" for r in ordered]
    unit = cap.get("unit", "")

    def chart(title, series, u=""):
        return {"title": title, "svg": Markup(svg.steps_chart(title, labels, series, u) or "")}

    charts = [
        chart(f"Offered vs achieved throughput by load ({unit})",
              {"offered": [r["offered_per_s"] for r in ordered], "achieved": [r["throughput_per_s"] for r in ordered]}, "/s"),
        chart("Message latency by load (step's own window, merged histograms)",
              {"P50": [r["p50_ms"] for r in ordered], "P99": [r["p99_ms"] for r in ordered]}, "ms"),
        chart("Connections: target and held at the step's end",
              {"target": [r["target"] for r in ordered], "held": [r["active_end"] for r in ordered]}),
        chart("Connect success and errors by load",
              {"connect success %": [None if r["connect_success"] is None else 100 * r["connect_success"] for r in ordered],
               "connects failed": [r["connect_failed"] for r in ordered], "message errors": [r["errors"] for r in ordered]}),
        chart("Gateway and generator CPU by load (% of one core)",
              {"gateway": [r["gateway_cpu_percent"] for r in ordered], "gateway may use":
               [None if r["gateway_cpu_limit"] is None else 100 * min(1.0, r["gateway_cpu_limit"]) for r in ordered],
               "agent (max)": [r["agent_cpu_percent"] for r in ordered]}, "%"),
    ]
    return {"rows": rows, "charts": [c for c in charts if c["svg"]]}


def summary_of(cap: dict) -> dict:
    """What summary.json carries: the knee, the first failing load with its failing criteria, the cause."""
    return {k: cap.get(k) for k in ("dimension", "unit", "knee", "first_bad", "resolution", "knee_figures", "failing",
                                    "cause", "gateway_capacity", "status", "partial_reasons", "text")} | \
        {"steps": len(cap["steps"]), "plan": cap.get("plan")}
