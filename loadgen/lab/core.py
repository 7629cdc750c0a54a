"""Lab implementation: rootfs cache, bridge, proxy, nspawn hosts, inventory, teardown."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from loadgen.errors import UsageError
from loadgen.lab.kafka_dist import KAFKA_VERSION, build_kafka_archive, sha256

REPO_ROOT = Path(__file__).resolve().parents[2]

# Bump when the rootfs recipe below changes: a cached rootfs with another stamp is rebuilt.
ROOTFS_RECIPE = "bookworm-minbase-v4"
ROOTFS_PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-apt", "iproute2",
    "sudo", "procps", "iputils-ping", "ca-certificates",
]
# Downloaded (not installed) into the rootfs apt cache, so the roles' apt installs are real
# installs that do not fetch ~250 MB per host through the proxy. Roles still work without it.
PRESEED_DEBS = [
    "etcd-server", "etcd-client", "redis-server", "redis-tools", "openjdk-17-jre-headless",
    "python3-venv", "lsof", "prometheus", "prometheus-node-exporter",
]
HOST_PACKAGES = {  # command -> Debian package that provides it on the controller
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "tinyproxy": "tinyproxy",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "mvn": "maven",
}
CGROUP_HIERARCHIES = ("systemd", "unified")
CPU_CGROUP = Path("/sys/fs/cgroup/cpu")  # cgroup v1's cpu controller (this machine mounts v1 controllers + v2)
CPU_SHARES = 1024  # the kernel's weight of one task group (and of one autogroup: one session)
MAX_SHARES = 262144  # the kernel's largest cpu.shares
# The load of the lab's own cluster test, from the capacity measured on this project's 2-core machine with
# the whole lab on it (docs/cluster-capacity.md): the 2 gateway nodes, 2 agents, 3 Kafka brokers, 3 etcd and
# 3 Redis use ~1 core at 1,000 msg/s and saturate both cores near 2,000 msg/s (p99 0.7 s). Half of the load
# that still passed (1,000 msg/s, p99 143 ms) leaves room for the machine's other users.
LAB_DEFAULT_LOAD = {
    "stages": ["10s:1000", "50s:1000", "5s:0"], "rate": 0.125,
    "why": "ramp to 1,000 users in 10 s, hold 50 s, ramp down 5 s, 0.125 msg/s each = 125 msg/s across the two "
           "gateway nodes (a fresh lab on a shared 2-core machine: its brokers still compiling, its host probes, "
           "the machine's other users: margin kept after p99 failures that the host probes caused, "
           "docs/cluster-capacity.md)",
}
# Sysctls that a container's network namespace refuses or lacks (RECIPE.md, measured): the lab
# inventory acknowledges them so kernel_tuning reports them as refused instead of failing.
LAB_REFUSED_SYSCTLS = [
    "net.core.rmem_max", "net.core.wmem_max", "net.core.rmem_default", "net.core.wmem_default",
    "net.core.netdev_max_backlog", "net.netfilter.nf_conntrack_max",
]


@dataclasses.dataclass
class LabConfig:
    lab_dir: Path = dataclasses.field(
        default_factory=lambda: Path(os.environ.get("LOADGEN_LAB_DIR", "/var/lib/loadgen-lab")))
    inventory_dir: Path = dataclasses.field(
        default_factory=lambda: Path(os.environ.get("LOADGEN_LAB_INVENTORY", REPO_ROOT / "inventory" / "lab")))
    # A second lab beside the first: other LOADGEN_LAB_DIR, _BRIDGE, _SUBNET and _INVENTORY.
    bridge: str = dataclasses.field(default_factory=lambda: os.environ.get("LOADGEN_LAB_BRIDGE", "lgbr0"))
    subnet: str = dataclasses.field(  # a /24; .1 is the controller's bridge address
        default_factory=lambda: os.environ.get("LOADGEN_LAB_SUBNET", "10.213.1"))
    first_host: int = 11
    proxy_port: int = 3128
    suite: str = "bookworm"
    mirror: str | None = None  # default: the controller's own Debian mirror

    @property
    def cgroup_name(self) -> str:
        return "loadgen-lab" if self.bridge == "lgbr0" else f"loadgen-lab-{self.bridge}"

    @property
    def bridge_ip(self) -> str:
        return f"{self.subnet}.1"

    @property
    def rootfs(self) -> Path:
        return self.lab_dir / "rootfs"

    @property
    def key(self) -> Path:
        return self.lab_dir / "keys" / "id_lab"

    @property
    def state_file(self) -> Path:
        return self.lab_dir / "state.json"


def log(msg: str) -> None:
    print(f"[lab {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    return subprocess.run(cmd, **kw)


# --------------------------------------------------------------------------- layout

# Hosts that are not generators: 3 infra (etcd + kafka + redis) and 2 gateways. `--generators N` is `--hosts N + 5`.
NON_GENERATOR_HOSTS = 5
# Hosts booted at once: 2 cores boot ~10 systemd containers together without ssh timing out; a batch's sshd is
# waited for before the next batch boots, so a scale lab never has a hundred boots competing.
BOOT_BATCH = 10
SSH_WAIT_S = 120.0  # per batch, retried every 0.2 s (ssh ConnectTimeout 2 s)
# Up-front budget per host, from measurements on this machine (docs in playbooks/README.md, "The scale lab"):
# an idle host ~30 MB; a generator with its agent and ~100 connections stays under 100 MB; an infra host runs
# Kafka (heap 320 MB), etcd and Redis; a gateway node holds the fleet's connections. Disk: the host's overlay
# upper layer after site.yml (venv ~200 MB, wheelhouse tar + unpacked ~60 MB, apt packages).
MEM_MB = {"infra": 900, "gateway": 400, "generator": 100}
DISK_MB_PER_HOST = 450
MEM_HEADROOM = 0.8  # of MemAvailable: the controller (fab, ansible) and the machine's other users keep the rest


def hosts_for(generators: int) -> int:
    """The lab size for *generators* generator hosts (plus 3 infra and 2 gateway hosts)."""
    if generators < 1:
        raise UsageError(f"--generators {generators}: needs at least 1")
    return generators + NON_GENERATOR_HOSTS


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_PER_HOST = 16  # a container's systemd, journald, networkd, logind, dbus and sshd take ~10 (measured)


def raise_inotify_limit(hosts: int) -> None:
    """Every container's systemd counts against root's one inotify-instance budget (default 128: the 16th host
    failed its boot with "Failed to create inotify object: Too many open files"). Raised, never lowered."""
    want = 256 + INOTIFY_PER_HOST * hosts
    have = int(INOTIFY_INSTANCES.read_text())
    if have < want:
        INOTIFY_INSTANCES.write_text(f"{want}\n")
        log(f"fs.inotify.max_user_instances {have} -> {want} ({hosts} hosts boot systemd)")


def _kinds(hosts: list[dict]) -> list[str]:
    return ["infra" if "etcd" in h["groups"] else "gateway" if "gateways" in h["groups"] else "generator"
            for h in hosts]


def _mem_available_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def preflight(cfg: LabConfig, plan: list[dict], mem_available_mb: int | None = None,
              disk_free_mb: int | None = None) -> None:
    """Refuse, in one line and before anything is touched, a lab the subnet, the RAM or the disk cannot hold."""
    n = len(plan)
    last = cfg.first_host + n - 1
    if last > 254:
        raise UsageError(f"{n} lab hosts do not fit in {cfg.subnet}.0/24 (addresses .{cfg.first_host}-.254: at most "
                         f"{255 - cfg.first_host} hosts, {255 - cfg.first_host - NON_GENERATOR_HOSTS} generators)")
    kinds = _kinds(plan)
    need_mem = sum(MEM_MB[k] for k in kinds)
    avail = _mem_available_mb() if mem_available_mb is None else mem_available_mb
    if need_mem > MEM_HEADROOM * avail:
        raise UsageError(f"{n} lab hosts need ~{need_mem:,} MB of memory ({kinds.count('generator')} generators x "
                         f"{MEM_MB['generator']} MB, infra and gateways); {avail:,} MB available, "
                         f"{MEM_HEADROOM:.0%} of it may be used")
    if disk_free_mb is None:
        probe = cfg.lab_dir if cfg.lab_dir.exists() else cfg.lab_dir.parent
        disk_free_mb = shutil.disk_usage(probe).free // 2**20
    need_disk = n * DISK_MB_PER_HOST
    if need_disk > disk_free_mb:
        raise UsageError(f"{n} lab hosts need ~{need_disk:,} MB of disk under {cfg.lab_dir} "
                         f"({DISK_MB_PER_HOST} MB each once deployed); {disk_free_mb:,} MB free")


def layout(hosts: int = 7) -> list[dict]:
    """Host names and groups for *hosts* lab hosts.

    The first three hosts are infra hosts carrying etcd, kafka and redis (three-node clusters),
    then two gateways, then generators. With fewer than 7 hosts the infra hosts also take the
    gateway and generator roles that have no dedicated host (at least one host each)."""
    if hosts < 3:
        raise UsageError(f"--hosts {hosts}: the lab needs at least 3 hosts (etcd, kafka and redis are 3-node clusters)")
    names: list[dict] = [{"name": f"infra{i}", "groups": ["etcd", "kafka", "redis"]} for i in (1, 2, 3)]
    rest = hosts - 3
    n_gw = min(2, (rest + 1) // 2)
    n_gen = rest - n_gw
    names += [{"name": f"gw{i}", "groups": ["gateways"]} for i in range(1, n_gw + 1)]
    names += [{"name": f"gen{i}", "groups": ["generators"]} for i in range(1, n_gen + 1)]
    if n_gw == 0:
        names[0]["groups"].append("gateways")
    if n_gen == 0:
        names[1 if n_gw == 0 else 0]["groups"].append("generators")
    return names


# --------------------------------------------------------------------------- host setup

def ensure_host_packages() -> None:
    missing = sorted({pkg for cmd, pkg in HOST_PACKAGES.items() if shutil.which(cmd) is None})
    if not missing:
        return
    log(f"installing host packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def host_mirror() -> str:
    """The Debian mirror the controller's own apt uses."""
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        m = re.search(r"^URIs:\s*(\S+)", f.read_text(), re.M)
        if m and "security" not in m.group(1):
            return m.group(1).rstrip("/")
    sl = Path("/etc/apt/sources.list")
    if sl.exists():
        m = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+\s", sl.read_text(), re.M)
        if m and "security" not in m.group(1):
            return m.group(1).rstrip("/")
    return "http://deb.debian.org/debian"


