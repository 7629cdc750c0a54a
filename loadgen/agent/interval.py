"""One second of a worker's measurements: counters plus interval histograms -> one CSV row.

This module is the CSV schema (docs/data-format.md): COLUMNS is the column order of
timeseries.csv, and the report reads these names.
"""

from __future__ import annotations

from loadgen.agent import histogram as hdr

FAIL_REASONS = ("refused", "timeout", "auth", "rejected", "reset", "no_ports", "fd_limit", "other")
COUNTERS = (
    "connects_ok", *(f"fail_{r}" for r in FAIL_REASONS),
    "disconnects", "disc_by_gateway", "disc_lost", "closes",
    "msgs_sent", "msgs_received", "msgs_acked", "msgs_errors", "msgs_send_failed", "msgs_skipped",
    "bytes_sent", "bytes_received", "pings", "pongs",
)
HISTOGRAMS = ("latency_hdr", "connect_hdr", "session_hdr")
COLUMNS = ("ts", "agent", "worker", "elapsed_s", "phase", "target", "active", "connecting",
           "connects_failed", *COUNTERS, *HISTOGRAMS)


class Interval:
    """Counters and histograms since the last flush. Attributes are the counter names."""

    __slots__ = COUNTERS + ("latency", "connect", "session")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        for name in COUNTERS:
            setattr(self, name, 0)
        self.latency = hdr.Recorder()  # counted per value, encoded as HdrHistogram at flush
        self.connect = hdr.Recorder()
        self.session = hdr.Recorder()

    def fail(self, reason: str) -> None:
        name = "fail_" + (reason if reason in FAIL_REASONS else "other")
        setattr(self, name, getattr(self, name) + 1)

    def row(self, **fixed) -> dict:
        row = dict(fixed)
        for name in COUNTERS:
            row[name] = getattr(self, name)
        row["connects_failed"] = sum(getattr(self, "fail_" + r) for r in FAIL_REASONS)
        row["latency_hdr"] = hdr.encode(self.latency)
        row["connect_hdr"] = hdr.encode(self.connect)
        row["session_hdr"] = hdr.encode(self.session)
        return row
