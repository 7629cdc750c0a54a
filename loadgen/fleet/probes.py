"""Host probes: what the spec's 'Monitoring During Load Tests' section runs, per host role.

`snapshot_script` gives raw outputs before and after the run (saved as text files); `sample_script`
gives key=value lines sampled during the run, turned into probes/samples.csv rows.
"""

from __future__ import annotations

import re
import shlex

SECTION = "=====8<===== "


def gateway_pid_command(host) -> str:
    """Shell that prints the gateway's PID (fab-managed: its pid file; else the systemd unit's MainPID)."""
    pidfile = host.vars.get("_gateway_pidfile")
    if pidfile:
        return f"cat {shlex.quote(pidfile)} 2>/dev/null"
    unit = host.vars.get("gateway_unit", "im-gateway")
    return f"systemctl show -p MainPID --value {shlex.quote(unit)} 2>/dev/null | grep -v '^0$'"


def _metrics_url(host) -> str:
    addr = host.vars.get("gateway_metrics_host", "127.0.0.1")
    return f"http://{addr}:{int(host.vars.get('gateway_metrics_port', 9090))}/metrics"


def _http_get(url: str) -> str:
    code = f"import urllib.request;print(urllib.request.urlopen({url!r},timeout=3).read().decode())"
    return f"python3 -c {shlex.quote(code)}"


def snapshot_commands(host, roles: list[str]) -> dict[str, str]:
    """name -> shell command; each output is saved as probes/<host>/<phase>/<name>.txt."""
    cmds = {
        "ss-s": "ss -s",
        "established": "ss -Htn state established | wc -l",
        "uptime-loadavg": "cat /proc/loadavg",
        "free": "free -b",
        "nofile-limit": "ulimit -Sn; ulimit -Hn",
    }
    v = host.vars
    if "gateways" in roles:
        pid = gateway_pid_command(host)
        cmds["gateway-ps"] = f"P=$({pid}); [ -n \"$P\" ] && ps -o pid,rss,vsz,pcpu,etime,nlwp,cmd -p $P"
        cmds["lsof-count"] = (f"P=$({pid}); [ -n \"$P\" ] && (command -v lsof >/dev/null && lsof -p $P 2>/dev/null | wc -l"
                              f" || ls /proc/$P/fd | wc -l)")
        cmds["gateway-limits"] = f"P=$({pid}); [ -n \"$P\" ] && grep 'open files' /proc/$P/limits"
        cmds["metrics"] = _http_get(_metrics_url(host))
        # listen-queue overflows are the evidence behind "connection timeouts" (spec troubleshooting #1)
        cmds["nstat"] = "nstat -az TcpExtListenOverflows TcpExtListenDrops"
        cmds["sysctl"] = "sysctl net.core.somaxconn net.ipv4.tcp_max_syn_backlog"
    if "etcd" in roles:
        ep = f"http://{v.get('ansible_host', '127.0.0.1')}:{int(v.get('etcd_client_port', 2379))}"
        cmds["etcd-health"] = f"ETCDCTL_API=3 etcdctl --endpoints={ep} endpoint health --cluster"
        cmds["etcd-status"] = f"ETCDCTL_API=3 etcdctl --endpoints={ep} endpoint status --cluster -w table"
    if "redis" in roles:
        auth = v.get("redis_password")
        env = f"REDISCLI_AUTH={shlex.quote(str(auth))} " if auth else ""
        base = f"{env}redis-cli -h {v.get('ansible_host', '127.0.0.1')} -p {int(v.get('redis_port', 6379))}"
        cmds["redis-info"] = f"{base} INFO stats; {base} INFO memory; {base} INFO replication"
    if "kafka" in roles:
        topics = v.get("kafka_topics_command", "/opt/kafka/bin/kafka-topics.sh")
        port = int(v.get("kafka_port", 9092))
        cmds["kafka-topics"] = f"{topics} --bootstrap-server {v.get('ansible_host', '127.0.0.1')}:{port} --describe"
    return cmds


def snapshot_script(cmds: dict[str, str]) -> str:
    """One round trip per host: every command, its output after a section marker."""
    parts = [f"echo {shlex.quote(SECTION + name)}; ( {cmd} ) 2>&1; echo \"[exit $?]\"" for name, cmd in cmds.items()]
    return "; ".join(parts)


def split_snapshot(output: str) -> dict[str, str]:
    out, name, buf = {}, None, []
    for line in output.splitlines():
        if line.startswith(SECTION):
            if name:
                out[name] = "\n".join(buf) + "\n"
            name, buf = line[len(SECTION):].strip(), []
        else:
            buf.append(line)
    if name:
        out[name] = "\n".join(buf) + "\n"
    return out


