"""The cost of one scrape of an agent's live /metrics (docs/live.md): render time on the agent's supervisor loop
and the size of the text, for histograms holding a run's worth of values. Not a test: prints figures.

    .venv/bin/python bench/live_metrics.py [--values 1000000] [--repeat 200]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from loadgen.agent.metrics_endpoint import render
from loadgen.agent.runner import Totals


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--values", type=int, default=1_000_000, help="latencies recorded (spread 0.1 ms - 2 s)")
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    totals = Totals()
    rnd = random.Random(1)
    for _ in range(args.values):
        totals.latency.record_value(int(rnd.lognormvariate(8, 1.5)) + 100)
    for _ in range(args.values // 50):
        totals.connect.record_value(int(rnd.lognormvariate(7, 1)) + 200)
    labels = {"run_id": "20261207-064716-cluster-4cea", "generator": "gen-001.loadtest.example.internal",
              "scenario": "cluster"}
    text = render(totals, 10_000, 0, 10_000, labels)
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        render(totals, 10_000, 0, 10_000, labels)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    load = os.getloadavg()
    print(f"render per scrape: median {statistics.median(times):.2f} ms, p90 {times[int(0.9 * len(times))]:.2f} ms, "
          f"min {times[0]:.2f} ms; {len(text):,} bytes; {args.values:,} latencies; "
          f"load average {load[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
