"""Live figures over a sliding window, for --abort-on: one formula for `loadgen run` (its own merged totals) and
`fab cluster-test` (every agent's status.json summed: counts and histogram buckets add, percentiles never average).

A snapshot is cumulative since the start of the run: counters and the Prometheus-style cumulative buckets of the
latency and connect-time histograms (loadgen.results.histogram.PROMETHEUS_BOUNDS_S). A window's figures are the
difference of two snapshots; its percentiles are read from the difference of the buckets, interpolated inside the
bucket as Prometheus' histogram_quantile does (buckets 9 % wide).
"""

from __future__ import annotations

from collections import deque

from loadgen.results import histogram as hdr

SNAPSHOT_COUNTERS = ("connects_ok", "connects_failed", "msgs_sent", "msgs_errors", "msgs_send_failed")


def snapshot(totals) -> dict:
    """The agent's cumulative snapshot (it travels in status.json as `live`)."""
    c = totals.counts
    return {"connects_ok": c["connects_ok"],
            "connects_failed": sum(v for k, v in c.items() if k.startswith("fail_")),
            "msgs_sent": c["msgs_sent"], "msgs_errors": c["msgs_errors"], "msgs_send_failed": c["msgs_send_failed"],
            "latency": hdr.cumulative_counts(totals.latency)[0], "connect": hdr.cumulative_counts(totals.connect)[0]}


def merge(snapshots: list[dict]) -> dict | None:
    """The fleet's snapshot: every counter and every bucket summed."""
    snapshots = [s for s in snapshots if s]
    if not snapshots:
        return None
    out = {k: sum(s[k] for s in snapshots) for k in SNAPSHOT_COUNTERS}
    for h in ("latency", "connect"):
        out[h] = [sum(col) for col in zip(*(s[h] for s in snapshots))]
    return out


def quantile_ms(q: float, cumulative: list[int]) -> float | None:
    """histogram_quantile over cumulative counts at PROMETHEUS_BOUNDS_S; None for an empty window."""
    total = cumulative[-1] if cumulative else 0
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev = 0.0, 0
    for bound, count in zip(hdr.PROMETHEUS_BOUNDS_S, cumulative):
        if count >= rank:
            return 1000 * (prev_bound + (bound - prev_bound) * (rank - prev) / max(count - prev, 1))
        prev_bound, prev = bound, count
    return 1000 * prev_bound  # beyond the last bound (~3 min): its lower edge


def window_figures(old: dict, new: dict) -> dict:
    """The --abort-on metrics over the window between two cumulative snapshots (None: nothing to judge)."""
    d = {k: new[k] - old[k] for k in SNAPSHOT_COUNTERS}
    lat = [a - b for a, b in zip(new["latency"], old["latency"])]
    con = [a - b for a, b in zip(new["connect"], old["connect"])]
    attempts = d["connects_ok"] + d["connects_failed"]
    return {
        "connect_success": d["connects_ok"] / attempts if attempts else None,
        "message_success": 1 - (d["msgs_errors"] + d["msgs_send_failed"]) / d["msgs_sent"] if d["msgs_sent"] else None,
        "message_p50_ms": quantile_ms(0.50, lat), "message_p95_ms": quantile_ms(0.95, lat),
        "message_p99_ms": quantile_ms(0.99, lat),
        "connect_p95_ms": quantile_ms(0.95, con), "connect_p99_ms": quantile_ms(0.99, con),
    }


class AbortWatch:
    """Feed it the fleet's snapshot as time goes; it says which rule tripped first (after the grace period)."""

    def __init__(self, rules, grace_s: float, start_at: float) -> None:
        self.rules, self.grace_s, self.start_at = list(rules), grace_s, start_at
        longest = max((r.window_s for r in self.rules), default=0)
        self.history: deque[tuple[float, dict]] = deque()
        self.keep_s = longest + 5
        self.tripped: dict | None = None

    def feed(self, now: float, snap: dict | None) -> dict | None:
        if not self.rules or snap is None or self.tripped:
            return self.tripped
        self.history.append((now, snap))
        while len(self.history) > 2 and self.history[1][0] <= now - self.keep_s:
            self.history.popleft()
        if now - self.start_at < self.grace_s:
            return None
        for rule in self.rules:
            # the newest snapshot at least a window old; the window is never shorter than asked
            base = None
            for t, s in self.history:
                if t <= now - rule.window_s:
                    base = (t, s)
                else:
                    break
            if base is None:
                continue
            value = window_figures(base[1], snap)[rule.metric]
            if rule.trips(value):
                self.tripped = {"rule": rule.text, "metric": rule.metric, "op": rule.op,
                                "threshold": rule.threshold, "window_s": rule.window_s, "value": value,
                                "at": now, "elapsed_s": round(now - self.start_at, 1),
                                "text": f"ABORTED at t+{now - self.start_at:.0f}s: {rule.text} "
                                        f"(value {value:.4g} over {now - base[0]:.0f}s)"}
                return self.tripped
        return None
