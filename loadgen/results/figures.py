"""Counters and merged histograms -> the summary's sections and the criteria's metrics.

The agent (its own rows) and the report (every agent's rows) both build their summary.json with these,
so the same rows give the same figures wherever they are summarized.
"""

from __future__ import annotations

from loadgen.results.columns import FAIL_REASONS


def connection_figures(counts: dict) -> dict:
    """The summary's "connections" section (without peak_active, which depends on how rows are binned)."""
    failed = sum(counts[f"fail_{r}"] for r in FAIL_REASONS)
    attempted = counts["connects_ok"] + failed
    return {"attempted": attempted, "established": counts["connects_ok"], "failed": failed,
            "success_rate": counts["connects_ok"] / attempted if attempted else None,
            "failed_by_reason": {r: counts[f"fail_{r}"] for r in FAIL_REASONS if counts[f"fail_{r}"]},
            "disconnects": counts["disconnects"]}


def throughput_per_s(hold_by_worker, received: int, seconds: float) -> float:
    """Messages received per hold second: per worker, the mean of its hold rows (its first hold second, the
    warm-up, excluded when it has more), summed over workers; without a hold, received / seconds of rows.
    hold_by_worker: per worker, (msgs_received of its first hold row, of its later hold rows, their number)."""
    rates = [later / n if n else float(first) for first, later, n in hold_by_worker]
    if rates:
        return float(sum(rates))
    return received / max(1.0, seconds)


def message_figures(counts: dict, throughput: float | None, owed: int | None = None) -> dict:
    """The summary's "messages" section. Offered = sent + sends that found their user disconnected.
    owed: under a traffic model, the deliveries the sends called for (a group message owes one per member
    addressed, loadgen.results.bytype); without one, every message sent owes one delivery."""
    deliveries = counts["msgs_sent"] if owed is None else owed
    offered = deliveries + counts["msgs_send_failed"]
    out = {"sent": counts["msgs_sent"], "received": counts["msgs_received"], "acked": counts["msgs_acked"],
           "errors": counts["msgs_errors"] + counts["msgs_send_failed"], "error_frames": counts["msgs_errors"],
           "send_failed": counts["msgs_send_failed"], "skipped": counts["msgs_skipped"],
           "lost": max(0, deliveries - counts["msgs_received"] - counts["msgs_errors"]),
           "success_rate": counts["msgs_received"] / offered if offered else None,
           "throughput_per_s": throughput if counts["msgs_sent"] else None}
    if owed is not None:
        out["owed"] = owed
    return out


def session_seconds(session_ms: dict) -> dict:
    """Session durations in seconds (histograms count them in microseconds, percentiles_ms gives ms)."""
    return {k: (v / 1000 if isinstance(v, float) else v) for k, v in session_ms.items()}


def criteria_metrics(connections: dict, messages: dict, connect_ms: dict, latency_ms: dict, session_ms: dict,
                     gateway: dict) -> dict:
    """The flat metrics the criteria are checked against (loadgen.plan.criteria names)."""
    return {
        "connection_success_rate": connections["success_rate"],
        "connect_p95_ms": connect_ms["p95"],
        "message_p99_ms": latency_ms["p99"],
        "message_success_rate": messages["success_rate"],
        "session_p95_s": session_ms["p95"] / 1000 if session_ms["p95"] is not None else None,
        "throughput_per_s": messages["throughput_per_s"],
        **{k: v for k, v in gateway.items() if k != "gateway_nodes_sampled"},
    }
