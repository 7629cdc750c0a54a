"""The spec's troubleshooting section as checks: each reports only when its evidence is in the data.

A check returns None (nothing found) or a finding: title, severity, what was seen (evidence lines
with numbers from this run), and what to try (the spec's solutions). `run_checks` also lists the
checks that ran without a finding, so the reader knows they were looked at.
"""

from __future__ import annotations

import numpy as np

from loadgen.plan import criteria as crit

CPU_LIMIT = 80.0  # the spec: CPU usage should stay below 80 %
SKEW_WARN_MS = 1000.0
TIMEOUT_SHARE = 0.005  # connect timeouts above 0.5 % of attempts are worth a look
DISCONNECT_SHARE = 0.005
SPIKE_FACTOR = 5.0  # a bin with 5x the median disconnect rate (and >1 % of connections) is a spike
# A gateway process runs one event loop: near one full core it is the limit, whatever the host has left.
LOOP_SATURATED = 90.0
HOST_SATURATED = 95.0
BACKENDS = ("kafka", "etcd", "redis")


def _target(summary: dict, name: str, default: float) -> float:
    return next((r["target"] for r in summary["criteria"] if r["name"] == name), default)


def _fmt_t(seconds: float) -> str:
    """A time on the charts' axis; a bin is named by its end, as the agents stamp their seconds."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def _probe_values(host_info: dict, probe: str, key: str, role: str | None = None) -> list[tuple[str, object, object]]:
    """(host, before, after) of one parsed probe figure, for hosts that have it."""
    out = []
    for p in host_info["system_probes"] + host_info["infra"]:
        if p["probe"] != probe or (role and p["role"] != role):
            continue
        b = (p["before_summary"] or {}).get(key)
        a = (p["after_summary"] or {}).get(key)
        if b is not None or a is not None:
            out.append((p["host"], b, a))
    return out


def _own_cpu(host_info: dict, agents: dict, role: str) -> list[tuple[str, float, str]]:
    """(host, CPU peak %, what it is) of each host of a role, by process where sampled: an agent per worker
    (one core each), a gateway process; the host's CPU only when the host is a machine of its own."""
    shared = {h for m in host_info.get("machines", []) for h in m["hosts"]}
    out = []
    for r in host_info["rows"]:
        if r.get("role") != role:
            continue
        h = r["host"]
        if role == "generator" and r.get("agent_cpu_percent_max") is not None:
            workers = max(1, (agents.get(h) or {}).get("workers") or 1)
            out.append((h, r["agent_cpu_percent_max"] / workers, f"agent CPU per worker ({workers} worker(s))"))
        elif role == "gateway" and r.get("gateway_cpu_percent_max") is not None:
            out.append((h, r["gateway_cpu_percent_max"], "gateway process CPU"))
        elif h not in shared and r.get("host_cpu_percent_max") is not None:
            out.append((h, r["host_cpu_percent_max"], "host CPU"))
    return out


