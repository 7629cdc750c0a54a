"""Host figures: probes/samples.csv over time, and the raw before/after probe outputs, parsed where useful."""

from __future__ import annotations

import re

import pandas as pd

from loadgen.gateway.metrics import parse_exposition
from loadgen.report.bins import sample_bins
from loadgen.report.svg import band

ROLE_ORDER = ("gateway", "generator", "etcd", "redis", "kafka")


def parse_ss(text: str) -> dict:
    """`ss -s`: Total and the TCP line's counters ({'total': .., 'tcp': .., 'estab': .., 'timewait': ..})."""
    out: dict = {}
    m = re.search(r"^Total:\s*(\d+)", text, re.M)
    if m:
        out["total"] = int(m.group(1))
    m = re.search(r"^TCP:\s*(\d+)\s*\(([^)]*)\)", text, re.M)
    if m:
        out["tcp"] = int(m.group(1))
        for name, value in re.findall(r"([a-z]+)\s+(\d+)", m.group(2)):
            out[name] = int(value)
    return out


_EXIT = re.compile(r"^\[exit (\d+)\]\s*$", re.M)


def probe_output(text: str) -> str | None:
    """The command's output without the fleet's trailing '[exit N]' line; None when the command failed."""
    m = _EXIT.search(text or "")
    if m and m.group(1) != "0":
        return None
    return _EXIT.sub("", text or "")


def first_int(text: str) -> int | None:
    m = re.search(r"-?\d+", text or "")
    return int(m.group(0)) if m else None


def parse_kv(text: str, sep: str = ":") -> dict:
    out = {}
    for line in text.splitlines():
        key, s, value = line.partition(sep)
        if s and key.strip() and not key.startswith("#"):
            out[key.strip()] = value.strip()
    return out


REDIS_KEYS = ("used_memory_human", "used_memory_peak_human", "maxmemory_human", "mem_fragmentation_ratio",
              "connected_clients", "instantaneous_ops_per_sec", "total_commands_processed", "rejected_connections",
              "evicted_keys", "expired_keys", "keyspace_hits", "keyspace_misses")
NETSTAT_KEYS = ("ListenOverflows", "ListenDrops", "TCPBacklogDrop", "TCPTimeouts", "TCPAbortOnTimeout")
SYSCTL_KEYS = ("net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.ip_local_port_range",
               "net.core.netdev_max_backlog", "fs.file-max", "net.netfilter.nf_conntrack_max")


def probe_summary(name: str, text: str) -> dict:
    """Key figures of one raw probe output (empty when the format is not recognized or the command failed)."""
    text = probe_output(text)
    if text is None:
        return {}
    if name == "ss-s":
        return parse_ss(text)
    if name in ("lsof-count", "established", "gateway-fds"):
        v = first_int(text)
        return {} if v is None else {name: v}
    if name == "redis-info":
        kv = parse_kv(text)
        return {k: kv[k] for k in REDIS_KEYS if k in kv}
    if name == "etcd-health":
        healthy = len(re.findall(r"is healthy", text))
        unhealthy = len(re.findall(r"is unhealthy|unhealthy|failed", text))
        return {"healthy": healthy, "unhealthy": unhealthy}
    if name == "etcd-status":
        return {"endpoints": len([ln for ln in text.splitlines() if re.search(r"\d+\.\d+\.\d+\.\d+|://", ln)])}
    if name == "kafka-topics":
        return {"topics": len(re.findall(r"^\s*Topic:\s*\S+\s+(?:TopicId|PartitionCount)", text, re.M)),
                "partitions": len(re.findall(r"\bPartition:\s*\d+", text))}
    if name == "metrics":
        flat = parse_exposition(text)

        def total(prefix):
            return sum(v for k, v in flat.items() if k == prefix or k.startswith(prefix + "{"))

        out = {"active_connections": total("im_gateway_active_connections"),
               "errors_total": total("im_gateway_errors_total"),
               "disconnections_total": total("im_gateway_disconnections_total")}
        for k, v in flat.items():
            m = re.match(r'im_gateway_disconnections_total\{.*reason="([^"]*)"', k)
            if m and v:
                out[f"disconnect:{m.group(1)}"] = out.get(f"disconnect:{m.group(1)}", 0) + v
            # cluster path: errors by kind, sends refused by a full backlog, messages still waiting
            m = re.match(r'im_gateway_(errors_total|route_refused_total|route_pending)\{.*(?:kind|stage)="([^"]*)"', k)
            if m and v:
                key = {"errors_total": "error", "route_refused_total": "refused", "route_pending": "pending"}[m.group(1)]
                out[f"{key}:{m.group(2)}"] = out.get(f"{key}:{m.group(2)}", 0) + v
        for name in ("kafka_produce_latency_seconds", "registry_lookup_latency_seconds"):
            n = total(f"im_gateway_{name}_count")
            if n:
                out[f"{name[:-8]}_mean_ms"] = 1000 * total(f"im_gateway_{name}_sum") / n
        return out
    if name in ("nstat", "netstat-s", "netstat"):
        out = {}
        for key in NETSTAT_KEYS:
            m = re.search(rf"(?:TcpExt)?{key}\s+(\d+)", text)
            if m:
                out[key] = int(m.group(1))
        m = re.search(r"(\d+) times the listen queue of a socket overflowed", text)
        if m:
            out["ListenOverflows"] = int(m.group(1))
        m = re.search(r"(\d+) SYNs to LISTEN sockets dropped", text)
        if m:
            out["ListenDrops"] = int(m.group(1))
        return out
    if name == "sysctl":
        kv = parse_kv(text, "=")
        return {k: kv[k] for k in SYSCTL_KEYS if k in kv}
    return {}


