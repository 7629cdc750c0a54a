"""Preflight: measure every host before load starts and refuse a plan the fleet cannot carry."""

from __future__ import annotations

import time

from loadgen.errors import UsageError
from loadgen.fleet.hosts import parallel
from loadgen.fleet.shell import loadgen_command

# Spec tuning, checked live (reported; the kernel_tuning role applies it)
SPEC_SYSCTLS = {
    "generators": {"net.ipv4.ip_local_port_range": "1024 65535", "net.ipv4.tcp_tw_reuse": "1"},
    "gateways": {"net.core.somaxconn": "65535", "net.ipv4.tcp_max_syn_backlog": "65535"},
}
AGENT_BYTES_PER_CONN = 16 * 1024  # measured agent RSS per idle connection is below this (bench/)
CLOCK_SKEW_LIMIT_S = 1.0
CLOCK_SAMPLES = 5
BOOT_ID = "/proc/sys/kernel/random/boot_id"  # one per running kernel: hosts that share it share a clock and CPUs


def _facts_script(keys: list[str]) -> str:
    reads = "; ".join(f"echo sysctl:{k}=$(sysctl -n {k} 2>/dev/null | tr -s '\\t ' ' ')" for k in keys)
    return ("echo nofile_hard=$(ulimit -Hn); echo cores=$(nproc); "
            "echo mem_available_kb=$(awk '/MemAvailable/{print $2}' /proc/meminfo); "
            f"echo boot_id=$(cat {BOOT_ID} 2>/dev/null); echo netns=$(readlink /proc/self/ns/net 2>/dev/null); "
            "echo port_range=$(cat /proc/sys/net/ipv4/ip_local_port_range | tr -s '\\t ' ' '); " + reads)


def local_boot_id() -> str | None:
    try:
        with open(BOOT_ID) as f:
            return f.read().strip() or None
    except OSError:
        return None


def clock_offset(host, samples: int = CLOCK_SAMPLES) -> dict:
    """Offset of the host's clock from ours, NTP-style: the sample with the shortest round trip wins.

    The remote clock was read at some instant within that round trip, so the estimate (remote minus the
    round trip's midpoint) is off by at most half the round trip: that is its stated error."""
    best = None
    for _ in range(samples):
        t0 = time.time()
        r = host.run("date +%s.%N", timeout=10)
        t1 = time.time()
        try:
            remote = float(r.stdout.strip())
        except ValueError:
            continue
        if best is None or t1 - t0 < best[1]:
            best = (remote - (t0 + t1) / 2, t1 - t0)
    if best is None:
        return {"clock_offset_ms": None}
    return {"clock_offset_ms": round(best[0] * 1000, 3), "clock_rtt_ms": round(best[1] * 1000, 3),
            "clock_error_ms": round(best[1] * 500, 3), "clock_samples": samples}


def describe_clock(f: dict) -> str:
    if f.get("clock_same_kernel"):
        return "clock offset 0 (the controller's own clock: same kernel)"
    if f.get("clock_offset_ms") is None:
        return "clock offset: not measured"
    error = f.get("clock_error_ms")
    return (f"clock offset {f['clock_offset_ms']:+.3f} ms"
            + (f" +/- {error:.3f} ms (half the {f['clock_rtt_ms']:.3f} ms round trip of the best of "
               f"{f.get('clock_samples', '?')} samples)" if error is not None else ""))


def check_fleet(ct) -> dict:
    """Facts per host, the warnings and the wall time of one round of `loadgen --version` over every generator at
    once (`generator_round_s`); raises LoadgenError with the numbers when the plan cannot fit."""
    plan = ct.plan
    keys = sorted({k for d in SPEC_SYSCTLS.values() for k in d})

    controller = local_boot_id()

    def one(host):
        r = host.run(_facts_script(keys), timeout=15)
        facts = {}
        for line in r.stdout.splitlines():
            k, _, v = line.partition("=")
            facts[k.strip()] = v.strip()
        if controller and facts.get("boot_id") == controller:  # one kernel, one clock: nothing to measure
            facts.update({"clock_offset_ms": 0.0, "clock_error_ms": 0.0, "clock_same_kernel": True})
        else:
            facts.update(clock_offset(host))
        return facts

    def version(host):
        return host.run(f"{loadgen_command(host)} --version", timeout=30)

    facts = parallel(ct.hosts, one)
    problems, warnings = [], []
    untuned: dict[tuple, list[str]] = {}
    t0 = time.time()  # a round over every generator at once: the start lead follows its wall time (fleet/lead.py)
    versions = parallel(ct._subset(ct.live_generators), version)
    generator_round_s = round(time.time() - t0, 3)
    for name, r in versions.items():
        if not getattr(r, "ok", False):
            problems.append(f"{name}: loadgen is not runnable ({(getattr(r, 'stderr', '') or str(r)).strip()[:120]})")
        else:
            facts[name]["loadgen_version"] = r.stdout.strip()
    for name, f in facts.items():
        if isinstance(f, Exception):
            problems.append(f"{name}: {f}")
            continue
        off = f.get("clock_offset_ms")
        if off is not None and abs(off) > CLOCK_SKEW_LIMIT_S * 1000:
            problems.append(f"{name}: {describe_clock(f)}: more than {CLOCK_SKEW_LIMIT_S:g}s off the controller; "
                            "lockstep start needs NTP")
        for role in ct.inv.roles_of(name):
            for key, want in SPEC_SYSCTLS.get(role, {}).items():
                live = f.get(f"sysctl:{key}")
                if live != want:
                    untuned.setdefault((key, live or "unreadable", want), []).append(name)
    for name in ct.live_generators:
        f = facts.get(name)
        if not isinstance(f, dict):
            continue
        peak = ct.agent_plans[name].peak_connections
        ips = len(ct.agent_plans[name].local_ips or [None])
        try:
            low, high = (int(x) for x in f["port_range"].split())
            ports = high - low + 1
            if peak > ports * ips * len(plan.endpoints):
                problems.append(f"{name}: {peak:,} connections > ephemeral ports {ports:,} x source IPs {ips} x "
                                f"gateway endpoints {len(plan.endpoints)} = {ports * ips * len(plan.endpoints):,}")
            mem = int(f["mem_available_kb"]) * 1024
            if peak * AGENT_BYTES_PER_CONN > mem:
                problems.append(f"{name}: {peak:,} connections need ~{peak * AGENT_BYTES_PER_CONN / 2**20:,.0f} MiB, "
                                f"{mem / 2**20:,.0f} MiB available")
            f["connections_planned"] = peak
            f["fd_limit_per_process"] = int(f["nofile_hard"]) if f["nofile_hard"].isdigit() else f["nofile_hard"]
        except (KeyError, ValueError):
            warnings.append(f"{name}: could not read port range / memory")
    # one line per sysctl, naming the hosts (a fleet of 200 must not print 200 lines)
    for (key, live, want), names in sorted(untuned.items()):
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        warnings.append(f"{key} = {live} (spec: {want}) on {shown}; apply playbooks/prepare.yml")
    for w in warnings:
        print(f"preflight: warning: {w}")
    if problems:
        raise UsageError("preflight refused the plan: " + "; ".join(problems))
    return {"hosts": facts, "warnings": warnings, "generator_round_s": generator_round_s}
