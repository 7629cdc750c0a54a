"""Benchmark: build the report of 100 agents x 1 h of 1-second rows (goal: <= 60 s on a 2-core machine).

    .venv/bin/python bench/report_build.py [--agents 100] [--hours 1] [--workers 1] [--dir DIR]

Generates a synthetic run directory (tests/synthetic.py, pool mode: real encoded latency histograms of
1,000 samples each), then times `loadgen.report.build_report` on it and checks the merged latency count
against the known answer. Prints the figure; it is not a timed test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from synthetic import AgentSpec, make_pool, make_run  # noqa: E402

from hdrh.histogram import HdrHistogram  # noqa: E402
from loadgen.report import build_report  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=1, help="worker rows per agent per second")
    ap.add_argument("--dir", help="keep the generated run here (default: a temp dir, removed)")
    args = ap.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="report-bench-")
    run_dir = os.path.join(root, "bench-run")
    seconds = int(args.hours * 3600)
    ramp = max(1, seconds // 12)
    per_agent = 1000
    stages = (f"{ramp}s:{per_agent * args.agents}", f"{seconds - 2 * ramp}s:{per_agent * args.agents}", f"{ramp}s:0")
    t = time.perf_counter()
    pool = make_pool(np.random.default_rng(5), size=64, per_cell=1000)
    truth = make_run(run_dir, [AgentSpec(f"gen-{i:03d}", workers=args.workers) for i in range(args.agents)],
                     stages=stages, rate=1.0, pool=pool, scenario="cluster", gateways=tuple(f"gw{i}" for i in range(10)))
    gen_s = time.perf_counter() - t
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(run_dir) for f in fs)
    rows = args.agents * args.workers * seconds
    print(f"generated {args.agents} agents x {seconds} s x {args.workers} worker(s) = {rows:,} rows, "
          f"{size / 2**20:,.0f} MiB, in {gen_s:.1f} s")
    t = time.perf_counter()
    s = build_report(run_dir)
    build_s = time.perf_counter() - t
    expected = sum(HdrHistogram.decode(cell).get_total_count() * n for cell, n in truth.pool_counts)
    ok = s["latency_ms"]["count"] == expected
    print(f"report built in {build_s:.1f} s (analysis {s['analysis_seconds']:.1f} s; goal <= 60 s): status {s['status']}, "
          f"{s['latency_ms']['count']:,} latency samples merged ({'matches' if ok else 'DIFFERS FROM'} the known {expected:,}), "
          f"report.html {os.path.getsize(s['report']) / 2**20:.1f} MiB")
    if not args.dir:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