def normalize_role(text: str) -> str:
    """samples.csv roles are inventory groups joined by '+' ('gateways+etcd'): the main one, singular."""
    parts = [p.strip() for p in str(text or "").split("+") if p.strip()]
    names = [{"gateways": "gateway", "generators": "generator"}.get(p, p) for p in parts]
    for main in ROLE_ORDER:
        if main in names:
            return main
    return names[0] if names else ""


def _roles(run, samples: pd.DataFrame | None) -> dict:
    roles: dict = {}
    if samples is not None and len(samples):
        for host, role in samples.groupby("host")["role"].last().items():
            if normalize_role(role):
                roles[host] = normalize_role(role)
    for key in ("groups", "hosts"):
        groups = run.plan.get(key)
        if isinstance(groups, dict):
            for group, members in groups.items():
                if isinstance(members, list):
                    for h in members:
                        name = h if isinstance(h, str) else (h.get("name") or h.get("host") if isinstance(h, dict) else None)
                        if name:
                            roles.setdefault(str(name), normalize_role(group))
    return roles


def _binned(df: pd.DataFrame, win: dict, how: str = "mean") -> dict:
    wide = df.assign(bin=sample_bins(df["ts"], win)).groupby(["bin", "host"])["value"].agg(how).unstack()
    idx = pd.RangeIndex(win["nbins"])
    return {h: wide[h].reindex(idx).to_numpy(dtype=float) for h in wide.columns}


def _agent_memory_per_connection(g: pd.DataFrame) -> float | None:
    """A generator's agent RSS (all its processes) / its open connections, at the sample with the most
    connections: what a generator host needs per connection, its interpreter and buffers included."""
    both = g[g["metric"].isin(("agent_rss_bytes", "agent_active_connections"))]
    if both.empty:
        return None
    wide = both.pivot_table(index="ts", columns="metric", values="value").dropna()
    if wide.empty or "agent_rss_bytes" not in wide or "agent_active_connections" not in wide:
        return None
    peak = wide["agent_active_connections"].idxmax()
    conns = wide.at[peak, "agent_active_connections"]
    return float(wide.at[peak, "agent_rss_bytes"] / conns) if conns > 0 else None


# a host's figures vs its processes': hosts that are one machine share the first kind
MACHINE_METRICS = ("host_cpu_percent", "host_mem_used_bytes", "established")
HOST_CHARTS = (("host_cpu_percent", "CPU", "%"), ("host_mem_used_bytes", "Memory used", "B"),
               ("gateway_cpu_percent", "Gateway process CPU (% of one core)", "%"),
               ("agent_cpu_percent", "Agent CPU, workers included (% of one core)", "%"),
               ("gateway_rss_bytes", "Gateway process RSS", "B"),
               ("agent_rss_bytes", "Agent RSS (all its processes)", "B"),
               ("gateway_fds", "Gateway open file descriptors", ""),
               ("established", "Established TCP connections", ""))


def shared_machines(run) -> list[dict]:
    """Inventory hosts that are one machine (one boot_id in preflight): [{"hosts", "netns_shared"}]."""
    pre = (run.run.get("preflight") or {}).get("hosts") or {}
    by_boot: dict = {}
    for host, f in (pre.items() if isinstance(pre, dict) else ()):
        if isinstance(f, dict) and f.get("boot_id"):
            by_boot.setdefault(f["boot_id"], []).append(host)
    out = []
    for hosts in by_boot.values():
        if len(hosts) > 1:
            netns = {pre[h].get("netns") for h in hosts}
            out.append({"hosts": sorted(hosts), "netns_shared": len(netns) == 1 and None not in netns and "" not in netns})
    return out