def check_connect_timeouts(s, series, nodes, host_info, agents, win):
    c = s["connections"]
    timeouts = c["failed_by_reason"].get("timeout", 0)
    p95, target = s["connect_ms"]["p95"], _target(s, "connect_p95_ms", 5000)
    slow = p95 is not None and p95 > target
    if not (c["attempted"] and (timeouts > TIMEOUT_SHARE * c["attempted"] or slow)):
        return None
    ev = [f"{timeouts:,} of {c['attempted']:,} connection attempts timed out; connect P95 {p95} ms (target < {target:g} ms), "
          f"max {s['connect_ms']['max']} ms"]
    overflow = _probe_values(host_info, "nstat", "ListenOverflows") + _probe_values(host_info, "netstat-s", "ListenOverflows")
    for host, b, a in overflow:
        ev.append(f"{host}: listen queue overflows {b} before, {a} after the run"
                  + (" - the accept backlog overflowed" if (a or 0) > (b or 0) else ""))
    for key in ("net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"):
        values = {h: a or b for h, b, a in _probe_values(host_info, "sysctl", key)}
        values.update({h: v for h, v in host_info.get("sysctls", {}).get(key, {}).items() if h not in values})
        gateways = {h: v for h, v in values.items() if host_info["roles"].get(h) == "gateway"} or values
        for host, v in gateways.items():
            ev.append(f"{host}: {key} = {v}" + (" (the spec tunes it to 65535)" if str(v).strip() != "65535" else ""))
    for host, b, a in _probe_values(host_info, "ss-s", "synrecv"):
        ev.append(f"{host}: SYN-RECV sockets {b} before, {a} after (ss -s)")
    if not overflow:
        ev.append("listen-queue overflow counters: not collected (probe nstat/netstat-s)")
    cpu = _own_cpu(host_info, agents, "gateway")
    if cpu:
        ev.append("gateway CPU peak: " + ", ".join(f"{h} {v:.0f}% ({what})" for h, v, what in cpu))
    return {"id": "connect_timeouts", "title": "Connection timeouts / slow connection establishment", "severity": "fail",
            "evidence": ev, "actions": ["Increase net.core.somaxconn and net.ipv4.tcp_max_syn_backlog on the gateways",
                                        "Increase the gateway's websocket handshake_timeout",
                                        "Check network bandwidth between generators and gateways",
                                        "Verify the load balancer configuration (connection limits, health checks)"]}


def check_connect_rejections(s, series, nodes, host_info, agents, win):
    r = s["connections"]["failed_by_reason"]
    found = {k: r.get(k, 0) for k in ("refused", "rejected", "auth", "reset") if r.get(k)}
    if not found:
        return None
    why = {"refused": "TCP connection refused: a gateway not listening (crashed, restarting, wrong port)",
           "rejected": "HTTP status other than 101/401/403, e.g. 503 when a node hit max_connections",
           "auth": "HTTP 401/403: the token was not accepted",
           "reset": "connection reset during the handshake (overloaded accept path, LB or conntrack limits)"}
    ev = [f"{v:,} {k}: {why[k]}" for k, v in found.items()]
    full = [n for n in nodes if n.get("peak_connections")]
    if full and "rejected" in found:
        ev.append("peak connections per node: " + ", ".join(f"{n['node']} {n['peak_connections']:,.0f}" for n in full[:10]))
    return {"id": "connect_rejections", "title": "Connections refused or rejected by the gateway", "severity": "fail",
            "evidence": ev, "actions": ["Check server.max_connections against the planned per-node connections",
                                        "Check the gateway logs and process restarts (gateway-ps probe) around the failures",
                                        "Check AUTH_TOKEN / the gateway's token for auth failures"]}


def check_generator_limits(s, series, nodes, host_info, agents, win):
    r = s["connections"]["failed_by_reason"]
    found = {k: r.get(k, 0) for k in ("no_ports", "fd_limit") if r.get(k)}
    if not found:
        return None
    ev = [f"{v:,} connection attempts failed with {k} on the generators" for k, v in found.items()]
    return {"id": "generator_limits", "title": "Load generator ran out of ports or file descriptors", "severity": "fail",
            "evidence": ev, "actions": ["Raise ulimit -n on the generators (the spec: 1000000)",
                                        "Widen net.ipv4.ip_local_port_range to 1024 65535 and enable tcp_tw_reuse",
                                        "Spread connections over more source addresses (--local-ips) or more generators"]}


