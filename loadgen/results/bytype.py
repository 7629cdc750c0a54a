"""Per message type measurements (a traffic model's types, docs/traffic.md): the CSV cell, its merge, the figures.

A timeseries.csv row's `by_type` cell is compact JSON, one entry per type that saw anything in the interval:
    {"text": [sent, owed, received, acked, errors, "latency_hdr"], ...}
owed = deliveries the sends call for: 1 per message to a partner, the ack's n (other members addressed) per group
message, and 1 per refused send (its error frame). Every owed delivery is received, refused (errors) or lost:
    owed = received + errors + lost
Agent and report both merge and figure with this module.
"""

from __future__ import annotations

import json

from loadgen.results import histogram as hdr

SENT, OWED, RECEIVED, ACKED, ERRORS, LATENCY = range(6)
COUNTS = ("sent", "owed", "received", "acked", "errors")


def new_counts() -> list:
    """One type's interval counters and latency recorder (the agent's Interval keeps one per type)."""
    return [0, 0, 0, 0, 0, hdr.Recorder()]


def encode(names: list[str], per_type: list[list]) -> str:
    """The row's cell ('' when no type saw anything)."""
    out = {}
    for name, c in zip(names, per_type):
        if c[SENT] or c[OWED] or c[RECEIVED] or c[ACKED] or c[ERRORS]:
            out[name] = [c[SENT], c[OWED], c[RECEIVED], c[ACKED], c[ERRORS], hdr.encode(c[LATENCY])]
    return json.dumps(out, separators=(",", ":")) if out else ""


def decode(cell) -> dict:
    """{type: [sent, owed, received, acked, errors, latency_hdr]}; {} for an empty or damaged cell."""
    if not isinstance(cell, str) or not cell.startswith("{"):
        return {}
    try:
        data = json.loads(cell)
    except ValueError:
        return {}
    return {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 6} if isinstance(data, dict) else {}


class TypeTotals:
    """Every row's per-type counts and latency merged (histograms merged, never averaged)."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}
        self.latency: dict = {}

    def add(self, cell) -> None:
        for name, v in decode(cell).items():
            c = self.counts.setdefault(name, [0] * len(COUNTS))
            for i in range(len(COUNTS)):
                c[i] += int(v[i])
            if v[LATENCY]:
                hist = self.latency.get(name)
                if hist is None:
                    hist = self.latency[name] = hdr.new_histogram()
                hdr.merge_encoded(hist, v[LATENCY])

    def __bool__(self) -> bool:
        return bool(self.counts)

    def figures(self, order: list[str] | None = None, weights: dict | None = None) -> dict:
        """The summary's "by_type" section: per type the counts, lost, the fan-out (owed per accepted send),
        latency percentiles (ms), and the offered (model weight) and achieved share of messages sent."""
        names = list(order or []) + sorted(n for n in self.counts if n not in (order or []))
        total_sent = sum(c[0] for c in self.counts.values())
        out = {}
        for name in names:
            c = self.counts.get(name)
            if c is None:
                continue
            f = dict(zip(COUNTS, c))
            f["lost"] = max(0, f["owed"] - f["received"] - f["errors"])
            accepted = f["sent"] - f["errors"] if f["sent"] > f["errors"] else 0
            f["fan_out"] = (f["owed"] - f["errors"]) / accepted if accepted else None
            f["success_rate"] = f["received"] / f["owed"] if f["owed"] else None
            f["share_achieved"] = f["sent"] / total_sent if total_sent else None
            f["share_offered"] = (weights or {}).get(name)
            hist = self.latency.get(name)
            f["latency_ms"] = hdr.percentiles_ms(hist) if hist is not None else hdr.percentiles_ms(hdr.new_histogram())
            out[name] = f
        return out

    def release(self) -> None:
        for h in self.latency.values():
            hdr.release(h)


def criteria_metrics(by_type: dict) -> dict:
    """Per-type metrics for criteria that name a type: 'message_p99_ms{type=group}'."""
    out = {}
    for name, f in by_type.items():
        out[f"message_p99_ms{{type={name}}}"] = f["latency_ms"]["p99"]
        out[f"message_success_rate{{type={name}}}"] = f["success_rate"]
    return out
