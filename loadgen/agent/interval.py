"""One second of a worker's measurements: counters plus interval histograms -> one CSV row
(the schema: loadgen.results.columns)."""

from __future__ import annotations

from loadgen.results import bytype
from loadgen.results import histogram as hdr
from loadgen.results.columns import COUNTERS, FAIL_REASONS


class Interval:
    """Counters and histograms since the last flush. Attributes are the counter names."""

    __slots__ = COUNTERS + ("latency", "connect", "session", "login", "types", "by_type")

    def __init__(self, types: list[str] | None = None) -> None:
        """types: the traffic model's message type names (None: no per-type measurement)."""
        self.types = types
        self.reset()

    def reset(self) -> None:
        for name in COUNTERS:
            setattr(self, name, 0)
        self.latency = hdr.Recorder()  # counted per value, encoded as HdrHistogram at flush
        self.connect = hdr.Recorder()
        self.session = hdr.Recorder()
        self.by_type = [bytype.new_counts() for _ in self.types] if self.types else None
        self.login = hdr.Recorder()

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
        row["login_hdr"] = hdr.encode(self.login)
        row["by_type"] = bytype.encode(self.types, self.by_type) if self.types else ""
        return row