def check_latency(s, series, nodes, host_info, agents, win):
    p99, target = s["latency_ms"]["p99"], _target(s, "message_p99_ms", 200)
    if p99 is None or p99 <= target:
        return None
    ev = [f"message latency P99 {p99:.1f} ms over {s['latency_ms']['count']:,} messages (target < {target:g} ms)"]
    lat = series.get("latency")
    if lat is not None:
        over = np.flatnonzero(np.nan_to_num(lat["p99"], nan=0) > target)
        if len(over):
            ev.append(f"interval P99 above {target:g} ms in {len(over)} of {int(np.isfinite(lat['p99']).sum())} intervals, "
                      f"first at {_fmt_t((over[0] + 1) * win['bin_s'])}")
    hot = [n for n in nodes if (n.get("cpu_peak") or 0) > CPU_LIMIT]
    for n in hot:
        ev.append(f"gateway {n['node']}: process CPU peak {n['cpu_peak']:.0f}% (> {CPU_LIMIT:.0f}%): latency is likely CPU-bound")
    for h, v, what in _own_cpu(host_info, agents, "gateway"):
        if v > CPU_LIMIT and what == "host CPU":  # the process figure is in the node list above
            ev.append(f"gateway host {h}: CPU peak {v:.0f}% (> {CPU_LIMIT:.0f}%)")
    for h, v, what in _own_cpu(host_info, agents, "generator"):
        if v > CPU_LIMIT:
            ev.append(f"generator {h}: {what} peak {v:.0f}% - the generator itself may add latency; add generators")
    if not nodes and not host_info["samples_present"]:
        ev.append("gateway CPU: not collected")
    for host, b, a in _probe_values(host_info, "redis-info", "instantaneous_ops_per_sec"):
        ev.append(f"redis {host}: {a} ops/s after the run")
    return {"id": "high_latency", "title": "High message latency", "severity": "fail", "evidence": ev,
            "actions": ["Check gateway CPU usage (should be < 80%)", "Verify network latency",
                        "Check Redis/etcd response times", "Optimize message routing logic", "Enable connection pooling"]}


def check_leak(s, series, nodes, host_info, agents, win):
    suspects = [n for n in nodes if n.get("leak") and n["leak"]["slope_bytes_per_min"] > crit.LEAK_BYTES_PER_MIN]
    if not suspects:
        return None
    ev = [f"{n['node']}: RSS grew {n['leak']['slope_bytes_per_min'] / 1048576:.2f} MiB/min over {n['leak']['minutes']:.1f} min "
          f"of hold (least squares, R^2 {n['leak']['r2']:.2f}, {n['leak']['points']} samples; threshold "
          f"{crit.LEAK_BYTES_PER_MIN / 1048576:.0f} MiB/min)" for n in suspects]
    return {"id": "memory_leak", "title": "Memory leak suspect: gateway RSS keeps growing during the hold", "severity": "fail",
            "evidence": ev, "actions": ["Check for goroutine/task leaks (pprof or equivalent)", "Verify connection cleanup",
                                        "Check message buffer sizes", "Monitor GC frequency", "Use memory profiling"]}


def check_disconnects(s, series, nodes, host_info, agents, win):
    c = s["connections"]
    if not c["disconnects"]:
        return None
    d = series.get("disconnects")
    active = series.get("active_total")
    ev = [f"{c['disconnects']:,} connections closed by the gateway or network (not by the agent) "
          f"of {c['established']:,} established"]
    spikes = []
    if d is not None and active is not None:
        finite = d[np.isfinite(d)]
        med = float(np.median(finite)) if len(finite) else 0.0  # the usual rate: usually zero
        per_bin = np.nan_to_num(d) * win["bin_s"]
        floor = np.nan_to_num(active) * 0.01
        spikes = np.flatnonzero((np.nan_to_num(d) > SPIKE_FACTOR * med) & (per_bin > floor) & (per_bin >= 10))
        for i in spikes[:5]:
            ev.append(f"spike at {_fmt_t((i + 1) * win['bin_s'])}: {per_bin[i]:,.0f} disconnects in {win['bin_s']} s "
                      f"({d[i]:,.1f}/s vs median {med:,.1f}/s)")
    if not len(spikes) and c["disconnects"] <= DISCONNECT_SHARE * max(1, c["established"]):
        return None
    for host, b, a in _probe_values(host_info, "metrics", "disconnections_total"):
        reasons = {k[11:]: v for p in host_info["system_probes"] if p["host"] == host and p["probe"] == "metrics"
                   for k, v in (p["after_summary"] or {}).items() if k.startswith("disconnect:")}
        if reasons:
            ev.append(f"gateway {host} disconnections by reason: " + ", ".join(f"{k}={v:,.0f}" for k, v in reasons.items()))
    return {"id": "disconnects", "title": "Unexpected disconnects" + (" (spikes)" if len(spikes) else ""), "severity": "warn",
            "evidence": ev, "actions": ["Increase tcp_keepalive_time", "Verify the heartbeat mechanism",
                                        "Check the load balancer idle timeout", "Monitor network stability", "Verify Registry TTL"]}