def analyze_hosts(run, win: dict, nodes: list[dict]) -> dict:
    samples = run.samples
    roles = _roles(run, samples)
    machines = shared_machines(run)
    machine_of = {h: m for m in machines for h in m["hosts"]}
    rows: dict = {}
    charts = []
    if samples is not None and len(samples) and win["nbins"]:
        for host, g in samples.groupby("host"):
            row = rows.setdefault(host, {"host": host, "role": roles.get(host, "")})
            for metric, mg in g.groupby("metric"):
                row[f"{metric}_max"] = float(mg["value"].max())
                row[f"{metric}_mean"] = float(mg["value"].mean())
            agent_mem = _agent_memory_per_connection(g)
            if agent_mem is not None:
                row["memory_per_connection"] = agent_mem
            if host in machine_of:
                row["shared_machine"] = machine_of[host]["hosts"]

        def shared(host, metric):  # this host's figure is the machine's, charted once for the machine
            m = machine_of.get(host)
            return m is not None and metric in MACHINE_METRICS and (metric != "established" or m["netns_shared"])

        # gateways and generators get charts of their own; every other role shares 'infrastructure' charts
        group_of = {h: (r if r in ("gateway", "generator") else "infrastructure") for h, r in roles.items()}
        groups = [g for g in ("gateway", "generator", "infrastructure")
                  if any(group_of.get(h, "infrastructure") == g for h in samples["host"].unique())]
        for role in groups:
            in_role = samples[samples["host"].map(lambda h: group_of.get(h, "infrastructure")) == role]
            for metric, title, unit in HOST_CHARTS:
                m = in_role[(in_role["metric"] == metric) & ~in_role["host"].map(lambda h: shared(h, metric))]
                if len(m):
                    charts.append({"title": f"{title} - {role} hosts", "unit": unit,
                                   "series": band(_binned(m, win))})
        for machine in machines:
            note = "one machine: " + ", ".join(machine["hosts"])
            for metric, title, unit in HOST_CHARTS:
                if not shared(machine["hosts"][0], metric):
                    continue
                m = samples[(samples["metric"] == metric) & samples["host"].isin(machine["hosts"])]
                if len(m):  # every host of it samples the same counters: one line, their mean per bin
                    series = {"machine": pd.DataFrame(_binned(m, win)).mean(axis=1).to_numpy()}
                    both = " (both ends)" if metric == "established" else ""
                    charts.append({"title": f"{title}{both} - one machine ({len(machine['hosts'])} hosts)", "unit": unit,
                                   "series": series, "note": note + (
                                       "; both ends of each connection among them count" if both else "")})
    by_node = {n["node"]: n for n in nodes}
    for host, node in by_node.items():
        row = rows.setdefault(host, {"host": host, "role": roles.get(host, "gateway")})
        row["memory_per_connection"] = node.get("memory_per_connection")
        row["fds_max"] = node.get("fds_max")
    probes_out = []
    for host, whens in run.probes.items():
        row = rows.setdefault(host, {"host": host, "role": roles.get(host, "")})
        names = sorted(set(whens.get("before", {})) | set(whens.get("after", {})))
        for name in names:
            before, after = whens.get("before", {}).get(name), whens.get("after", {}).get(name)
            entry = {"host": host, "role": row["role"], "probe": name, "before": before, "after": after,
                     "before_summary": probe_summary(name, before) if before is not None else None,
                     "after_summary": probe_summary(name, after) if after is not None else None}
            probes_out.append(entry)
            if name == "ss-s":
                row["ss_before"] = entry["before_summary"]
                row["ss_after"] = entry["after_summary"]
            if name == "lsof-count":
                row["lsof_before"] = (entry["before_summary"] or {}).get("lsof-count")
                row["lsof_after"] = (entry["after_summary"] or {}).get("lsof-count")
    # preflight facts in run.json ("sysctl:<name>": value per host), e.g. somaxconn for the backlog check
    sysctls: dict = {}
    pre = (run.run.get("preflight") or {}).get("hosts") or {}
    for host, facts in pre.items() if isinstance(pre, dict) else ():
        for k, v in (facts.items() if isinstance(facts, dict) else ()):
            if k.startswith("sysctl:"):
                sysctls.setdefault(k[7:], {})[host] = v
    infra = [p for p in probes_out if p["probe"] in ("etcd-health", "etcd-status", "redis-info", "kafka-topics")]
    system = [p for p in probes_out if p not in infra]
    ordered = sorted(rows.values(), key=lambda r: (ROLE_ORDER.index(r["role"]) if r["role"] in ROLE_ORDER else len(ROLE_ORDER),
                                                   r["role"], r["host"]))
    return {"rows": ordered, "charts": charts, "infra": infra, "system_probes": system, "roles": roles, "sysctls": sysctls,
            "machines": machines,
            "samples_present": samples is not None and len(samples) > 0, "probes_present": bool(run.probes)}
