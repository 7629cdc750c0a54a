"""The report: a run directory (docs/data-format.md) -> report.html + summary.json, and baseline comparison.

    build_report(run_dir) -> summary dict ("status": PASS|FAIL|PARTIAL, "passed", "report", ...)
    compare_runs(baseline, candidate, out_path=None, tolerance=0.10, confidence=0.999) -> {"regressions": [...], ...}
    format_verdict(summary), format_comparison(result) -> what `fab report` / `fab compare` print
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from loadgen.report.analysis import analyze
from loadgen.report.load import load_run

__all__ = ["analyze_run", "build_report", "compare_runs", "format_comparison", "format_verdict", "write_json"]


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def write_json(data: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_jsonable(data), f, indent=2)
    os.replace(tmp, path)


def analyze_run(run_dir: str) -> dict:
    """Everything the report shows, without writing anything (raises UsageError for a non-run dir)."""
    return analyze(load_run(run_dir))


def build_report(run_dir: str) -> dict:
    """Write run_dir/report.html and run_dir/summary.json; return the summary."""
    from loadgen.report.html import render_report

    m = analyze_run(run_dir)
    summary = m["summary"]
    summary["report"] = os.path.abspath(os.path.join(run_dir, "report.html"))
    summary["summary_json"] = os.path.abspath(os.path.join(run_dir, "summary.json"))
    render_report(m, summary["report"])
    write_json(summary, summary["summary_json"])
    return _jsonable(summary)


def compare_runs(run_a: str, run_b: str, out_path: str | None = None, tolerance: float = 0.10,
                 confidence: float | None = None) -> dict:
    """run_a is the baseline, run_b the candidate judged against it."""
    from loadgen.report.compare import DEFAULT_CONFIDENCE, compare

    return compare(run_a, run_b, out_path, tolerance, DEFAULT_CONFIDENCE if confidence is None else confidence)


def format_comparison(result: dict) -> str:
    from loadgen.report.compare import format_comparison as fmt

    return fmt(result)


def format_verdict(summary: dict) -> str:
    """The verdict, why (failed criteria, partial reasons) and the report's path: what `fab report` prints."""
    from loadgen.plan.criteria import criterion_line

    lines = [f"{summary['status']}: {summary['run_id']}"]
    if summary.get("aborted"):
        lines.append(f"  {summary['aborted']['text']}")
    cap = summary.get("capacity")
    if cap:  # a capacity search: its knee and cause, not the whole run's criteria
        lines.append(f"  {cap['text']}" + (f"; first failing load {cap['first_bad']:g}" if cap["first_bad"] is not None else ""))
        lines += [f"  {criterion_line(r)}" for r in cap["failing"] if r["passed"] is False]
        if cap.get("cause"):
            lines.append(f"  cause: {cap['cause']['text']}")
    else:
        lines += [f"  {criterion_line(r)}" for r in summary["criteria"] if r["passed"] is False]
    for why in summary["partial_reasons"]:
        lines.append(f"  partial: {why}")
    lines.append(f"report: {summary['report']}")
    return "\n".join(lines)