def check_heartbeat(s, series, nodes, host_info, agents, win):
    m, c, ses = s["messages"], s["connections"], s["session_s"]
    ev = []
    if m["pings"] and m["pongs"] < 0.9 * m["pings"]:
        ev.append(f"{m['pings']:,} heartbeats sent, {m['pongs']:,} answered ({m['pongs'] / m['pings']:.0%})")
    ends = c["disconnects"] + c["closes"]
    if c["disconnects"] and ses.get("count") and ses["p50"] and ses["p95"] and ends:
        if c["disconnects"] / ends >= 0.5 and ses["p95"] <= ses["p50"] * 1.1:
            ev.append(f"{c['disconnects']:,} of {ends:,} sessions were ended by the gateway/network, and they end after "
                      f"a near-constant time (session P50 {ses['p50']:.1f} s, P95 {ses['p95']:.1f} s): this looks like a "
                      "timeout (read timeout, heartbeat, LB idle timeout or registry TTL)")
    if not ev:
        return None
    return {"id": "heartbeat_ttl", "title": "Heartbeat / session timeout suspect", "severity": "warn", "evidence": ev,
            "actions": ["Verify the heartbeat interval is shorter than the gateway read timeout and the LB idle timeout",
                        "Verify the registry TTL is refreshed by heartbeats", "Increase tcp_keepalive_time"]}


def check_generators(s, series, nodes, host_info, agents, win):
    hot = [(h, v, what) for h, v, what in _own_cpu(host_info, agents, "generator") if v > CPU_LIMIT]
    if not hot:
        return None
    return {"id": "generator_saturation", "title": "Load generators near CPU saturation", "severity": "warn",
            "evidence": [f"{h}: {what} peak {v:.0f}%" for h, v, what in hot],
            "actions": ["Add generators or lower the per-generator share: a saturated generator inflates latency "
                        "and delays connects"]}


def check_shared_machine(s, series, nodes, host_info, agents, win):
    """Hosts that are one machine compete for its CPU: say so, with each process's share, instead of
    blaming the generators (or the gateways) for the machine's load."""
    ev = []
    for m in host_info.get("machines", []):
        rows = [r for r in host_info["rows"] if r["host"] in m["hosts"]]
        peak = max((r["host_cpu_percent_max"] for r in rows if r.get("host_cpu_percent_max") is not None), default=None)
        if peak is None or peak <= CPU_LIMIT:
            continue
        ev.append(f"{', '.join(m['hosts'])} are one machine; its CPU peaked at {peak:.0f}% (all its cores)")
        own = _own_cpu(host_info, agents, "generator") + _own_cpu(host_info, agents, "gateway")
        ev += [f"{h}: {what} peak {v:.0f}%" for h, v, what in own if h in m["hosts"]]
        if not own:
            ev.append("per-process CPU: not sampled in this run")
    if not ev:
        return None
    return {"id": "shared_machine", "title": "Generators and gateways share a busy machine", "severity": "warn",
            "evidence": ev, "actions": ["Figures of a shared machine measure the pair (load and system under test) "
                                        "together: for capacity numbers put generators and gateways on separate hosts"]}


def check_skew(s, series, nodes, host_info, agents, win):
    bad = [(h, r["start_skew_ms"]) for h, r in agents.items() if r.get("start_skew_ms") is not None and abs(r["start_skew_ms"]) > SKEW_WARN_MS]
    if not bad:
        return None
    return {"id": "start_skew", "title": "Generators did not start in lockstep", "severity": "warn",
            "evidence": [f"{h}: started {v / 1000:+.2f} s from the planned start" for h, v in bad],
            "actions": ["Check clock sync (chrony/NTP) on the generators", "Start earlier (a larger start delay in the plan)"]}


