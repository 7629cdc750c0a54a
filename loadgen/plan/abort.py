"""`--abort-on EXPR` (repeatable) and `--abort-grace`: thresholds over a sliding window that stop a run early.

    connect_success<0.9 over 60s       message_p99_ms>1000 over 2m       message_success<0.99 over 30s

Parsed and checked here, once, where they enter (loadgen run's flags, fab cluster-test's options, plan.json);
evaluated live by loadgen.results.live on fleet-merged counters and histogram buckets, never on averages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from loadgen.errors import UsageError
from loadgen.plan.stages import parse_duration

# metric -> what it is (the window's figure)
METRICS = {
    "connect_success": "connections established / attempted in the window",
    "message_success": "1 - (error answers + failed writes) / messages sent in the window",
    "message_p50_ms": "P50 message latency in the window (ms)",
    "message_p95_ms": "P95 message latency in the window (ms)",
    "message_p99_ms": "P99 message latency in the window (ms)",
    "connect_p95_ms": "P95 connect time in the window (ms)",
    "connect_p99_ms": "P99 connect time in the window (ms)",
}
MAX_WINDOW_S = 3600.0
DEFAULT_GRACE_S = 30.0
_EXPR = re.compile(r"^\s*([a-z0-9_]+)\s*([<>])\s*([-+0-9.eE]+)\s+over\s+(\S+)\s*$")


@dataclass(frozen=True)
class AbortRule:
    metric: str
    op: str  # '<' or '>': the run aborts when the window's figure is on this side of the threshold
    threshold: float
    window_s: float

    @property
    def text(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g} over {self.window_s:g}s"

    def trips(self, value) -> bool:
        if value is None:  # nothing in the window to judge (no message, no connect): never a trip
            return False
        return value < self.threshold if self.op == "<" else value > self.threshold


def parse_abort(expr: str) -> AbortRule:
    m = _EXPR.match(str(expr))
    if not m:
        raise UsageError(f"--abort-on {expr!r} must be METRIC<VALUE over DURATION or METRIC>VALUE over DURATION, "
                         "e.g. 'connect_success<0.9 over 60s'")
    metric, op, number, window = m.groups()
    if metric not in METRICS:
        raise UsageError(f"--abort-on {expr!r}: unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    try:
        threshold = float(number)
    except ValueError:
        raise UsageError(f"--abort-on {expr!r}: {number!r} is not a number") from None
    window_s = parse_duration(window, "--abort-on window")
    if not 1 <= window_s <= MAX_WINDOW_S:
        raise UsageError(f"--abort-on {expr!r}: the window must be between 1s and {MAX_WINDOW_S:g}s")
    return AbortRule(metric, op, threshold, window_s)


def parse_grace(text) -> float:
    grace = parse_duration(text, "--abort-grace")
    if not 0 <= grace <= 24 * 3600:
        raise UsageError("--abort-grace must be between 0s and 24h")
    return grace


def rules_from_json(items) -> list[AbortRule]:
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise UsageError("plan: abort_on must be a list of 'METRIC<VALUE over DURATION' strings")
    return [parse_abort(i) for i in items]
