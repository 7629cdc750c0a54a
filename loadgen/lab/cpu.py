"""Where the machine's CPU goes during a lab run: CPU time per lab host and per part (gateway, agent,
Kafka, etcd, Redis, the rest), sampled from the controller's /proc.

The nspawn hosts share the controller's kernel, so every container process is visible here; each is
attributed to its host through its cgroup (loadgen.lab puts each container in <cgroup_name>/<host>)
and to a part by its command line. Processes outside the lab (other users of the machine) are one
row too, so a figure is never read without the machine's load beside it.

    python -m loadgen.lab cpu --seconds 30 [--json]
"""

from __future__ import annotations

import os
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
# command-line fragment -> part; the first match wins (the agent's forked workers keep its command line)
PARTS = (("kafka.Kafka", "kafka"), ("etcd", "etcd"), ("redis-server", "redis"), ("loadgen gateway", "gateway"),
         ("loadgen run", "agent"), ("ansible", "ansible/ssh"), ("sshd", "ansible/ssh"))


def _part(cmdline: str) -> str:
    for fragment, part in PARTS:
        if fragment in cmdline:
            return part
    return "other"


def _host(pid: str, cgroup_name: str) -> str | None:
    """The lab host a process runs on, None outside the lab."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        marker = f"/{cgroup_name}/"
        if marker in path:
            return path.split(marker, 1)[1].split("/", 1)[0]
    return None


def snapshot(cgroup_name: str = "loadgen-lab") -> dict[tuple[str, str, str], float]:
    """(host or '(outside the lab)', part, pid) -> CPU seconds used so far (user + system)."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
        host = _host(pid, cgroup_name) or "(outside the lab)"
        part = _part(cmdline) if host != "(outside the lab)" else "other"
        out[(host, part, pid)] = seconds
    return out


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine so far (/proc/stat)."""
    cpu = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(cpu) - cpu[3] - cpu[4], sum(cpu)


def measure(seconds: float, cgroup_name: str = "loadgen-lab") -> dict:
    """CPU per (host, part) over `seconds`, in percent of one core, with the machine's busy share."""
    t0, before, (b0, n0) = time.monotonic(), snapshot(cgroup_name), machine_busy()
    time.sleep(seconds)
    t1, after, (b1, n1) = time.monotonic(), snapshot(cgroup_name), machine_busy()
    wall = t1 - t0
    rows: dict[tuple[str, str], float] = {}
    for key, used in after.items():
        delta = used - before.get(key, 0.0)  # a process started meanwhile counts from zero
        if delta > 0:
            rows[key[:2]] = rows.get(key[:2], 0.0) + delta
    table = sorted(({"host": h, "part": p, "core_percent": round(100 * s / wall, 1)} for (h, p), s in rows.items()),
                   key=lambda r: -r["core_percent"])
    by_part: dict[str, float] = {}
    for r in table:
        part = r["part"] if r["host"] != "(outside the lab)" else "outside the lab"
        by_part[part] = round(by_part.get(part, 0.0) + r["core_percent"], 1)
    return {"seconds": round(wall, 1), "cores": os.cpu_count(), "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            "machine_busy_percent": round(100 * (b1 - b0) / max(1, n1 - n0), 1),
            "by_part": dict(sorted(by_part.items(), key=lambda kv: -kv[1])), "rows": table}


def format_table(result: dict) -> str:
    lines = [f"CPU over {result['seconds']} s, % of one core ({result['cores']} cores; machine busy "
             f"{result['machine_busy_percent']} %, loadavg {' '.join(result['loadavg'])})",
             "| part | % of one core |", "|---|---|"]
    lines += [f"| {part} | {pct} |" for part, pct in result["by_part"].items()]
    lines += ["", "| host | part | % of one core |", "|---|---|---|"]
    lines += [f"| {r['host']} | {r['part']} | {r['core_percent']} |" for r in result["rows"] if r["core_percent"] >= 0.5]
    return "\n".join(lines)
