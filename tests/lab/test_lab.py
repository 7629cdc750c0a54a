"""The lab end to end: real Debian hosts (systemd-nspawn), the Ansible roles, verification, teardown.

Needs root, systemd-nspawn support and the Debian mirror + PyPI + Maven Central (CI has them).
Run: pytest -m lab tests/lab -v   (about 8-15 minutes on 2 cores; the rootfs is cached after the first run)

The tests run in file order and share one lab (module fixture): it is built from scratch
(lab_down first), site.yml runs twice (the second run must change nothing), verify.yml must pass
and must report what the hosts refuse, and negative checks show that verification fails when
something is not configured. When test_cluster_mode.py runs in the same session (it runs next:
tests/conftest.py), the deployed lab is handed over to it instead of being taken down; that lab_down
leaves nothing behind is checked at the end of test_fleet_scale.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import LAB_HANDOVER
from loadgen.lab import LabConfig, lab_down, lab_up

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]

REPO = Path(__file__).resolve().parents[2]
TIMINGS: dict[str, float] = {}


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    assert found, f"{name} not found next to {sys.executable} or on PATH"
    return found


def ansible(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", PYTHONUNBUFFERED="1")
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def playbook(cfg: LabConfig, name: str, *extra: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    r = ansible(_tool("ansible-playbook"), "-i", str(cfg.inventory_dir), f"playbooks/{name}", *extra,
                timeout=timeout)
    key = f"{name} {' '.join(extra)}".strip()
    n = sum(1 for k in TIMINGS if k.split(" #")[0] == key)
    TIMINGS[f"{key} #{n + 1}" if n else key] = round(time.monotonic() - t0, 1)
    return r


def flat(text: str) -> str:
    """Output with whitespace runs collapsed: the YAML callback wraps long messages."""
    return " ".join(text.split())


def recap(output: str) -> dict[str, dict[str, int]]:
    rows = {}
    for m in re.finditer(r"^(\S+)\s+:\s+(ok=.*)$", output, re.M):
        rows[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return rows


def tail(r: subprocess.CompletedProcess, n: int = 80) -> str:
    return "\n".join((r.stdout + r.stderr).splitlines()[-n:])


def ssh(cfg: LabConfig, host: str, command: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-F", str(cfg.inventory_dir / ".ssh" / "ssh_config"), host, command],
                          capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def lab(request):
    cfg = LabConfig()
    lab_down(cfg)
    t0 = time.monotonic()
    state = lab_up(7, cfg)
    TIMINGS["lab_up (incl. rootfs if not cached)"] = round(time.monotonic() - t0, 1)
    yield cfg, state
    print("\nlab timings (s):", json.dumps(TIMINGS, indent=1))
    if any(item.path.name == "test_cluster_mode.py" for item in request.session.items):
        (cfg.inventory_dir / LAB_HANDOVER).write_text("test_lab.py\n")  # test_cluster_mode.py takes it down
    else:
        lab_down(cfg)


@pytest.mark.timeout(2700)  # the first lab test of a run pays for the rootfs and the Kafka archive (fresh machine)
def test_lab_inventory_describes_every_host_with_checked_host_keys(lab):
    cfg, state = lab
    r = ansible(_tool("ansible-inventory"), "-i", str(cfg.inventory_dir), "--list")
    assert r.returncode == 0, r.stderr
    inv = json.loads(r.stdout)
    groups = {g: sorted(inv[g]["hosts"]) for g in ("generators", "gateways", "etcd", "kafka", "redis")}
    assert groups == {"generators": ["gen1", "gen2"], "gateways": ["gw1", "gw2"],
                      "etcd": ["infra1", "infra2", "infra3"], "kafka": ["infra1", "infra2", "infra3"],
                      "redis": ["infra1", "infra2", "infra3"]}
    hostvars = inv["_meta"]["hostvars"]
    known_hosts = cfg.inventory_dir / ".ssh" / "known_hosts"
    for name, hv in hostvars.items():
        assert hv["ansible_user"] == "root"
        assert Path(hv["ansible_ssh_private_key_file"]).is_file()
        assert f"UserKnownHostsFile={known_hosts}" in hv["ansible_ssh_common_args"]
        assert "StrictHostKeyChecking=yes" in hv["ansible_ssh_common_args"]
        assert hv["ansible_host"] in known_hosts.read_text()
    for gw in groups["gateways"]:
        assert (hostvars[gw]["gateway_port"], hostvars[gw]["gateway_metrics_port"],
                hostvars[gw]["gateway_managed_by"]) == (8080, 9090, "systemd")
        assert hostvars[gw]["gateway_metrics_host"] == hostvars[gw]["ansible_host"]
        assert len(hostvars[gw]["gateway_auth_token"]) >= 16 and len(hostvars[gw]["redis_password"]) >= 16
    for gen in groups["generators"]:
        assert hostvars[gen]["loadgen_agent_bin"] == "/opt/loadgen/venv/bin/loadgen"
        assert hostvars[gen]["loadgen_agent_workdir"] == "/var/lib/loadgen"
    shipped = "\n".join(p.read_text() for p in cfg.inventory_dir.rglob("*") if p.is_file())
    assert "StrictHostKeyChecking=no" not in shipped and "StrictHostKeyChecking no" not in shipped

    # Host keys are really checked: with an empty known_hosts the same login is refused.
    ip = hostvars["gen1"]["ansible_host"]
    empty = cfg.lab_dir / "empty_known_hosts"
    empty.write_text("")
    r = subprocess.run(["ssh", "-i", str(cfg.key), "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={empty}",
                        "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=5", f"root@{ip}", "true"],
                       capture_output=True, text=True, timeout=30)
    empty.unlink()
    assert r.returncode != 0 and "Host key verification failed" in r.stderr
    r = ssh(cfg, "gen1", "hostname; cat /etc/machine-id")
    assert r.returncode == 0 and r.stdout.split()[0] == "gen1"
    ids = {ssh(cfg, h, "cat /etc/machine-id").stdout.strip() for h in ("gen1", "gw1", "infra1")}
    assert len(ids) == 3, "clones must not share a machine-id"


def test_hosts_reach_only_the_package_mirror(lab):
    cfg, _ = lab
    # No forwarding on the controller: the bridge address is all the hosts can reach.
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "0"
    probe = ("import urllib.request as u\n"
             "p = u.ProxyHandler({'http': 'http://%s:%d'})\n"
             "o = u.build_opener(p)\n"
             "for url in ('http://deb.debian.org/debian/dists/bookworm/Release', 'http://pypi.org/simple/'):\n"
             "    try:\n"
             "        print(o.open(url, timeout=20).status)\n"
             "    except u.HTTPError as e:\n"
             "        print(e.code)\n") % (cfg.bridge_ip, cfg.proxy_port)
    r = ssh(cfg, "gen1", f"python3 -c \"{probe}\"")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["200", "403"], r.stdout


@pytest.mark.timeout(1500)
def test_site_cold_run_succeeds(lab):
    cfg, _ = lab
    r = playbook(cfg, "site.yml")
    assert r.returncode == 0, tail(r)
    rows = recap(r.stdout)
    assert sorted(rows) == ["gen1", "gen2", "gw1", "gw2", "infra1", "infra2", "infra3"]
    assert all(v["failed"] == 0 and v["unreachable"] == 0 for v in rows.values()), rows
    assert all(v["changed"] > 0 for v in rows.values()), "a cold run must change every host"


@pytest.mark.timeout(1200)
def test_site_second_run_changes_nothing(lab):
    cfg, _ = lab
    r = playbook(cfg, "site.yml")
    assert r.returncode == 0, tail(r)
    rows = recap(r.stdout)
    assert len(rows) == 7
    changed = {h: v["changed"] for h, v in rows.items() if v["changed"]}
    if changed:
        tasks = re.findall(r"TASK \[([^\]]+)\][^\n]*\n(?:[^\n]*\n)*?changed: \[(\S+)\]", r.stdout)
        pytest.fail(f"second run changed {changed}: {tasks[:20]}")
    assert all(v["failed"] == 0 for v in rows.values())


@pytest.mark.timeout(600)
def test_verify_reports_live_values_and_host_refusals(lab):
    cfg, state = lab
    r = playbook(cfg, "verify.yml")
    out = flat(r.stdout)
    assert r.returncode == 0, tail(r)
    assert all(v["failed"] == 0 for v in recap(r.stdout).values())
    # limits: the host's 20000 cap is reported as a refusal on each running service, never as applied
    for unit in ("im-gateway", "etcd", "kafka", "redis-server"):
        assert re.search(rf"{unit} \(pid \d+\): host refused 1000000 \(live hard limit 20000", out), unit
    assert "not configured" not in out
    # kernel_tuning: read-only keys in a container netns are reported with their live value
    assert re.search(r"net\.core\.rmem_max: host refused 134217728 \(live value \d+", out)
    assert "net.netfilter.nf_conntrack_max: host refused 1000000" in out
    assert re.search(r"net\.core\.somaxconn.*live as wanted", out)
    # services
    assert "3 healthy members" in out
    assert out.count("state=online") >= 2 and "connected_slaves:2" in out
    assert "ReplicationFactor: 3" in out
    assert len(re.findall(r"im-gateway active \(pid \d+\)", out)) == 2
    # live checks on the hosts themselves, independent of the playbook's own reporting
    assert ssh(cfg, "gw1", "sysctl -n net.core.somaxconn").stdout.strip() == "65535"
    assert ssh(cfg, "gen1", "sysctl -n net.ipv4.ip_local_port_range").stdout.split() == ["1024", "65535"]
    assert ssh(cfg, "gw1", "systemctl is-active im-gateway").stdout.strip() == "active"
    assert ssh(cfg, "gw1", "grep -c '^server:' /etc/im-gateway/config.yaml").stdout.strip() == "1"
    assert ssh(cfg, "gw1", "stat -c %a /etc/im-gateway/token").stdout.strip() == "600"
    # the paths and addresses fab cluster-test's probes use
    ip = {h["name"]: h["ip"] for h in state["hosts"]}
    assert ssh(cfg, "infra1", f"/opt/kafka/bin/kafka-topics.sh --bootstrap-server {ip['infra1']}:9092 --list"
                              " | grep -x loadgen-verify").returncode == 0
    assert ssh(cfg, "gw1", "python3 -c \"import urllib.request as u; "
                           f"print(u.urlopen('http://{ip['gw1']}:9090/metrics', timeout=5).status)\"").stdout.strip() == "200"


@pytest.mark.timeout(600)
def test_verify_fails_when_a_sysctl_is_not_configured(lab):
    cfg, _ = lab
    assert ssh(cfg, "gw1", "sed -i '/somaxconn/d' /etc/sysctl.d/60-loadgen.conf").returncode == 0
    r = playbook(cfg, "verify.yml", "--limit", "gw1")
    assert r.returncode != 0
    assert "not configured on gw1: net.core.somaxconn" in flat(r.stdout)
    r = playbook(cfg, "prepare.yml", "--limit", "gw1")  # puts it back
    assert r.returncode == 0, tail(r)
    assert recap(r.stdout)["gw1"]["changed"] >= 1
    assert playbook(cfg, "verify.yml", "--limit", "gw1").returncode == 0


@pytest.mark.timeout(600)
def test_verify_fails_when_a_service_limit_is_not_configured(lab):
    """A unit whose LimitNOFILE is below the target is "not configured", not "host refused"."""
    cfg, _ = lab
    dropin = "/etc/systemd/system/im-gateway.service.d/90-loadgen-nofile.conf"
    assert ssh(cfg, "gw1", f"sed -i 's/^LimitNOFILE=.*/LimitNOFILE=4096/' {dropin} && "
                           "systemctl daemon-reload && systemctl restart im-gateway").returncode == 0
    r = playbook(cfg, "verify.yml", "--limit", "gw1")
    out = flat(r.stdout)
    assert r.returncode != 0
    assert "im-gateway: not configured (configured nofile 4096, wanted 1000000) (live soft 4096, hard 4096)" in out
    r = playbook(cfg, "prepare.yml", "--limit", "gw1")  # puts it back and restarts the unit
    assert r.returncode == 0, tail(r)
    assert recap(r.stdout)["gw1"]["changed"] >= 1
    r = playbook(cfg, "verify.yml", "--limit", "gw1")
    assert r.returncode == 0, tail(r)
    assert re.search(r"im-gateway \(pid \d+\): host refused 1000000 \(live hard limit 20000", flat(r.stdout))


@pytest.mark.timeout(600)
def test_refusals_fail_unless_the_inventory_accepts_them(lab):
    cfg, _ = lab
    r = playbook(cfg, "prepare.yml", "--limit", "gw1", "-e",
                 json.dumps({"kernel_tuning_accept_refused": [], "limits_accept_host_cap": False}))
    out = flat(r.stdout)
    assert r.returncode != 0
    assert "host refused 134217728" in out and "NOT accepted by this inventory" in out
    assert "sysctls not live on gw1" in out
    r = playbook(cfg, "verify.yml", "--limit", "gen1", "-e", json.dumps({"limits_accept_host_cap": False}))
    assert r.returncode != 0
    assert "host refused 1000000 (live hard limit 20000" in flat(r.stdout)