def check_imbalance(s, series, nodes, host_info, agents, win):
    d = s["distribution"]
    ev = []
    if d.get("node_imbalance") and d["node_imbalance"] > d["imbalance_warn"]:
        ev.append(f"connections per gateway node: max/mean {d['node_imbalance']:.2f} (> {d['imbalance_warn']})")
    if d.get("generator_imbalance") and d["generator_imbalance"] > d["imbalance_warn"]:
        ev.append(f"connections per generator: max/mean {d['generator_imbalance']:.2f} (> {d['imbalance_warn']})")
    if not ev:
        return None
    return {"id": "imbalance", "title": "Load not evenly distributed", "severity": "warn", "evidence": ev,
            "actions": ["Check the load balancer's balancing method and health checks",
                        "Check the generators' share and endpoint lists in plan.json"]}


def check_messages(s, series, nodes, host_info, agents, win):
    m = s["messages"]
    ev = []
    if m["lost"]:
        ev.append(f"{m['lost']:,} messages sent but neither delivered nor answered with an error")
    if m["send_failed"]:
        ev.append(f"{m['send_failed']:,} scheduled sends failed because the sender was not connected")
    if m["error_frames"]:
        ev.append(f"{m['error_frames']:,} error frames from the gateway")
    if not ev or (m["success_rate"] is not None and m["success_rate"] >= _target(s, "message_success_rate", 0.99)
                  and m["lost"] <= 0.001 * max(1, m["sent"])):
        return None
    return {"id": "message_loss", "title": "Messages lost or refused", "severity": "fail", "evidence": ev,
            "actions": ["Check gateway errors by kind (metrics probe)", "Check the routing path (Kafka, registry) for drops"]}


def check_partial(s, series, nodes, host_info, agents, win):
    bad = [r for r in agents.values() if r["state"] != "done"]
    if not bad:
        return None
    ev = [f"{r['host']}: {r['state']} - {r['why']}" for r in bad]
    return {"id": "partial", "title": "Not every generator finished: results are partial", "severity": "fail", "evidence": ev,
            "actions": ["Read the agent log (Run facts) and the generator's system log (OOM killer, limits)",
                        "Rerun: figures of a partial run understate the load"]}


