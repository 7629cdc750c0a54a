"""Routing latency per gateway node pair: the agent side file `pairs.csv` and its reader.

With `--pairing cross-node` every message goes from the sender's gateway node to the recipient's
node, and the agent knows both: slot s and its partner s ^ 1 sit on the endpoints `node_index` gives.
A worker keeps one small HdrHistogram per (sender node, recipient node) and writes, each second, a
row per pair that received messages:

    ts,agent,worker,src,dst,msgs_received,latency_hdr

src/dst are gateway endpoints (host:port, as in plan.json's "endpoints"); latency_hdr is the
interval's latency (receive time - scheduled send time, microseconds) as HdrHistogram's compressed
base64, at 2 significant digits (1 %, 20 KB per pair in memory: a fleet of 100 nodes has 200
neighbour pairs). `pair_summary(run_dir)` merges every agent's pairs.csv into one row per pair.
"""

from __future__ import annotations

import csv
import glob
import json
import os

from hdrh.histogram import HdrHistogram

from loadgen.results.histogram import merge_encoded

COLUMNS = ("ts", "agent", "worker", "src", "dst", "msgs_received", "latency_hdr")
LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS = 1, 60_000_000, 2


def node_index(pairing: str, slot: int, worker_index: int, n_endpoints: int) -> int:
    """The endpoint a slot connects to: partners (s, s ^ 1) on neighbouring nodes when routing crosses
    nodes, on one node otherwise. The agent's Worker.url uses the same formula."""
    return (slot + worker_index if pairing == "cross-node" else slot // 2 + worker_index) % n_endpoints


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


class PairLatency:
    """One worker's per-pair interval histograms (created on first use)."""

    def __init__(self, endpoints: list[tuple[str, int]], pairing: str, worker_index: int) -> None:
        self.labels = [f"{host}:{port}" for host, port in endpoints]
        self.pairing = pairing
        self.index = worker_index
        self.hists: dict[tuple[int, int], HdrHistogram] = {}

    def record(self, slot: int, latency_us: int) -> None:
        """A message received by `slot` (sent by its partner slot ^ 1)."""
        n = len(self.labels)
        key = (node_index(self.pairing, slot ^ 1, self.index, n), node_index(self.pairing, slot, self.index, n))
        hist = self.hists.get(key)
        if hist is None:
            hist = self.hists[key] = new_histogram()
        hist.record_value(min(max(latency_us, LOWEST_US), HIGHEST_US))

    def rows(self, **fixed) -> list[dict]:
        """Rows for the interval (pairs that received messages), then a fresh interval."""
        out = []
        for (src, dst), hist in sorted(self.hists.items()):
            count = hist.get_total_count()
            if count:
                out.append({**fixed, "src": self.labels[src], "dst": self.labels[dst], "msgs_received": count,
                            "latency_hdr": hist.encode().decode("ascii")})
                hist.reset()
        return out


def pair_summary(run_dir: str) -> list[dict]:
    """Every agents/*/pairs.csv of a run merged per (src, dst): count and percentiles in ms, with the
    gateway names from plan.json when it lists them. Empty when no agent wrote the file."""
    names = {}
    try:
        with open(os.path.join(run_dir, "plan.json")) as f:
            plan = json.load(f)
        gateways = plan.get("gateways") or plan.get("groups", {}).get("gateways") or []
        names = dict(zip(plan.get("endpoints") or [], gateways))
    except (OSError, ValueError):
        pass
    merged: dict[tuple[str, str], HdrHistogram] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "agents", "*", "pairs.csv"))):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("latency_hdr"):
                    key = (row["src"], row["dst"])
                    hist = merged.get(key)
                    if hist is None:
                        hist = merged[key] = new_histogram()
                    merge_encoded(hist, row["latency_hdr"])
    out = []
    for (src, dst), hist in sorted(merged.items()):
        out.append({"src": src, "dst": dst, "src_gateway": names.get(src, src), "dst_gateway": names.get(dst, dst),
                    "count": hist.get_total_count(),
                    **{f"p{p}_ms": hist.get_value_at_percentile(p) / 1000.0 for p in (50, 95, 99)},
                    "max_ms": hist.get_max_value() / 1000.0})
    return out
