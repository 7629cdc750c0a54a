#!/usr/bin/env python3
"""The traffic model's cost to the agent (issue 15), side by side in one run:

    .venv/bin/python bench/traffic_bench.py [--vus 1000] [--rate 2] [--seconds 20] [--repeat 3]

cpu     agent CPU (all its processes, user + system) per 1,000 messages under `chat-mix` vs the `constant` model,
        the same users and rate against a fresh reference gateway each, over the steady hold (its first and last
        2 s left out: start-up and connecting are not per-message work): per 1,000 messages sent, and per 1,000
        messages handled (sent + received: chat-mix's group fan-out makes the agent receive more than it sends).
        Goal: chat-mix within 1.3x of constant.
memory  agent RSS and PSS per connection holding --idle-vus connections at a low rate under chat-mix (20 % of users
        in groups) vs constant.

The gateway and the agent share the machine (the gateway is not pinned, nor is the agent); the machine's load
average is printed with the figures. Every load is bounded in count and time, on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_bench import Sampler, free_port, memory, tree  # noqa: E402 - the same measuring code as run_bench

BIN = os.path.dirname(sys.executable)
TOKEN = "bench-token"


class Gateway:
    def __init__(self, tmp: str) -> None:
        self.port, mport = free_port(), free_port()
        self.log = open(os.path.join(tmp, f"gateway-{self.port}.log"), "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "loadgen", "gateway", "--port", str(self.port),
                                      "--metrics-port", str(mport)], env={**os.environ, "AUTH_TOKEN": TOKEN},
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("gateway did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def agent(tmp: str, gw: Gateway, model: str, vus: int, rate: float, seconds: int, on_hold=None) -> dict:
    out = os.path.join(tmp, f"{model}-{time.monotonic_ns()}")
    args = [os.path.join(BIN, "loadgen"), "run", "throughput", "--vus", str(vus), "--rate", str(rate),
            "--duration", f"{seconds}s", "--workers", "1", "--traffic", model, "--out", out, "--quiet",
            "-e", f"GATEWAY_PORT={gw.port}", "--criterion", "gateway_cpu_percent=off",
            "--criterion", "gateway_rss_growth_bytes_per_min=off"]
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_HOST", "GATEWAY_PORT", "MESSAGE_SIZE")}
    epoch_minus_mono = time.time() - time.monotonic_ns() / 1e9  # the CSV's ts is epoch, the sampler's monotonic
    proc = subprocess.Popen(args, env={**env, "AUTH_TOKEN": TOKEN}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = Sampler(proc.pid)
    mem = None
    try:
        if on_hold is not None:
            time.sleep(seconds * 0.6 + 2)  # into the hold: every connection open
            mem = memory(proc.pid)
        proc.communicate(timeout=seconds + 120)
    except subprocess.TimeoutExpired:
        for p in reversed(tree(proc.pid)):
            p.kill()
        proc.communicate()
    sampler.stop()
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    m = s["messages"]
    # the steady window: hold rows (each counts the second before its ts), less the first and last 2 s
    with open(os.path.join(out, "timeseries.csv"), newline="") as f:
        hold = [r for r in csv.DictReader(f) if r["phase"] == "hold"]
    begin = min(float(r["ts"]) for r in hold) + 2
    end = max(float(r["ts"]) for r in hold) - 2
    window = [r for r in hold if begin < float(r["ts"]) <= end]
    sent = sum(int(r["msgs_sent"]) for r in window)
    handled = sent + sum(int(r["msgs_received"]) for r in window)
    cpu = sampler.cpu_at(int((end - epoch_minus_mono) * 1e9)) - sampler.cpu_at(int((begin - epoch_minus_mono) * 1e9))
    return {"cpu_s": cpu, "sent": m["sent"], "received": m["received"], "lost": m["lost"],
            "established": s["connections"]["established"], "mem": mem, "window_s": end - begin,
            "cpu_ms_per_1k_sent": cpu * 1e6 / sent if sent else None,
            "cpu_ms_per_1k_handled": cpu * 1e6 / handled if handled else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vus", type=int, default=1000)
    p.add_argument("--rate", type=float, default=2.0)
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--idle-vus", type=int, default=5000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", help="write the figures here too")
    a = p.parse_args()
    results: dict = {"load_before": os.getloadavg(), "cpu": {"constant": [], "chat-mix": []},
                     "memory": {"constant": [], "chat-mix": []}}
    with tempfile.TemporaryDirectory(prefix="traffic-bench-") as tmp:
        for _ in range(a.repeat):
            for model in ("constant", "chat-mix"):  # alternated, so a change of machine load hits both
                gw = Gateway(tmp)
                try:
                    results["cpu"][model].append(agent(tmp, gw, model, a.vus, a.rate, a.seconds))
                finally:
                    gw.stop()
        for model in ("constant", "chat-mix"):
            gw = Gateway(tmp)
            try:
                r = agent(tmp, gw, model, a.idle_vus, 0.05, 20, on_hold=True)
                rss, pss = r["mem"]
                results["memory"][model].append({"rss_per_conn": rss / a.idle_vus, "pss_per_conn": pss / a.idle_vus,
                                                 "established": r["established"]})
            finally:
                gw.stop()
    results["load_after"] = os.getloadavg()

    def med(model, key):
        return statistics.median(r[key] for r in results["cpu"][model])

    print(f"machine load average before {results['load_before'][0]:.2f}, after {results['load_after'][0]:.2f} "
          f"({os.cpu_count()} cores)")
    print(f"cpu: {a.vus} users x {a.rate:g} msg/s for {a.seconds} s, medians of {a.repeat}")
    for key in ("cpu_ms_per_1k_sent", "cpu_ms_per_1k_handled"):
        c, m = med("constant", key), med("chat-mix", key)
        print(f"  {key}: constant {c:.2f} ms, chat-mix {m:.2f} ms, ratio {m / c:.2f}x (goal <= 1.3x)")
    for model in ("constant", "chat-mix"):
        print(f"  {model}: sent {[r['sent'] for r in results['cpu'][model]]}, "
              f"received {[r['received'] for r in results['cpu'][model]]}, lost {[r['lost'] for r in results['cpu'][model]]}")
    for model in ("constant", "chat-mix"):
        r = results["memory"][model][0]
        print(f"memory {model}: {r['established']} connections, RSS {r['rss_per_conn']:,.0f} B, "
              f"PSS {r['pss_per_conn']:,.0f} B per connection")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
