"""Why a step failed, named from the data of that step, in this order:

1. the generators (a worker whose sends go out >= 1 s late in half its seconds or whose lag grew by a second
   over the hold, one that wrote fewer than half its per-second rows, an agent's CPU >= 80 % of what its workers
   may use, or connects failing for want of ports or open files on the generator): then the knee is the
   generators' limit, NOT the gateway's capacity;
2. the gateway's connection limit (handshakes refused with 503: rejected_full in its /metrics, `rejected` on the
   agents);
3. gateway CPU at or near what it may really use (>= 85 % in the hold's busiest second): one core for its event loop, fewer when its affinity
   or cgroup cpu quota allows less (read live from the host: probes' gateway_cpu_limit), never assumed;
4. gateway memory (the host's memory >= 95 % used), 5. open files (>= 95 % of its live limit),
6. backend errors (the gateway's errors_total by kind: the registry or Kafka in cluster mode).
Nothing found: the failing criterion is named with "no resource ran out in the data".
"""

from __future__ import annotations

LATE_SHARE = 0.5  # half a worker's seconds with a send >= 1 s late (judge.LATE_MS) ...
LAG_GROWTH_MS = 1000  # ... or its lag grew by a second over the hold: the generator cannot keep up
ROWS_SHARE = 0.5  # a worker that wrote fewer of the hold's per-second rows is behind (or gone)
AGENT_CPU_BUSY = 0.80
GATEWAY_CPU_BUSY = 0.85
MEMORY_FULL = 0.95
FDS_FULL = 0.95


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def resources(samples: list[tuple], start: float, end: float) -> dict:
    """Per host, the mean and the max of each sampled metric in [start, end] (samples: ts, host, role, metric,
    value). A rate (a *_cpu_percent) covers the time since its host's previous sample, so each host's first one
    after `end` is counted too: it covers the window's last part, and the whole window when a loaded machine took
    no sample inside it."""
    acc: dict = {}
    tail: set = set()
    for ts, host, _role, metric, value in sorted(samples, key=lambda s: s[0]):
        if start <= ts <= end:
            acc.setdefault(host, {}).setdefault(metric, []).append(float(value))
        elif ts > end and metric.endswith("_cpu_percent") and (host, metric) not in tail:
            tail.add((host, metric))
            acc.setdefault(host, {}).setdefault(metric, []).append(float(value))
    return {h: {m: round(sum(v) / len(v), 3) for m, v in ms.items()} | {"max_" + m: max(v) for m, v in ms.items()}
            for h, ms in acc.items()}


