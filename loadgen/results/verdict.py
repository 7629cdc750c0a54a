"""Criteria rows -> PASS / FAIL / PARTIAL -> exit code: one rule for the agent and the report.

A criterion that could not be measured never counts as a pass: the run is PARTIAL at best.
"""

from __future__ import annotations

from loadgen.errors import EXIT_CRITERIA, EXIT_FAILURE, EXIT_OK

# PARTIAL exits 1, as "other failure": the run did not prove what it was asked to (the same for `loadgen run`,
# `fab cluster-test` and `python -m loadgen.report`)
EXIT_CODES = {"PASS": EXIT_OK, "FAIL": EXIT_CRITERIA, "PARTIAL": EXIT_FAILURE, "ABORTED": EXIT_CRITERIA}


def evaluate(criteria, metrics: dict) -> list[dict]:
    """One row per criterion for summary.json: passed is True, False or None (not measured)."""
    return [c.as_dict(metrics.get(c.name)) for c in criteria]


def verdict(rows: list[dict], problems: list[str], aborted: dict | None = None) -> tuple[str, list[str]]:
    """ABORTED when an --abort-on threshold stopped the run (exit 99, as a failed criterion); else FAIL when a
    measured criterion failed (even if the run is also partial); else PARTIAL when the run had problems or a
    criterion was not measured; else PASS. Returns the status and why it is PARTIAL."""
    reasons = list(problems)
    if aborted:
        return "ABORTED", reasons
    unmeasured = [r["label"] for r in rows if r["passed"] is None]
    if not rows:
        reasons.append("no success criterion to check")
    elif len(unmeasured) == len(rows):
        reasons.append("no success criterion could be measured")
    elif unmeasured:
        reasons.append("not measured: " + ", ".join(unmeasured))
    if any(r["passed"] is False for r in rows):
        return "FAIL", reasons
    return ("PARTIAL" if reasons else "PASS"), reasons


def criteria_passed(rows: list[dict]) -> bool:
    """No measured criterion failed (the report's criteria_passed)."""
    return all(r["passed"] is not False for r in rows)
