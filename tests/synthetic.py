"""Synthetic run directories with known answers (docs/data-format.md), for report tests and the bench.

`make_run(path, agents=[AgentSpec(...)], ...)` writes plan.json, run.json, agents/<host>/{timeseries.csv,
summary.json, status.json, agent.log, gateway_metrics.csv}, probes/samples.csv and probes/<host>/{before,after}/
and returns a `Truth` with what the report must find: every latency sample (exact mode) or the merged counts
(pool mode, for large runs), the counters, and which agents died.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from loadgen.results import histogram as hdr
from loadgen.results.columns import COLUMNS, FAIL_REASONS
from loadgen.plan import criteria as crit
from loadgen.plan.stages import Profile, parse_stage

START = 1_700_000_000.0


@dataclass
class AgentSpec:
    name: str
    latency_median_ms: float = 20.0
    latency_sigma: float = 0.4
    tail_share: float = 0.0  # share of messages in a slow tail ...
    tail_ms: float = 400.0  # ... around this latency
    workers: int = 2
    dead_at: float | None = None  # seconds after the start: rows stop, no summary.json, run.json says dead
    fail_per_s: dict = field(default_factory=dict)  # reason -> failed connects per ramp-up second per worker
    disconnect_at: float | None = None  # a burst of gateway disconnects at this second
    skew_ms: float = 5.0


@dataclass
class Truth:
    latency_us: np.ndarray | None  # every recorded latency sample (exact mode)
    pool_counts: list  # pool mode: (encoded cell, times used)
    counters: dict
    dead: list
    start_at: float
    hold: tuple


def _samples(rng, spec: AgentSpec, n: int) -> np.ndarray:
    lat = rng.lognormal(np.log(spec.latency_median_ms * 1000), spec.latency_sigma, n)
    if spec.tail_share:
        tail = rng.random(n) < spec.tail_share
        lat[tail] = rng.normal(spec.tail_ms * 1000, spec.tail_ms * 50, tail.sum())
    return np.clip(lat, 1, None).astype(np.int64)


def _encode(values_us) -> str:
    h = hdr.new_histogram()
    for v, c in zip(*np.unique(values_us, return_counts=True)):
        h.record_value(int(min(max(v, hdr.LOWEST_US), hdr.HIGHEST_US)), int(c))
    return hdr.encode(h)


def make_pool(rng, size: int = 48, per_cell: int = 400) -> list[str]:
    spec = AgentSpec("pool", latency_median_ms=25, latency_sigma=0.5, tail_share=0.01)
    return [_encode(_samples(rng, spec, per_cell)) for _ in range(size)]


def make_run(path: str, agents: list[AgentSpec], *, stages=("20s:120", "40s:120", "10s:0"), rate: float = 2.0,
             gateways=("gw1", "gw2"), mem_per_conn: float = 4096.0, leak_bytes_per_min: float = 0.0,
             gateway_cpu: float = 35.0, samples: bool = True, probes: bool = True, infra: bool = True,
             gateway_metrics: bool = False, pool: list[str] | None = None, seed: int = 7,
             scenario: str = "connection", run_id: str | None = None, criteria: list | None = None,
             unreachable: tuple = ()) -> Truth:
    rng = np.random.default_rng(seed)
    profile = Profile([parse_stage(s) for s in stages])
    duration = int(profile.total_s)
    os.makedirs(os.path.join(path, "agents"), exist_ok=True)
    hold_times = [t for t in range(1, duration + 1) if profile.phase_at(t - 0.5) == "hold"]
    hold = (START + hold_times[0], START + hold_times[-1]) if hold_times else (START, START)
    all_lat, pool_use = [], {}
    totals = {k: 0 for k in ("connects_ok", "failed", "msgs_sent", "msgs_received", "disconnects", "closes")}
    per_agent_share = Profile(profile.stages)
    n_agents = len(agents) + len(unreachable)
    active_total = np.zeros(duration + 1)
    for ai, spec in enumerate(agents):
        share = per_agent_share.share(ai, n_agents)
        adir = os.path.join(path, "agents", spec.name)
        os.makedirs(adir, exist_ok=True)
        frames = []
        for w in range(spec.workers):
            wprof = share.share(w, spec.workers)
            t = np.arange(1, duration + 1, dtype=float)
            if spec.dead_at is not None:
                t = t[t <= spec.dead_at]
            n = len(t)
            target = np.array([wprof.target_at(x) for x in t])
            active = target.copy()
            prev = np.concatenate(([0], active[:-1]))
            opened = np.clip(active - prev, 0, None)
            closed = np.clip(prev - active, 0, None)
            phase = [wprof.phase_at(x - 0.5) if x <= profile.total_s else "drain" for x in t]
            disc = np.zeros(n, dtype=np.int64)
            if spec.disconnect_at is not None:
                k = np.searchsorted(t, spec.disconnect_at)
                if k < n:
                    disc[k] = int(active[k] * 0.3)
            sent = np.round(active * rate).astype(np.int64)
            received = sent.copy()
            cols = {"ts": START + t + spec.skew_ms / 1000 + 0.01 * w, "agent": spec.name, "worker": w,
                    "elapsed_s": t, "phase": phase, "target": target, "active": active, "connecting": 0, "send_lag_ms": 0,
                    "connects_ok": opened, "disconnects": disc, "closes": closed, "msgs_sent": sent,
                    "msgs_received": received, "msgs_acked": sent, "msgs_errors": 0, "msgs_send_failed": 0,
                    "msgs_skipped": 0, "bytes_sent": sent * 100, "bytes_received": received * 100,
                    "pings": active // 30, "pongs": active // 30}
            failed = np.zeros(n, dtype=np.int64)
            for r in FAIL_REASONS:
                per = spec.fail_per_s.get(r, 0)
                col = np.where(opened > 0, per, 0).astype(np.int64)
                cols[f"fail_{r}"] = col
                failed += col
            cols["connects_failed"] = failed
            cols["disc_by_gateway"], cols["disc_lost"] = np.zeros(n, dtype=np.int64), disc
            lat_cells, con_cells, ses_cells = [], [], []
            for i in range(n):
                if pool is not None:
                    cell = pool[(ai * 7919 + w * 104729 + i) % len(pool)] if received[i] else ""
                    if cell:
                        pool_use[cell] = pool_use.get(cell, 0) + 1
                    lat_cells.append(cell)
                    con_cells.append(pool[i % len(pool)] if opened[i] and i % 10 == 0 else "")
                    ses_cells.append("")
                    continue
                lat = _samples(rng, spec, int(received[i]))
                all_lat.append(lat)
                lat_cells.append(_encode(lat) if len(lat) else "")
                con_cells.append(_encode(rng.lognormal(np.log(3000), 0.3, int(opened[i])).astype(np.int64)) if opened[i] else "")
                ends = int(closed[i] + disc[i])
                ses_cells.append(_encode(np.full(ends, int(t[i] * 1e6 * 0.9), dtype=np.int64)) if ends else "")
            cols["latency_hdr"], cols["connect_hdr"], cols["session_hdr"] = lat_cells, con_cells, ses_cells
            cols["by_type"] = ""
            cols["churns"] = 0
            cols["login_hdr"] = [""] * n  # the reference protocol has no login steps
            frames.append(pd.DataFrame(cols))
            totals["connects_ok"] += int(opened.sum())
            totals["failed"] += int(failed.sum())
            totals["msgs_sent"] += int(sent.sum())
            totals["msgs_received"] += int(received.sum())
            totals["disconnects"] += int(disc.sum())
            totals["closes"] += int(closed.sum())
            active_total[t.astype(int)] += active
        df = pd.concat(frames).sort_values("ts")[list(COLUMNS)]
        df.to_csv(os.path.join(adir, "timeseries.csv"), index=False)
        with open(os.path.join(adir, "agent.log"), "w") as f:
            f.write(f"agent {spec.name} started\n" + ("worker 0 killed by OOM\n" if spec.dead_at else "done\n"))
        if spec.dead_at is None:
            offered = share.peak * rate
            agent_criteria = crit.default_criteria(scenario, hold_s=share.hold_s(), offered_per_s=offered)
            summary = {"scenario": scenario, "agent": spec.name, "version": "0.1.0", "started_at": START + spec.skew_ms / 1000,
                       "ended_at": START + duration + 1, "planned_start_at": START,
                       "start_skew_ms": {str(w): spec.skew_ms + 10 * w for w in range(spec.workers)},
                       "plan": {"stages": [str(s) for s in share.stages], "peak_connections": share.peak,
                                "rate_per_user": rate, "message_size": 100, "mode": "pairs", "endpoints": [],
                                "workers": spec.workers, "local_ips": [], "offered_msgs_per_s": offered},
                       "criteria": [c.as_dict(None) for c in agent_criteria],
                       "passed": True, "complete": True, "workers_dead": [], "stopped_by": None}
            with open(os.path.join(adir, "summary.json"), "w") as f:
                json.dump(summary, f)
        if gateway_metrics:
            _gateway_metrics_csv(adir, gateways, active_total, duration, mem_per_conn, leak_bytes_per_min, hold)
    # plan.json and run.json as loadgen.fleet.clustertest writes them
    shares = {a.name: [str(st) for st in per_agent_share.share(i, n_agents).stages] for i, a in enumerate(agents)}
    plan = {"run_id": run_id or os.path.basename(os.path.normpath(path)), "scenario": scenario,
            "stages": list(stages), "rate": rate, "message_size": 100,
            "generators": [a.name for a in agents] + list(unreachable), "gateways": list(gateways),
            "endpoints": [f"{g}:8080" for g in gateways], "shares": shares, "total_s": profile.total_s,
            "peak_connections": profile.peak, "min_generators": 1, "criteria": list(criteria or []), "start_at": START,
            "inventory": "/dev/null", "groups": {"generators": [a.name for a in agents] + list(unreachable),
                                                 "gateways": list(gateways), "etcd": ["etcd1"], "kafka": ["kafka1"],
                                                 "redis": ["redis1"]}}
    agents_facts = {a.name: {"launched": True, "error": None, "state": "dead" if a.dead_at else "done"} for a in agents}
    sysctl = {"sysctl:net.core.somaxconn": "4096", "sysctl:net.ipv4.tcp_max_syn_backlog": "2048", "clock_offset_ms": 1.5}
    run = {"controller_started_at": START - 30, "agents": agents_facts,
           "gateways": {g: {"managed_by": "fab", "endpoint": f"{g}:8080"} for g in gateways},
           "unreachable": [{"host": h, "error": "ssh: connect to host: Connection timed out"} for h in unreachable],
           "preflight": {"hosts": {h: dict(sysctl) for h in [*gateways, *(a.name for a in agents)]}},
           "controller_ended_at": START + duration + 20, "stopped_by": None}
    with open(os.path.join(path, "plan.json"), "w") as f:
        json.dump(plan, f, indent=2)
    with open(os.path.join(path, "run.json"), "w") as f:
        json.dump(run, f, indent=2)
    if samples:
        _samples_csv(path, agents, gateways, active_total, duration, mem_per_conn, leak_bytes_per_min, gateway_cpu, hold)
    if probes:
        _probes(path, gateways, infra, active_total)
    return Truth(latency_us=np.concatenate(all_lat) if all_lat else None, pool_counts=list(pool_use.items()),
                 counters=totals, dead=[a.name for a in agents if a.dead_at] + list(unreachable), start_at=START, hold=hold)


AGENT_MEM_PER_CONN = 9000  # bytes per connection of a synthetic agent, on top of a 30 MB base


def _rss(conns, t, mem_per_conn, leak, hold):
    minutes = np.clip(t - (hold[0] - START), 0, None) / 60.0
    return 50e6 + conns * mem_per_conn + leak * minutes


def _samples_csv(path, agents, gateways, active_total, duration, mem_per_conn, leak, cpu, hold):
    rows = []
    t = np.arange(0, duration + 3, 2, dtype=float)
    act = np.interp(t, np.arange(len(active_total)), active_total)
    for gi, g in enumerate(gateways):
        conns = np.round(act / len(gateways) * (1.1 if gi == 0 else 0.9))
        rss = _rss(conns, t, mem_per_conn, leak, hold)
        for metric, values in (("gateway_active_connections", conns), ("gateway_rss_bytes", rss),
                               ("gateway_cpu_percent", cpu * conns / max(1, conns.max()) + 2),
                               ("gateway_fds", conns + 40), ("host_cpu_percent", cpu * conns / max(1, conns.max()) + 5),
                               ("host_mem_used_bytes", rss + 1e9), ("established", conns)):
            rows += [(START + x, g, "gateways", metric, v) for x, v in zip(t, values)]
    for a in agents:
        mine = np.round(act / len(agents))
        for metric, values in (("host_cpu_percent", 20 + act / max(1, act.max()) * 30), ("host_mem_used_bytes", 2e9 + act * 2e4),
                               ("agent_active_connections", mine), ("agent_rss_bytes", 30e6 + mine * AGENT_MEM_PER_CONN)):
            rows += [(START + x, a.name, "generators", metric, v) for x, v in zip(t, values)
                     if a.dead_at is None or x <= a.dead_at]
    for host, role in (("etcd1", "etcd"), ("redis1", "redis"), ("kafka1", "kafka")):
        rows += [(START + x, host, role, "host_cpu_percent", 10.0) for x in t]
    os.makedirs(os.path.join(path, "probes"), exist_ok=True)
    pd.DataFrame(rows, columns=["ts", "host", "role", "metric", "value"]).to_csv(
        os.path.join(path, "probes", "samples.csv"), index=False)


def _gateway_metrics_csv(adir, gateways, active_total, duration, mem_per_conn, leak, hold):
    t = np.arange(0, duration + 1, dtype=float)
    rows = []
    for gi, g in enumerate(gateways):
        conns = np.round(active_total[: len(t)] / len(gateways))
        rss = _rss(conns, t, mem_per_conn, leak, hold)
        cpu_s = np.cumsum(np.full(len(t), 0.3))
        for x, c, r, cs in zip(t, conns, rss, cpu_s):
            rows.append({"ts": START + x, "url": f"http://{g}:9090/metrics", "active_connections": c, "rss_bytes": r,
                         "cpu_seconds": cs, "open_fds": c + 40, "max_fds": 1 << 20, "messages_sent_total": 0, "errors_total": 0})
    pd.DataFrame(rows).to_csv(os.path.join(adir, "gateway_metrics.csv"), index=False)


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _probes(path, gateways, infra, active_total):
    peak = int(active_total.max())
    for g in gateways:
        for when, estab in (("before", 3), ("after", 5)):
            d = os.path.join(path, "probes", g, when)
            _write(os.path.join(d, "ss-s.txt"), f"Total: {estab + 100}\nTCP:   {estab + 20} (estab {estab}, closed 10, "
                   f"orphaned 0, timewait 7)\n\nTransport Total     IP        IPv6\nRAW 0 0 0\n")
            _write(os.path.join(d, "lsof-count.txt"), f"{estab + 60}\n")
            _write(os.path.join(d, "established.txt"), f"{estab}\n")
            _write(os.path.join(d, "sysctl.txt"), "net.core.somaxconn = 4096\nnet.ipv4.tcp_max_syn_backlog = 1024\n")
            _write(os.path.join(d, "nstat.txt"), f"#kernel\nTcpExtListenOverflows           {0 if when == 'before' else 12}   0.0\n"
                   f"TcpExtListenDrops               {0 if when == 'before' else 12}   0.0\n")
            _write(os.path.join(d, "metrics.txt"), f'im_gateway_active_connections{{node="{g}"}} 0\n'
                   f'im_gateway_disconnections_total{{node="{g}",reason="client"}} {peak // 2}\n'
                   f'im_gateway_disconnections_total{{node="{g}",reason="read_timeout"}} 3\n'
                   f'im_gateway_errors_total{{node="{g}",kind="none"}} 0\n')
    if infra:
        for when in ("before", "after"):
            _write(os.path.join(path, "probes", "etcd1", when, "etcd-health.txt"),
                   "http://127.0.0.1:2379 is healthy: successfully committed proposal: took = 1.2ms\n")
            _write(os.path.join(path, "probes", "etcd1", when, "etcd-status.txt"),
                   "http://127.0.0.1:2379, 8e9e05c52164694d, 3.5.9, 25 kB, true, false, 2, 8, 8,\n")
            _write(os.path.join(path, "probes", "redis1", when, "redis-info.txt"),
                   "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmem_fragmentation_ratio:1.10\r\n"
                   "# Stats\r\ninstantaneous_ops_per_sec:120\r\ntotal_commands_processed:5000\r\nrejected_connections:0\r\n")
            _write(os.path.join(path, "probes", "kafka1", when, "kafka-topics.txt"),
                   "Topic: im-messages\tTopicId: abc\tPartitionCount: 2\tReplicationFactor: 1\tConfigs:\n"
                   "\tTopic: im-messages\tPartition: 0\tLeader: 1\tReplicas: 1\tIsr: 1\n"
                   "\tTopic: im-messages\tPartition: 1\tLeader: 1\tReplicas: 1\tIsr: 1\n")


def three_agents(path: str, **kw) -> Truth:
    """The known-answer run: three agents with different latency distributions, one of them with a tail."""
    return make_run(path, [AgentSpec("gen-a", 20, 0.3), AgentSpec("gen-b", 60, 0.5),
                           AgentSpec("gen-c", 15, 0.4, tail_share=0.03, tail_ms=400)], **kw)