def name_cause(step: dict, res: dict, gateway_deltas: dict, agent_workers: dict, gateways: list[str],
               generators: list[str]) -> dict:
    """step: judge.step_figures of the failing step; res: resources() over its hold; gateway_deltas: per node,
    /metrics counter deltas over the step ({"rejected_full", "errors": {kind: n}}); agent_workers: per generator,
    its worker count."""
    failing = [r for r in step["criteria"] if r["passed"] is not True]
    failing_text = "; ".join(f"{r['label']} {_fmt(r['actual'])} (target {r['op']} {r['target']:g})" for r in failing)

    # 1. the generators
    hold_s = max(1, int(step["window"]["end"] - step["window"]["hold"]))
    for agent in generators:
        wrote = step.get("hold_rows_by_agent", {}).get(agent, 0)
        expected = (agent_workers.get(agent) or 1) * hold_s
        if wrote < ROWS_SHARE * expected:
            return _cause("generator", f"generator {agent} wrote {wrote} of its {expected} per-second rows of the hold "
                          "(its event loops are behind): the load generators are the limit, not the gateway", False,
                          {"agent": agent, "rows": wrote, "expected": expected})
    for agent, lag in sorted(step.get("send_lag", {}).items()):
        if lag["rows"] < ROWS_SHARE * lag["seconds"]:
            return _cause("generator", f"generator {agent}: worker {lag['worker']} wrote {lag['rows']} of "
                          f"{lag['seconds']} per-second rows in the hold (its event loop is behind): the load "
                          "generators are the limit, not the gateway", False, {"agent": agent, **lag})
        if (lag["late_share"] or 0) >= LATE_SHARE or (lag["growth_ms"] or 0) >= LAG_GROWTH_MS:
            return _cause("generator", f"generator {agent}: worker {lag['worker']} fell behind its send schedule "
                          f"({lag['end_ms'] / 1000:.1f} s late at the end of the hold, {lag['growth_ms'] / 1000:+.1f} s "
                          f"over it; {lag['late_share']:.0%} of its seconds >= 1 s late): the load generators are the "
                          "limit, not the gateway", False, {"agent": agent, **lag})
    for agent in generators:
        cpu = res.get(agent, {}).get("agent_cpu_percent")
        workers = agent_workers.get(agent) or 1
        if cpu is not None and cpu >= AGENT_CPU_BUSY * 100 * workers:
            return _cause("generator", f"generator {agent} used {cpu:.0f} % CPU with {workers} worker(s) (>= "
                          f"{AGENT_CPU_BUSY:.0%} of what they may use): the load generators are the limit, not the "
                          "gateway", False, {"agent": agent, "cpu_percent": cpu, "workers": workers})
    failed = step["connections"].get("failed_by_reason", {})
    for reason in ("no_ports", "fd_limit"):
        if failed.get(reason):
            return _cause("generator", f"generators ran out of {'source ports' if reason == 'no_ports' else 'open files'}"
                          f" ({failed[reason]:,} connects failed): the load generators are the limit, not the gateway",
                          False, {"reason": reason, "count": failed[reason]})

    # 2. the gateway's connection limit
    full = {n: d.get("rejected_full", 0) for n, d in gateway_deltas.items() if d.get("rejected_full")}
    if full or failed.get("rejected"):
        where = ", ".join(f"{n} {c:,}" for n, c in sorted(full.items())) or "the agents saw HTTP 503"
        peak = max((res.get(n, {}).get("max_gateway_active_connections") or 0 for n in gateways), default=0)
        return _cause("connection_limit", f"gateway connection limit: handshakes refused with 503 "
                      f"(rejected_full: {where}; {failed.get('rejected', 0):,} rejected connects); a node held at most "
                      f"{peak:,.0f} connections (server.max_connections)", True,
                      {"rejected_full": full, "rejected": failed.get("rejected", 0), "peak_connections": peak})

    # 3. gateway CPU, against the CPU it may really use
    for node in gateways:
        r = res.get(node, {})
        # its busiest second of the hold: a step that fails at the edge keeps the loop saturated only in bursts,
        # which the hold's mean dilutes below the threshold
        cpu, limit = r.get("max_gateway_cpu_percent"), r.get("gateway_cpu_limit")
        usable = min(1.0, limit) if limit else 1.0  # one event loop: at most one core
        if cpu is not None and cpu >= GATEWAY_CPU_BUSY * 100 * usable:
            return _cause("gateway_cpu", f"gateway CPU: {node} used {cpu:.0f} % of a core where it may use "
                          f"{usable * 100:.0f} % (affinity and cgroup quota, read live; one event loop): "
                          "saturated", True, {"node": node, "cpu_percent": cpu, "usable_percent": usable * 100})

    # 4. memory, 5. open files
    for node in gateways:
        r = res.get(node, {})
        used, total = r.get("max_host_mem_used_bytes"), r.get("host_mem_total_bytes")
        if used and total and used >= MEMORY_FULL * total:
            return _cause("gateway_memory", f"gateway memory: {node}'s host had {used / total:.0%} of its memory in "
                          f"use (gateway RSS {(r.get('max_gateway_rss_bytes') or 0) / 2**20:.0f} MiB)", True,
                          {"node": node, "used": used, "total": total})
        fds, fd_limit = r.get("max_gateway_fds"), r.get("gateway_fd_limit")
        if fds and fd_limit and fds >= FDS_FULL * fd_limit:
            return _cause("open_files", f"open files: {node} held {fds:,.0f} of its {fd_limit:,.0f} allowed", True,
                          {"node": node, "fds": fds, "limit": fd_limit})

    # 6. backend errors
    errors = {n: {k: v for k, v in d.get("errors", {}).items() if v and k != "none"} for n, d in gateway_deltas.items()}
    errors = {n: e for n, e in errors.items() if e}
    if errors:
        text = "; ".join(f"{n}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(e.items())) for n, e in sorted(errors.items()))
        return _cause("backend_errors", f"gateway errors: {text}", True, {"errors": errors})

    unsampled = [n for n in gateways if res.get(n, {}).get("max_gateway_cpu_percent") is None]
    missing = f"; no CPU sample of {', '.join(unsampled)} in the hold" if unsampled else ""
    return _cause("unknown", f"{failing_text or 'the step failed'}: no resource ran out in the data "
                  f"(generators, connection limit, CPU, memory, open files, backends){missing}", True,
                  {"unsampled_gateways": unsampled} if unsampled else {})


def _cause(kind: str, text: str, gateway_capacity: bool, evidence: dict) -> dict:
    return {"kind": kind, "text": text, "gateway_capacity": gateway_capacity, "evidence": evidence}


def _fmt(v) -> str:
    return "not measured" if v is None else f"{v:.4g}"