# Shell: the cpu quotas of the cgroups of process $P and of their parents, ';'-separated "QUOTA PERIOD" pairs (v2's
# cpu.max: "max 100000" when unlimited; v1: quota -1)
_CPU_QUOTAS = (
    "M2=$(awk '$3==\"cgroup2\"{print $2; exit}' /proc/mounts); "
    "M1=$(awk '$3==\"cgroup\" && $4 ~ /(^|,)cpu(,|$)/{print $2; exit}' /proc/mounts); "
    "C2=$(awk -F: '$1==\"0\"{print $3}' /proc/$P/cgroup); "
    "C1=$(awk -F: '$2 ~ /(^|,)cpu(,|$)/{print $3}' /proc/$P/cgroup); "
    "( if [ -n \"$M2\" ]; then d=$M2$C2; while :; do cat $d/cpu.max 2>/dev/null; "
    "[ \"${#d}\" -le \"${#M2}\" ] && break; d=${d%/*}; done; fi; "
    "if [ -n \"$M1\" ] && [ -n \"$C1\" ]; then d=$M1$C1; while :; do "
    "[ -r $d/cpu.cfs_quota_us ] && echo $(cat $d/cpu.cfs_quota_us) $(cat $d/cpu.cfs_period_us); "
    "[ \"${#d}\" -le \"${#M1}\" ] && break; d=${d%/*}; done; fi ) | tr '\\n' ';'"
)


def cpu_limit(affinity: str, quotas: str) -> float | None:
    """Cores a process may use: its affinity list ("0-1,3") and cgroup quotas ("25000 100000;max 100000;")."""
    cores = None
    for part in affinity.split(","):
        lo, _, hi = part.strip().partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            cores = (cores or 0) + (int(hi) - int(lo) + 1 if hi else 1)
    for pair in quotas.split(";"):
        quota, _, period = pair.strip().partition(" ")
        if quota.isdigit() and period.strip().isdigit() and int(period) > 0 and int(quota) > 0:
            share = int(quota) / int(period)
            cores = share if cores is None else min(cores, share)
    return cores


def sample_script(host, roles: list[str]) -> str:
    lines = [
        "echo ts=$(date +%s.%N)",
        "echo cpu=$(head -1 /proc/stat | cut -d' ' -f2-)",
        "echo mem_used=$(free -b | awk '/^Mem:/{print $3}')",
        "echo mem_total=$(free -b | awk '/^Mem:/{print $2}')",
        # the kernel's own count (TCP CurrEstab: established + close-wait), O(1): `ss | wc -l` walks every
        # socket - measured, 9 samplers on one machine holding 200,000 sockets took most of a core
        "echo established=$(awk '/^Tcp:/ {if (n++) print $10}' /proc/net/snmp)",
    ]
    if "gateways" in roles:
        lines += [
            f"P=$({gateway_pid_command(host)})",
            'if [ -n "$P" ] && [ -r /proc/$P/stat ]; then '
            "echo gw_ticks=$(awk '{print $14+$15}' /proc/$P/stat); "
            "echo gw_rss_kb=$(awk '/^VmRSS/{print $2}' /proc/$P/status); "
            "echo gw_fds=$(ls -U /proc/$P/fd | wc -l); "
            "echo gw_fd_limit=$(awk '/^Max open files/{print $4}' /proc/$P/limits); "
            # the CPU it may really use, read live: its affinity and every cgroup cpu quota above it (v2 cpu.max,
            # v1 cfs quota/period), not the host's core count (gateway_cpu_limit)
            "echo gw_affinity=$(awk '/^Cpus_allowed_list/{print $2}' /proc/$P/status); "
            f"echo gw_cpu_max=$({_CPU_QUOTAS}); fi",
            # nothing (not 0) when the scrape failed or timed out: a busy gateway whose /metrics answers late
            # must not count as a gateway with no connections (that skewed the per-node hold means)
            f"echo gw_active=$({_http_get(_metrics_url(host))} 2>/dev/null | awk '/^im_gateway_active_connections/{{s+=$2; n++}} END{{if (n) print s}}')",
        ]
    # CPU of the cluster backends on this host (clock ticks of their processes; [x] keeps the pattern from
    # matching this script's own shell): the report names which part ran out when a run saturates
    for role, name, pattern in (("kafka", "kafka", "-f '[k]afka[.]Kafka'"), ("etcd", "etcd", "-x etcd"),
                                ("redis", "redis", "-x redis-server")):
        if role in roles:
            lines.append(f"echo {name}_ticks=$(for p in $(pgrep {pattern}); do awk '{{print $14+$15}}' "
                         "/proc/$p/stat 2>/dev/null; done | awk '{s+=$1} END{if (NR) print s}')")
    if "generators" in roles and host.vars.get("_agent_pidfile"):
        # the agent's memory: its process and its forked workers; its open connections from status.json
        lines += [
            f"P=$(cat {shlex.quote(host.vars['_agent_pidfile'])} 2>/dev/null)",
            'if [ -n "$P" ] && [ -r /proc/$P/status ]; then '
            "echo ag_rss_kb=$(ps -o rss= --pid $P --ppid $P | awk '{s+=$1} END{if (s > 0) print s}'); "
            # its CPU, workers included: on a machine shared with gateways the host's CPU is not the agent's
            "echo ag_ticks=$(for c in $P $(ps -o pid= --ppid $P); do cat /proc/$c/stat 2>/dev/null; done "
            "| awk '{s+=$14+$15} END{if (NR) print s}'); fi",
            f"echo ag_active=$(grep -o '\"active\": [0-9]*' {shlex.quote(host.vars['_agent_status'])} 2>/dev/null "
            "| grep -o '[0-9]*$')",
        ]
    # stamped at both ends: a sample is an instant between them (the /metrics fetch alone can take 100 ms)
    return "; ".join(lines + ["echo ts_end=$(date +%s.%N)"])