def _apt_proxy_env() -> dict:
    env = dict(os.environ)
    out = run(["apt-config", "dump"], capture_output=True, text=True, check=False).stdout
    m = re.search(r'^Acquire::http::Proxy "([^"]+)";', out, re.M)
    if m and m.group(1) not in ("", "false", "DIRECT"):
        env["http_proxy"] = m.group(1)
    return env


def build_rootfs(cfg: LabConfig) -> Path:
    """Build the shared, read-only lower layer once; reuse it while its recipe stamp matches."""
    stamp = cfg.rootfs / ".loadgen-rootfs"
    mirror = cfg.mirror or host_mirror()
    want = f"{ROOTFS_RECIPE} {cfg.suite} {mirror} {cfg.bridge_ip}:{cfg.proxy_port}\n"
    if stamp.exists() and stamp.read_text() == want:
        return cfg.rootfs
    tmp = cfg.lab_dir / "rootfs.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.monotonic()
    log(f"building {cfg.suite} rootfs from {mirror} (about a minute)")
    env = _apt_proxy_env()
    run(["debootstrap", "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}",
         cfg.suite, str(tmp), mirror], env=env, stdout=subprocess.DEVNULL)
    security = mirror.rsplit("/", 1)[0] + "/debian-security" if mirror.endswith("/debian") else mirror + "-security"
    (tmp / "etc/apt/sources.list").write_text(
        f"deb {mirror} {cfg.suite} main\n"
        f"deb {mirror} {cfg.suite}-updates main\n"
        f"deb {security} {cfg.suite}-security main\n")
    # Pre-seed apt lists and .debs, using the controller's network (the chroot shares it).
    chroot_env = dict(env, DEBIAN_FRONTEND="noninteractive")
    run(["chroot", str(tmp), "apt-get", "update", "-qq"], env=chroot_env)
    run(["chroot", str(tmp), "apt-get", "install", "-y", "-qq", "--download-only",
         "--no-install-recommends", *PRESEED_DEBS], env=chroot_env, stdout=subprocess.DEVNULL)
    (tmp / "etc/apt/apt.conf.d/01proxy").write_text(
        f'Acquire::http::Proxy "http://{cfg.bridge_ip}:{cfg.proxy_port}";\n'
        'Acquire::http::Timeout "30";\nAcquire::Retries "3";\n')
    (tmp / "etc/ssh/sshd_config.d/lab.conf").write_text(
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n")
    for key in (tmp / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # every clone gets its own host key
    run(["chroot", str(tmp), "systemctl", "enable", "systemd-networkd"], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    # apt timers in 7 containers would fight the roles for the dpkg lock
    run(["chroot", str(tmp), "systemctl", "mask", "apt-daily.timer", "apt-daily-upgrade.timer"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (tmp / "etc/machine-id").write_text("")  # each boot gets its own (else clones share one)
    dbus_id = tmp / "var/lib/dbus/machine-id"
    if dbus_id.exists() or dbus_id.is_symlink():
        dbus_id.unlink()
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    (tmp / ".loadgen-rootfs").write_text(want)
    shutil.rmtree(cfg.rootfs, ignore_errors=True)
    tmp.rename(cfg.rootfs)
    log(f"rootfs built in {time.monotonic() - t0:.1f} s")
    return cfg.rootfs


def ensure_key(cfg: LabConfig) -> None:
    if not cfg.key.exists():
        cfg.key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "loadgen-lab", "-f", str(cfg.key)])


def bridge_up(cfg: LabConfig) -> None:
    if Path(f"/sys/class/net/{cfg.bridge}").exists():
        return
    run(["ip", "link", "add", cfg.bridge, "type", "bridge"])
    run(["ip", "addr", "add", f"{cfg.bridge_ip}/24", "dev", cfg.bridge])
    run(["ip", "link", "set", cfg.bridge, "up"])


def _pid_alive(pidfile: Path, comm: str) -> int | None:
    """PID from *pidfile* if that process is alive and is *comm* (guards against PID reuse)."""
    try:
        pid = int(pidfile.read_text().strip())
        if Path(f"/proc/{pid}/comm").read_text().strip() == comm and _alive(pid):
            return pid
    except (OSError, ValueError):
        pass
    return None


def proxy_up(cfg: LabConfig) -> None:
    """tinyproxy on the bridge address that forwards requests for the apt mirror host(s) only."""
    d = cfg.lab_dir / "tinyproxy"
    pidfile = d / "tinyproxy.pid"
    if _pid_alive(pidfile, "tinyproxy"):
        return
    d.mkdir(parents=True, exist_ok=True)
    mirror = cfg.mirror or host_mirror()
    hosts = {re.sub(r"^\w+://([^/:]+).*", r"\1", mirror)}
    (d / "filter").write_text("".join(f"^{re.escape(h)}$\n" for h in sorted(hosts)))
    (d / "tinyproxy.conf").write_text(
        f"User tinyproxy\nGroup tinyproxy\nPort {cfg.proxy_port}\nListen {cfg.bridge_ip}\n"
        "Timeout 60\nMaxClients 100\n"
        f"Allow {cfg.subnet}.0/24\nFilterDefaultDeny Yes\nFilter \"{d}/filter\"\nFilterType ere\n"
        f"LogFile \"{d}/tinyproxy.log\"\nLogLevel Notice\n")
    (d / "tinyproxy.log").touch()
    shutil.chown(d, "tinyproxy", "tinyproxy")
    shutil.chown(d / "tinyproxy.log", "tinyproxy", "tinyproxy")
    env = _apt_proxy_env()  # an upstream proxy of the controller's apt, if any
    extra = ""
    if "http_proxy" in env:
        m = re.match(r"\w+://([^/]+)", env["http_proxy"])
        if m:
            extra = f"Upstream http {m.group(1)}\n"
    if extra:
        with open(d / "tinyproxy.conf", "a") as f:
            f.write(extra)
    with open(cfg.lab_dir / "logs" / "tinyproxy.out", "wb") as out:
        p = subprocess.Popen(["tinyproxy", "-d", "-c", str(d / "tinyproxy.conf")], stdout=out,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    pidfile.write_text(f"{p.pid}\n")


# --------------------------------------------------------------------------- containers

def _cgroup_dirs(cfg: LabConfig, name: str) -> list[Path]:
    return [Path("/sys/fs/cgroup") / h / cfg.cgroup_name / name for h in CGROUP_HIERARCHIES
            if (Path("/sys/fs/cgroup") / h).is_dir()]


def _prepare_clone(cfg: LabConfig, host: dict, all_hosts: list[dict]) -> str:
    """Mount an overlay clone and write its identity; return its SSH host public key."""
    base = cfg.lab_dir / "ct" / host["name"]
    merged = base / "merged"
    for sub in ("upper", "work", "merged"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(merged):
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={cfg.rootfs},upperdir={base / 'upper'},workdir={base / 'work'}", str(merged)])
    (merged / "etc/hostname").write_text(host["name"] + "\n")
    (merged / "etc/hosts").write_text(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        + "".join(f"{h['ip']}\t{h['name']}\n" for h in all_hosts))
    hostkey = merged / "etc/ssh/ssh_host_ed25519_key"
    if not hostkey.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host['name']}", "-f", str(hostkey)])
    ssh_dir = merged / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    auth = ssh_dir / "authorized_keys"
    auth.write_text(Path(str(cfg.key) + ".pub").read_text())
    auth.chmod(0o600)
    netdir = merged / "etc/systemd/network"
    netdir.mkdir(parents=True, exist_ok=True)
    (netdir / "10-host0.network").write_text(
        f"[Match]\nName=host0\n[Network]\nAddress={host['ip']}/24\nGateway={cfg.bridge_ip}\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")
    return Path(str(hostkey) + ".pub").read_text().split()[:2]


def _boot(cfg: LabConfig, name: str) -> int:
    merged = cfg.lab_dir / "ct" / name / "merged"
    cgroups = _cgroup_dirs(cfg, name)
    for d in cgroups:
        d.mkdir(parents=True, exist_ok=True)

    def enter_cgroups() -> None:  # runs in the child before exec: own cgroup per container
        for d in cgroups:
            (d / "cgroup.procs").write_text(str(os.getpid()))

    # --keep-unit: no systemd/dbus on the controller; --register=no: no machined (RECIPE.md).
    cmd = ["systemd-nspawn", "-b", "-D", str(merged), "-M", f"{cfg.bridge}-{name}", "--register=no",
           "--keep-unit", f"--network-bridge={cfg.bridge}", "--console=read-only"]
    with open(cfg.lab_dir / "logs" / f"{name}.console", "wb") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, preexec_fn=enter_cgroups)
    (cfg.lab_dir / "logs" / f"{name}.pid").write_text(f"{p.pid}\n")
    return p.pid


def _ssh_base(cfg: LabConfig) -> list[str]:
    known = cfg.inventory_dir / ".ssh" / "known_hosts"
    return ["ssh", "-i", str(cfg.key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=2", "-o", "LogLevel=ERROR", "-l", "root"]


def _console_tail(cfg: LabConfig, name: str) -> str:
    """The last lines of a host's console: why its systemd-nspawn ended."""
    try:
        lines = (cfg.lab_dir / "logs" / f"{name}.console").read_text(errors="replace").splitlines()
    except OSError:
        return "no console log"
    # nspawn's own last words ("Attempted to remove disk file system ...") say nothing about the cause, and the
    # cause may come before a consequence ("Failed to add new veth interfaces ..." then "Parent died too early")
    useful = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("Attempted to remove")]
    return " / ".join(useful[-3:]) if useful else "empty console log"


def _wait_ssh(cfg: LabConfig, host: dict, timeout: float = SSH_WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    cmd = _ssh_base(cfg) + [host["ip"], "systemctl is-system-running --wait >/dev/null 2>&1; true"]
    pidfile = cfg.lab_dir / "logs" / f"{host['name']}.pid"
    while True:
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=60)
        if r.returncode == 0:
            return
        if not _pid_alive(pidfile, "systemd-nspawn"):  # a container that ended never answers: say why, now
            raise RuntimeError(f"lab host {host['name']} ({host['ip']}): systemd-nspawn ended during boot: "
                               f"{_console_tail(cfg, host['name'])}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"lab host {host['name']} ({host['ip']}): ssh not ready after {timeout:.0f} s: "
                               f"{r.stderr.strip()}")
        time.sleep(0.2)


def _lab_veths(cfg: LabConfig) -> list[str]:
    """Host ends of this lab's container links: the bridge's ports, and any `vb-<bridge>-*` left detached.

    A container's link outlives its processes while its network namespace is still held, e.g. by a dying
    broker's orphaned TCP sockets retrying towards hosts that are gone too; the next boot of a host with the
    same name then fails ("Failed to add new veth interfaces ...: File exists")."""
    net = Path("/sys/class/net")
    brif = net / cfg.bridge / "brif"
    names = {p.name for p in brif.iterdir()} if brif.is_dir() else set()
    names |= {p.name for p in net.glob(f"vb-{cfg.bridge}-*")}
    return sorted(names)


# --------------------------------------------------------------------------- inventory

def _yaml_str(v: str) -> str:
    return json.dumps(v)  # JSON strings are valid YAML scalars


def write_inventory(cfg: LabConfig, state: dict) -> None:
    inv = cfg.inventory_dir
    (inv / "group_vars" / "all").mkdir(parents=True, exist_ok=True)
    (inv / "group_vars" / "gateways").mkdir(parents=True, exist_ok=True)
    (inv / "group_vars" / "generators").mkdir(parents=True, exist_ok=True)
    # ssh files live in a hidden dir: Ansible skips hidden entries of an inventory directory
    ssh = inv / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    hosts = state["hosts"]
    groups = ["generators", "gateways", "etcd", "kafka", "redis"]
    lines = ["# Generated by loadgen.lab (fab lab-up); removed by fab lab-down. Do not edit.\n"]
    for g in groups:
        lines.append(f"[{g}]\n")
        for h in hosts:
            if g in h["groups"]:
                extra = f" gateway_metrics_host={h['ip']}" if g == "gateways" else ""
                lines.append(f"{h['name']} ansible_host={h['ip']} private_address={h['ip']}{extra}\n")
        lines.append("\n")
    # Prometheus (roles/prometheus) on the first infra host: it scrapes the gateways, every node exporter and
    # the agents during a run (docs/live.md)
    prom = next(h for h in hosts if "etcd" in h["groups"])
    lines.append(f"[prometheus]\n{prom['name']} ansible_host={prom['ip']} private_address={prom['ip']}\n\n")
    lines.append("[infra:children]\netcd\nkafka\nredis\n\n[lab:children]\ngenerators\ngateways\ninfra\nprometheus\n")
    (inv / "hosts.ini").write_text("".join(lines))
    (inv / ".lab").write_text(f"{cfg.lab_dir}\n")  # which lab owns this inventory (lab_down checks)
    (ssh / "known_hosts").write_text("".join(f"{h['ip']} {h['hostkey']}\n" for h in hosts))
    (ssh / "ssh_config").write_text(
        "# ssh -F inventory/lab/.ssh/ssh_config gen1\n"
        + "".join(f"Host {h['name']}\n  HostName {h['ip']}\n" for h in hosts)
        + f"Host *\n  User root\n  IdentityFile {cfg.key}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {ssh / 'known_hosts'}\n  StrictHostKeyChecking yes\n"
        "  ConnectTimeout 10\n  LogLevel ERROR\n")
    common = (f"-o UserKnownHostsFile={ssh / 'known_hosts'} -o StrictHostKeyChecking=yes "
              "-o IdentitiesOnly=yes -o ConnectTimeout=10")
    art = state["artifacts"]
    refused = "".join(f"  - {k}\n" for k in LAB_REFUSED_SYSCTLS)
    (inv / "group_vars" / "all" / "lab.yml").write_text(f"""---
# Generated by loadgen.lab for the nspawn lab on this machine. Do not edit.
ansible_user: root
ansible_ssh_private_key_file: {_yaml_str(str(cfg.key))}
ansible_ssh_common_args: {_yaml_str(common)}
ansible_python_interpreter: /usr/bin/python3
loadgen_lab: true

# Kafka from the archive assembled from Maven Central jars (no internet in the lab).
kafka_version: {_yaml_str(art['kafka_version'])}
kafka_archive_src: {_yaml_str(art['kafka_archive'])}
kafka_archive_checksum: {_yaml_str('sha256:' + art['kafka_sha256'])}
kafka_heap_opts: "-Xms128m -Xmx320m"
# 3 brokers share 2 cores with everything else: C1-only JIT (no minutes of C2 compiling after each start:
# measured, cold brokers took 70 % of a core at 500 msg/s) and the serial collector (no GC thread per core)
kafka_jvm_performance_opts: "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
etcd_quota_backend_bytes: 268435456

# Wheels for the hosts' --no-index installs are built on this controller.
loadgen_agent_wheelhouse: {_yaml_str(art['wheelhouse'])}

# Container network namespaces refuse (read-only) or lack these keys: kernel_tuning and
# verify.yml report each of them as "host refused" on every run instead of failing.
kernel_tuning_accept_refused:
{refused}
# Every process here has a 20000 open-files hard cap that root cannot raise: the limits
# role and verify.yml report "host refused 1000000 (live hard limit 20000)" instead of failing.
limits_accept_host_cap: true
""")
    sec = inv / "group_vars" / "all" / "secrets.yml"
    sec.write_text(f"""---
# Random per-lab secrets (generated by loadgen.lab, never committed). In production keep these
# in an ansible-vault encrypted file instead (see inventory/production-example/README.md).
redis_password: {_yaml_str(state['secrets']['redis_password'])}
gateway_auth_token: {_yaml_str(state['secrets']['gateway_token'])}
""")
    sec.chmod(0o600)
    (inv / "group_vars" / "gateways" / "lab.yml").write_text("""---
gateway_port: 8080
gateway_metrics_port: 9090
gateway_managed_by: systemd
im_gateway_gomaxprocs: 2
im_gateway_gomemlimit: 1GiB
""")
    (inv / "group_vars" / "generators" / "lab.yml").write_text(f"""---
loadgen_agent_bin: /opt/loadgen/venv/bin/loadgen
loadgen_agent_workdir: /var/lib/loadgen
# The lab's default cluster test (`fab cluster-test -i inventory/lab` with no load given), fleet totals:
# {LAB_DEFAULT_LOAD['why']}
loadgen_stages: {json.dumps(LAB_DEFAULT_LOAD['stages'])}
loadgen_rate: {LAB_DEFAULT_LOAD['rate']}
# The load above was measured with constant traffic (one message type, no group fan-out): kept so.
loadgen_traffic: constant
# The lab's 7 hosts share the controller's cores: a probe round of all of them took ~2 s of a busy 2-core machine,
# so at the default (about one a second) they ran back to back, ~30 % of a core, and the runs' p99 rose from
# ~100 ms to 150-220 ms (docs/cluster-capacity.md). Real hosts probe on their own CPU.
loadgen_probe_interval: 3
""")


def write_scale_overrides(cfg: LabConfig) -> None:
    """A fleet-scale lab's inventory: gateways without the cluster backends (the scale tests measure the
    controller and its generators, not cross-node routing; the infra hosts stay idle and site.yml's infra part is
    not needed) and one agent process per generator (the lab's hosts share the controller's 2 cores)."""
    inv = cfg.inventory_dir
    (inv / "group_vars" / "gateways" / "scale.yml").write_text(
        "---\n# Written by loadgen.lab.write_scale_overrides: standalone gateways (no etcd/Kafka/Redis needed).\n"
        "im_gateway_cluster: false\ngateway_cluster: false\n")
    (inv / "group_vars" / "generators" / "scale.yml").write_text(
        "---\n# Written by loadgen.lab.write_scale_overrides: one agent process per generator host.\n"
        "loadgen_workers: 1\n")


def gateway_shares(generators: int, gateways: int) -> int | None:
    """cpu.shares of each gateway host in a lab of this shape: the weight of the generators it serves (None: a
    lab of a few generators, where the default weights leave the gateways enough)."""
    if not gateways or generators <= gateways:
        return None
    return min(MAX_SHARES, CPU_SHARES * generators // gateways)


def weigh_gateways(cfg: LabConfig) -> dict[str, int]:
    """A scale lab's gateways get the CPU weight of the generators they serve: {gateway: cpu.shares}.

    With the kernel's autogroup scheduling every session weighs alike, and every agent runs in its own session
    (fab starts it with setsid): on 2 cores shared by 100 agents a gateway's whole service got ~1/100 of the
    machine while the agents were busy, its accept queue filled with connections whose clients had already timed
    out, and 93-95 % of the connections failed. On real hosts a gateway has its own cores. Here each gateway
    host's processes (its container's systemd and everything it starts later) move into a cpu cgroup of weight
    1024 x generators / gateways, under a lab group weighing as much as all the generators: when every agent is
    busy the gateways get half the machine, else what they use."""
    state = _load_state(cfg)
    if state is None or not CPU_CGROUP.is_dir():
        return {}
    gateways = [h["name"] for h in state["hosts"] if "gateways" in h["groups"]]
    shares = gateway_shares(sum("generators" in h["groups"] for h in state["hosts"]), len(gateways))
    if shares is None:
        return {}
    top = CPU_CGROUP / cfg.cgroup_name
    out = {}
    try:
        top.mkdir(exist_ok=True)
        (top / "cpu.shares").write_text(f"{min(MAX_SHARES, shares * len(gateways))}\n")
        for name in gateways:
            d = top / name
            d.mkdir(exist_ok=True)
            (d / "cpu.shares").write_text(f"{shares}\n")
            for pid in sorted(_cgroup_pids(cfg, name)):
                try:
                    (d / "cgroup.procs").write_text(f"{pid}\n")
                except OSError:  # exited meanwhile
                    pass
            out[name] = int((d / "cpu.shares").read_text())
    except OSError as exc:  # a read-only or absent controller: the lab works, its gateways unweighed
        log(f"gateways not weighed: {exc}")
        return out
    log(f"gateways weigh cpu.shares {out} (each generator's session: {CPU_SHARES})")
    return out


# --------------------------------------------------------------------------- public API

def _load_state(cfg: LabConfig) -> dict | None:
    try:
        return json.loads(cfg.state_file.read_text())
    except (OSError, ValueError):
        return None


def _running(cfg: LabConfig, state: dict) -> bool:
    return all(_pid_alive(cfg.lab_dir / "logs" / f"{h['name']}.pid", "systemd-nspawn") for h in state["hosts"])


def lab_status(cfg: LabConfig | None = None) -> dict:
    cfg = cfg or LabConfig()
    state = _load_state(cfg)
    if not state:
        return {"up": False, "hosts": []}
    return {"up": _running(cfg, state), "hosts": state["hosts"], "inventory": str(cfg.inventory_dir)}


def build_artifacts(cfg: LabConfig) -> dict:
    art = cfg.lab_dir / "artifacts"
    archive = build_kafka_archive(art, KAFKA_VERSION)
    return {"kafka_version": KAFKA_VERSION, "kafka_archive": str(archive), "kafka_sha256": sha256(archive),
            "wheelhouse": str(cfg.lab_dir / "wheelhouse")}


def lab_up(hosts: int = 7, cfg: LabConfig | None = None) -> dict:
    """Bring up *hosts* lab hosts and write ``inventory/lab``; return the lab state.

    Idempotent: a lab that is already up with the same layout is kept (its inventory is
    rewritten); any other lab state is torn down first."""
    cfg = cfg or LabConfig()
    t0 = time.monotonic()
    plan = layout(hosts)
    for i, h in enumerate(plan):
        h["ip"] = f"{cfg.subnet}.{cfg.first_host + i}"
    old = _load_state(cfg)
    # a lab that is up holds memory that its teardown below gives back: counted as available
    held = sum(MEM_MB[k] for k in _kinds(old["hosts"])) if old and _running(cfg, old) else 0
    preflight(cfg, plan, mem_available_mb=_mem_available_mb() + held)
    if os.geteuid() != 0:
        raise PermissionError("the lab needs root (mounts, bridge, systemd-nspawn)")
    if old and [(h["name"], h["ip"], h["groups"]) for h in old["hosts"]] == \
            [(h["name"], h["ip"], h["groups"]) for h in plan] and _running(cfg, old):
        log(f"lab already up with {hosts} hosts; rewriting {cfg.inventory_dir}")
        old["artifacts"] = build_artifacts(cfg)  # (re)built if its recipe changed: fresh checksum
        cfg.state_file.write_text(json.dumps(old, indent=1))
        write_inventory(cfg, old)
        weigh_gateways(cfg)
        return old
    lab_down(cfg)
    for d in ("logs", "ct", "keys"):
        (cfg.lab_dir / d).mkdir(parents=True, exist_ok=True)
    ensure_host_packages()
    ensure_key(cfg)
    t = time.monotonic()
    build_rootfs(cfg)
    timings = {"rootfs_s": round(time.monotonic() - t, 1)}
    t = time.monotonic()
    artifacts = build_artifacts(cfg)
    timings["artifacts_s"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    bridge_up(cfg)
    proxy_up(cfg)
    raise_inotify_limit(len(plan))
    for h in plan:
        h["hostkey"] = " ".join(_prepare_clone(cfg, h, plan))
    state = {"hosts": plan, "artifacts": artifacts, "bridge": cfg.bridge,
             "secrets": {"redis_password": secrets.token_urlsafe(24), "gateway_token": secrets.token_urlsafe(24)}}
    cfg.state_file.write_text(json.dumps(state, indent=1))
    write_inventory(cfg, state)  # known_hosts first: the ssh wait below checks host keys
    for i in range(0, len(plan), BOOT_BATCH):
        batch = plan[i:i + BOOT_BATCH]
        for h in batch:
            _boot(cfg, h["name"])
        with ThreadPoolExecutor(max_workers=len(batch)) as ex:
            list(ex.map(lambda h: _wait_ssh(cfg, h), batch))
        if len(plan) > BOOT_BATCH:
            log(f"{i + len(batch)}/{len(plan)} hosts up ({time.monotonic() - t:.0f} s)")
    timings["boot_s"] = round(time.monotonic() - t, 1)
    timings["total_s"] = round(time.monotonic() - t0, 1)
    state["timings"] = timings
    cfg.state_file.write_text(json.dumps(state, indent=1))
    weigh_gateways(cfg)  # after the state file: it names the gateways
    log(f"lab up: {len(plan)} hosts {', '.join(h['name'] + '=' + h['ip'] for h in plan)}; "
        f"inventory {cfg.inventory_dir}; timings {timings}")
    return state


def _cgroup_pids(cfg: LabConfig, name: str) -> set[int]:
    pids: set[int] = set()
    for d in _cgroup_dirs(cfg, name):
        for procs in d.rglob("cgroup.procs"):
            try:
                pids |= {int(p) for p in procs.read_text().split()}
            except OSError:
                pass
    return pids


def _alive(pid: int) -> bool:
    """True while *pid* runs; reaps it if it is our exited child (lab_up in a long-lived process)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        pids = {p for p in pids if _alive(p)}
        if not pids or time.monotonic() >= deadline:
            return pids
        time.sleep(0.1)


def _stop_container(cfg: LabConfig, name: str, grace: float = 15.0) -> None:
    """Halt one host: orderly first (nspawn forwards SIGTERM as a poweroff to the container's
    systemd), then SIGKILL whatever is left in the container's own cgroup (a Kafka broker that
    lost its quorum can block an orderly stop for minutes)."""
    pidfile = cfg.lab_dir / "logs" / f"{name}.pid"
    pid = _pid_alive(pidfile, "systemd-nspawn")
    if pid:
        os.kill(pid, signal.SIGTERM)
        _wait_gone({pid}, grace)
    for _ in range(50):
        left = {p for p in _cgroup_pids(cfg, name) | ({pid} if pid else set()) if _alive(p)}
        if not left:
            break
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _wait_gone(left, 5.0)
    pidfile.unlink(missing_ok=True)
    merged = cfg.lab_dir / "ct" / name / "merged"
    if os.path.ismount(merged):
        r = run(["umount", str(merged)], check=False, stderr=subprocess.PIPE)
        if r.returncode != 0:
            run(["umount", "-l", str(merged)])
    for d in _cgroup_dirs(cfg, name) + [CPU_CGROUP / cfg.cgroup_name / name]:
        if d.exists():
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                sub.rmdir()
            d.rmdir()


def lab_down(cfg: LabConfig | None = None, purge: bool = False) -> None:
    """Stop every lab host and remove what lab_up made. Safe to call when nothing is up.

    The cached rootfs, SSH key and built artifacts stay unless *purge*."""
    cfg = cfg or LabConfig()
    names = set()
    state = _load_state(cfg)
    if state:
        names |= {h["name"] for h in state["hosts"]}
    if (cfg.lab_dir / "ct").is_dir():
        names |= {p.name for p in (cfg.lab_dir / "ct").iterdir()}
    if (cfg.lab_dir / "logs").is_dir():
        names |= {p.stem for p in (cfg.lab_dir / "logs").glob("*.pid")}
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as ex:
        list(ex.map(lambda n: _stop_container(cfg, n), sorted(names)))
    for veth in _lab_veths(cfg):  # every container is stopped: a link still there is a leftover
        run(["ip", "link", "del", veth], check=False, stderr=subprocess.DEVNULL)
    pid = _pid_alive(cfg.lab_dir / "tinyproxy" / "tinyproxy.pid", "tinyproxy")
    if pid:
        os.kill(pid, signal.SIGTERM)
    (cfg.lab_dir / "tinyproxy" / "tinyproxy.pid").unlink(missing_ok=True)
    if Path(f"/sys/class/net/{cfg.bridge}").exists():
        run(["ip", "link", "del", cfg.bridge])
    for top in [Path("/sys/fs/cgroup") / h / cfg.cgroup_name for h in CGROUP_HIERARCHIES] + [CPU_CGROUP / cfg.cgroup_name]:
        if top.is_dir() and not any(p.is_dir() for p in top.iterdir()):
            top.rmdir()
    shutil.rmtree(cfg.lab_dir / "ct", ignore_errors=True)
    cfg.state_file.unlink(missing_ok=True)
    owner = cfg.inventory_dir / ".lab"
    if owner.exists() and owner.read_text().strip() == str(cfg.lab_dir):
        shutil.rmtree(cfg.inventory_dir, ignore_errors=True)  # never another lab's inventory
    if purge:
        shutil.rmtree(cfg.lab_dir, ignore_errors=True)
    if names:
        log(f"lab down: stopped {len(names)} hosts")
