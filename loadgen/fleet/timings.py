"""What a `fab cluster-test` costs the controller, for run.json's `timings` (bench/ reads them):

dispatch_s       fab's start -> every agent launched (connect, preflight, probes, the dispatch round trips)
launch_s         the dispatch round trips alone
lead_s, lead_rule   the start lead given (planned start - dispatch's start) and how it was chosen (fleet/lead.py)
start_lead_s     planned start - every agent launched (the margin the lockstep start had left)
watch_s, watch_cpu_s, watch_cpu_percent, watch_cpu_per_host_s (CPU seconds per host per second of watch),
peak_rss_mb      the controller process over the watch (all its threads)
collect_s, report_s
start_skew_max_ms, start_skew_p99_ms   |actual - planned start| over every worker of every agent
"""

from __future__ import annotations

import json
import math
import os
import resource
import time

import psutil


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def skew_figures(skews_ms: list[float]) -> dict:
    """Max and p99 (nearest rank) of |start skew| over every agent worker."""
    values = sorted(abs(float(v)) for v in skews_ms)
    if not values:
        return {"start_skew_max_ms": None, "start_skew_p99_ms": None, "start_skew_workers": 0}
    p99 = values[max(0, math.ceil(0.99 * len(values)) - 1)]
    return {"start_skew_max_ms": round(values[-1], 3), "start_skew_p99_ms": round(p99, 3),
            "start_skew_workers": len(values)}


def agent_skews(run_dir: str) -> list[float]:
    """Every worker's start_skew_ms from the collected agents' summary.json."""
    out = []
    agents = os.path.join(run_dir, "agents")
    for name in sorted(os.listdir(agents)) if os.path.isdir(agents) else []:
        try:
            with open(os.path.join(agents, name, "summary.json")) as f:
                skews = json.load(f).get("start_skew_ms") or {}
        except (OSError, ValueError):
            continue
        out += [v for v in skews.values() if isinstance(v, (int, float))]
    return out


class Timings:
    def __init__(self) -> None:
        self.fab_started = psutil.Process().create_time()
        self.marks: dict[str, float] = {}
        self.figures: dict = {}
        self._watch = None

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()
        if name == "agents_launched":
            self.figures["dispatch_s"] = round(self.marks[name] - self.fab_started, 3)
            self.figures["launch_s"] = round(self.marks[name] - self.marks.get("dispatch_started", self.marks[name]), 3)

    def lead(self, lead_s: float, rule: str) -> None:
        self.figures.update(lead_s=round(lead_s, 3), lead_rule=rule)

    def start_lead(self, start_at: float) -> None:
        self.figures["start_lead_s"] = round(start_at - self.marks.get("agents_launched", time.time()), 3)

    def watch_begins(self) -> None:
        self._watch = (time.time(), _cpu_s())

    def watch_ends(self, hosts: int, stream_lines: int) -> None:
        if self._watch is None:
            return
        t0, cpu0 = self._watch
        took, cpu = max(time.time() - t0, 1e-9), _cpu_s() - cpu0
        self.figures.update(
            watch_s=round(took, 3), watch_cpu_s=round(cpu, 3), watch_cpu_percent=round(100 * cpu / took, 2),
            watch_cpu_per_host_s=round(cpu / took / max(hosts, 1), 6), watch_hosts=hosts,
            watch_stream_lines=stream_lines,
            peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
        self._watch = None

    def took(self, name: str, since: float) -> None:
        self.figures[name] = round(time.time() - since, 3)

    def line(self) -> str:
        f = self.figures

        def g(key, unit="s", fmt="{:.1f}"):
            return "-" if f.get(key) is None else fmt.format(f[key]) + unit

        return (f"timings: dispatch {g('dispatch_s')} (launch {g('launch_s')}, lead {g('lead_s')}, lead left {g('start_lead_s')}) | "
                f"watch {g('watch_s')} at {g('watch_cpu_percent', '%')} CPU, "
                f"{g('watch_cpu_per_host_s', ' CPU-s/host/s', '{:.5f}')}, peak RSS {g('peak_rss_mb', ' MB', '{:.0f}')} | "
                f"collect {g('collect_s')} | report {g('report_s')} | start skew max {g('start_skew_max_ms', ' ms')} "
                f"p99 {g('start_skew_p99_ms', ' ms')}")