def parse_sample(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[a-z_]+", key):
            out[key] = value.strip()
    return out


class SampleDeltas:
    """Turns successive raw samples of one host into rows (CPU % needs two samples)."""

    CLK_TCK = 100

    def __init__(self) -> None:
        self.prev: dict[str, dict] = {}

    def rows(self, host: str, role: str, raw: dict[str, str]) -> list[tuple]:
        try:
            ts = float(raw["ts"])
        except (KeyError, ValueError):
            return []
        try:
            ts = (ts + float(raw["ts_end"])) / 2
        except (KeyError, ValueError):
            pass
        rows = []

        def add(metric, value):
            rows.append((round(ts, 3), host, role, metric, value))

        cpu = [int(x) for x in raw.get("cpu", "").split()[:8] if x.isdigit()]
        prev = self.prev.get(host)
        if cpu and prev and prev.get("cpu"):
            busy = sum(cpu) - cpu[3] - (cpu[4] if len(cpu) > 4 else 0)
            pbusy = sum(prev["cpu"]) - prev["cpu"][3] - (prev["cpu"][4] if len(prev["cpu"]) > 4 else 0)
            total = sum(cpu) - sum(prev["cpu"])
            if total > 0:
                add("host_cpu_percent", round(100.0 * (busy - pbusy) / total, 2))
        limit = cpu_limit(raw.get("gw_affinity", ""), raw.get("gw_cpu_max", ""))
        if limit is not None:
            add("gateway_cpu_limit", round(limit, 3))
        for key, metric, scale in (("mem_used", "host_mem_used_bytes", 1), ("mem_total", "host_mem_total_bytes", 1),
                                   ("gw_fd_limit", "gateway_fd_limit", 1), ("established", "established", 1),
                                   ("gw_rss_kb", "gateway_rss_bytes", 1024), ("gw_fds", "gateway_fds", 1),
                                   ("gw_active", "gateway_active_connections", 1),
                                   ("ag_rss_kb", "agent_rss_bytes", 1024), ("ag_active", "agent_active_connections", 1)):
            if raw.get(key, "").strip().isdigit():
                add(metric, int(raw[key]) * scale)
        state = {"cpu": cpu, "ts": ts}
        for key, metric in (("gw_ticks", "gateway_cpu_percent"), ("ag_ticks", "agent_cpu_percent"),
                            *((f"{svc}_ticks", f"{svc}_cpu_percent") for svc in ("kafka", "etcd", "redis"))):
            ticks = raw.get(key, "")
            state[key] = int(ticks) if ticks.isdigit() else None
            # a worker that exits takes its ticks along: a negative delta is not a CPU figure
            if state[key] is not None and prev and prev.get(key) is not None and ts > prev["ts"] and state[key] >= prev[key]:
                add(metric, round((state[key] - prev[key]) / self.CLK_TCK / (ts - prev["ts"]) * 100, 2))
        self.prev[host] = state
        return rows