def check_saturation(s, series, nodes, host_info, agents, win):
    """Which part ran out of capacity: a gateway's event loop, the cross-node backends (their backlog,
    their errors, their CPU), or a host's CPU (for hosts that are one machine, as in an nspawn lab, the
    machine's, named once). Host CPU alone is named only when a criterion failed."""
    ev, parts = [], []
    for n in nodes:
        if (n.get("cpu_peak") or 0) >= LOOP_SATURATED:
            parts.append(f"gateway {n['node']} (event loop)")
            ev.append(f"gateway {n['node']}: process CPU {n['cpu_peak']:.0f}% of one core at peak, {n.get('cpu_mean') or 0:.0f}% "
                      "mean: one process runs one event loop, so one core is its ceiling (add nodes or --processes)")
    gateway_rows = {p["host"]: p for p in host_info["system_probes"] if p["probe"] == "metrics"}
    for host, p in sorted(gateway_rows.items()):
        before, after = p["before_summary"] or {}, p["after_summary"] or {}

        def delta(key):
            return (after.get(key) or 0) - (before.get(key) or 0)

        refused = {k[8:]: delta(k) for k in after if k.startswith("refused:") and delta(k) > 0}
        for stage, n in refused.items():
            what = {"lookup": "the session registry (Redis)", "produce": "Kafka"}.get(stage, stage)
            parts.append(f"{what} backlog on {host}")
            ev.append(f"gateway {host}: {n:,.0f} cross-node sends refused at once: the {stage} backlog waiting for "
                      f"{what} was full (cluster.route_backlog)")
        backend_errors = {k[6:]: delta(k) for k in after if k.startswith("error:") and k[6:] in BACKENDS and delta(k) > 0}
        for kind, n in backend_errors.items():
            parts.append(f"{kind} (errors on {host})")
            ev.append(f"gateway {host}: {n:,.0f} {kind} errors (timeouts of cluster.backend_timeout or failures)")
        for key, what in (("kafka_produce_latency_mean_ms", "Kafka produce (acks=all) mean"),
                          ("registry_lookup_latency_mean_ms", "registry lookup mean")):
            if after.get(key) is not None and (refused or backend_errors or parts):
                ev.append(f"gateway {host}: {what} {after[key]:.1f} ms over the gateway's life")
    if not parts and s.get("criteria_passed", True):
        return None  # a busy machine that still met every criterion is not a finding
    # the backends' own CPU (probes sample their processes), summed over their hosts
    rows = host_info["rows"]
    for part in (*BACKENDS, "agent"):
        means = [r[f"{part}_cpu_percent_mean"] for r in rows if r.get(f"{part}_cpu_percent_mean") is not None]
        peaks = [r[f"{part}_cpu_percent_max"] for r in rows if r.get(f"{part}_cpu_percent_max") is not None]
        if means:
            ev.append(f"{part}: {sum(means):.0f}% of one core on average over {len(means)} host(s), "
                      f"peak {max(peaks):.0f}% on one host")
    machine_of = {h: m for m in host_info.get("machines", []) for h in m["hosts"]}
    sampled = [r for r in rows if r.get("host_cpu_percent_max") is not None]
    hot = [r for r in sampled if r["host_cpu_percent_max"] >= HOST_SATURATED]
    if len(sampled) > 1 and len(hot) == len(sampled) and not machine_of:
        # nspawn containers have a boot_id each, so preflight cannot tell they are one machine; all hosts
        # saturated at once is what that looks like
        parts.append("every host's CPU (hosts that share one machine, as in a lab, show the machine's)")
        ev.append("host CPU peaked at >= 95% on every host (" + ", ".join(
            f"{r['host']} {r['host_cpu_percent_max']:.0f}%" for r in hot) + ")")
        hot = []
    seen = set()
    for r in hot:
        v, m = r["host_cpu_percent_max"], machine_of.get(r["host"])
        if m is None:
            parts.append(f"host {r['host']} CPU")
            ev.append(f"host {r['host']}: CPU peak {v:.0f}%")
        elif tuple(m["hosts"]) not in seen:  # hosts of one machine show the machine's CPU: named once
            seen.add(tuple(m["hosts"]))
            # its hosts sample it at different instants: its peak is their highest (as check_shared_machine says)
            v = max(x["host_cpu_percent_max"] for x in hot if x["host"] in m["hosts"])
            parts.append(f"the CPU of the machine that {len(m['hosts'])} hosts share")
            ev.append(f"{', '.join(m['hosts'])} are one machine; its CPU peaked at {v:.0f}% (all its cores)")
    if not parts:
        return None
    severity = "fail" if not s.get("criteria_passed", True) else "warn"
    return {"id": "saturation", "title": "Saturated: " + "; ".join(dict.fromkeys(parts)), "severity": severity,
            "evidence": ev, "parts": list(dict.fromkeys(parts)),
            "actions": ["Lower the load below the measured capacity, or add capacity to the part named first",
                        "A gateway at one core: more nodes or --processes; Kafka/Redis backlog: check the brokers' and "
                        "Redis's CPU and latency above; a machine at 100 %: the machine itself is the limit"]}


CHECKS = (check_partial, check_connect_timeouts, check_connect_rejections, check_generator_limits, check_latency,
          check_leak, check_disconnects, check_heartbeat, check_messages, check_generators, check_shared_machine,
          check_imbalance, check_skew, check_saturation)


def run_checks(summary, series, nodes, host_info, agents, win) -> dict:
    found, clear = [], []
    for check in CHECKS:
        result = check(summary, series, nodes, host_info, agents, win)
        if result:
            found.append(result)
        else:
            clear.append(check.__name__[6:])
    return {"findings": found, "no_finding": clear}
