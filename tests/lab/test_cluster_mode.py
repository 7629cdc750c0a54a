"""Gateway cluster mode in the lab: 2 gateway nodes on two hosts, 3-node etcd, 3 Kafka brokers, Redis primary +
2 replicas (the roles), driven by `fab cluster-test -i inventory/lab` from the generators.

Reuses a lab that is up and deployed (site.yml): test_lab.py's, when both run in one session (it runs first and
hands its lab over: tests/conftest.py), or one left up with LOADGEN_LAB_KEEP=1; otherwise builds one (lab_up +
site.yml, 10-20 minutes). It tears down the lab it built or was handed. For the fault tests the gateways get short TTLs (registry 45 s, lease 5 s) through
im_gateway_config_overrides; the lab's configuration is restored afterwards.

Run: pytest -m lab tests/lab/test_cluster_mode.py -v   (LOADGEN_LAB_KEEP=1: leave a lab it built up)
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from html import unescape as html_unescape
from pathlib import Path

import pytest
import yaml

from conftest import LAB_HANDOVER
from loadgen.lab import LabConfig, lab_down, lab_up

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]

REPO = Path(__file__).resolve().parents[2]
GATEWAYS = {"gw1": "", "gw2": ""}  # name -> address, read from the lab inventory by the fixture
INFRA1 = [""]  # etcd/kafka/redis-primary host address
# registry TTL above the agents' heartbeat interval (30 s): connected users keep their entries
REGISTRY_TTL_S, LEASE_TTL_S = 45, 5
SHORT_TTLS = {"im_gateway_config_overrides": {"cluster": {"registry_ttl": f"{REGISTRY_TTL_S}s",
                                                          "lease_ttl": f"{LEASE_TTL_S}s"}}}


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    assert found, f"{name} not found"
    return found


def run(*args: str, timeout: float = 1200, env=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def tail(r: subprocess.CompletedProcess, n: int = 60) -> str:
    return "\n".join((r.stdout + r.stderr).splitlines()[-n:])


def playbook(cfg: LabConfig, name: str, *extra: str) -> subprocess.CompletedProcess:
    return run(_tool("ansible-playbook"), "-i", str(cfg.inventory_dir), f"playbooks/{name}", *extra)


def ssh(cfg: LabConfig, host: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-F", str(cfg.inventory_dir / ".ssh" / "ssh_config"), host, command],
                          capture_output=True, text=True, timeout=timeout)


def secrets(cfg: LabConfig) -> dict:
    return yaml.safe_load((cfg.inventory_dir / "group_vars" / "all" / "secrets.yml").read_text())


def lab_token(cfg: LabConfig) -> str:
    s = secrets(cfg)
    return s.get("gateway_auth_token") or s["im_gateway_auth_token"]


def metrics(gw: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{GATEWAYS[gw]}:9090/metrics", timeout=5) as r:
        text = r.read().decode()
    return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
            if ln and not ln.startswith("#")}


def metric(gw: str, prefix: str) -> float:
    try:
        return sum(v for k, v in metrics(gw).items() if k.startswith(prefix))
    except OSError:
        return -1.0


def wait_for(cond, timeout: float, what: str) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return time.time() - t0
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def redis_cli(cfg: LabConfig, *args: str) -> str:
    pw = secrets(cfg)["redis_password"]
    r = ssh(cfg, "infra1", f"REDISCLI_AUTH={pw} redis-cli -h {INFRA1[0]} {' '.join(args)}")
    return r.stdout.strip()


def etcd_nodes(cfg: LabConfig) -> list[str]:
    r = ssh(cfg, "infra1", f"ETCDCTL_API=3 etcdctl --endpoints=http://{INFRA1[0]}:2379 get --prefix "
                           "/loadgen/gateways/ --keys-only")
    return sorted(k[len("/loadgen/gateways/"):] for k in r.stdout.split())


def fab_cluster_test(cfg: LabConfig, reports: Path, stages: list[str], rate: float = 2.0, extra=(), **popen):
    token = lab_token(cfg)
    args = [_tool("fab"), "-r", str(REPO), "cluster-test", "-i", str(cfg.inventory_dir), "--scenario", "cluster",
            *extra,
            "--reports-dir", str(reports), "--rate", str(rate), "--probe-interval", "2",
            # latency and success rate are measured and reported; their verdict belongs to the hardware (here:
            # 7 containers, 3 JVM brokers on 2 shared cores), routing correctness and the accounting to these tests
            "--criterion", "message_p99_ms=off", "--criterion", "message_success_rate=off"]
    for s in stages:
        args += ["--stage", s]
    env = {**os.environ, "AUTH_TOKEN": token}
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def only_run(reports: Path) -> Path:
    runs = [d for d in reports.iterdir() if d.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def agent_messages(run_dir: Path) -> dict:
    total: dict[str, float] = {}
    for s in run_dir.glob("agents/*/summary.json"):
        for k, v in json.loads(s.read_text())["messages"].items():
            if isinstance(v, (int, float)) and k not in ("success_rate", "throughput_per_s"):
                total[k] = total.get(k, 0) + v
    return total


def _deployed(cfg: LabConfig) -> bool:
    if not (cfg.inventory_dir / "hosts.ini").exists():
        return False
    r = ssh(cfg, "gw1", "grep -q '^cluster:' /etc/im-gateway/config.yaml && systemctl is-active im-gateway", 30)
    return r.returncode == 0


@pytest.fixture(scope="module")
def lab():
    cfg = LabConfig()
    deployed = _deployed(cfg)
    # built and deployed by test_lab.py in this session and handed over (tests/conftest.py): ours to take down
    owned = not deployed or (cfg.inventory_dir / LAB_HANDOVER).exists()
    if not deployed:
        lab_down(cfg)
        lab_up(7, cfg)
        r = playbook(cfg, "site.yml")
        assert r.returncode == 0, tail(r)
    hosts = dict(re.findall(r"^(\S+) ansible_host=(\S+)", (cfg.inventory_dir / "hosts.ini").read_text(), re.M))
    GATEWAYS.update({gw: hosts[gw] for gw in GATEWAYS})
    INFRA1[0] = hosts["infra1"]
    r = playbook(cfg, "deploy.yml", "--limit", "gateways", "-e", json.dumps(SHORT_TTLS))
    assert r.returncode == 0, tail(r)
    wait_for(lambda: all(metric(g, "im_gateway_cluster_nodes") == 2 for g in GATEWAYS), 60, "both nodes in etcd")
    yield cfg
    for gw in GATEWAYS:
        ssh(cfg, gw, "systemctl start im-gateway")
    for infra in ("infra1", "infra2", "infra3"):
        ssh(cfg, infra, "systemctl start kafka")
    if owned and not os.environ.get("LOADGEN_LAB_KEEP"):
        lab_down(cfg)
    else:
        r = playbook(cfg, "deploy.yml", "--limit", "gateways")  # the lab's own TTLs again
        assert r.returncode == 0, tail(r)


@pytest.mark.timeout(2700)  # the first test pays for the module's lab (lab_up + site.yml when none is deployed)
def test_both_nodes_in_etcd_and_topics_with_replication_factor_3(lab):
    assert etcd_nodes(lab) == ["gw1", "gw2"]
    for gw in GATEWAYS:
        r = ssh(lab, "infra1", f"kafka-topics --bootstrap-server {INFRA1[0]}:9092 --describe --topic im-gateway.node.{gw}")
        assert r.returncode == 0, r.stderr
        assert "ReplicationFactor: 3" in r.stdout, r.stdout
        assert metric(gw, "im_gateway_kafka_topic_replication_factor") == 3
        assert metric(gw, 'im_gateway_backend_up{node="%s",backend="kafka"}' % gw) == 1


@pytest.mark.timeout(900)
def test_fab_cluster_run_every_message_crosses_nodes_with_per_node_latency(lab, tmp_path):
    before = {gw: metrics(gw) for gw in GATEWAYS}
    # with a ramp-down: the agents quiesce each pair until nothing is in flight between them (at most 10 s), so
    # messages still in Kafka reach their recipients (without it 0.14 % were lost here in one run)
    proc = fab_cluster_test(lab, tmp_path / "reports", ["5s:400", "25s:400", "3s:0"])
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    run_dir = only_run(tmp_path / "reports")
    msgs = agent_messages(run_dir)
    assert msgs["sent"] > 15_000 and msgs["received"] + msgs["errors"] + msgs["lost"] == msgs["sent"], msgs
    assert msgs["errors"] + msgs["lost"] <= 0.03 * msgs["sent"], msgs
    assert msgs["lost"] <= 0.0002 * msgs["sent"], msgs  # a ramp-down loses nothing in flight (a Kafka stall > 1 s could)
    delta = {}
    for gw in GATEWAYS:
        after = metrics(gw)
        delta[gw] = {k: after.get(k, 0) - before[gw].get(k, 0) for k in after if k.startswith("im_gateway_")}
    # deliveries == sends minus the errors the gateways counted (unknown recipient at either end, route failures)
    counted = sum(v for d in delta.values() for k, v in d.items() if k.startswith("im_gateway_errors_total") and
                  any(f'kind="{kind}"' in k for kind in ("unknown_recipient", "remote_unknown_recipient", "route_failed")))
    assert abs(msgs["sent"] - msgs["received"] - counted) <= max(5, 0.001 * msgs["sent"]), (msgs, delta)
    local = sum(d[f'im_gateway_deliveries_total{{node="{gw}",route="local"}}'] for gw, d in delta.items())
    remote = sum(d[f'im_gateway_deliveries_total{{node="{gw}",route="remote"}}'] for gw, d in delta.items())
    assert local == 0 and remote == msgs["received"], delta  # every message went through Kafka
    # after the run the users are gone: their registry entries were deleted on disconnect
    assert redis_cli(lab, "--scan", "--pattern", "'im:session:gen*'") == ""
    summary = json.loads((run_dir / "summary.json").read_text())
    print("\nlab cross-node latency ms:", json.dumps(summary.get("latency_ms")), file=sys.stderr)
    from loadgen.agent.pairs import pair_summary

    pairs = pair_summary(str(run_dir))
    assert {(p["src_gateway"], p["dst_gateway"]) for p in pairs} == {("gw1", "gw2"), ("gw2", "gw1")}
    assert summary["pairs"] == pairs and "Routing latency per gateway node pair" in (run_dir / "report.html").read_text()
    print("per node pair:", json.dumps(pairs), file=sys.stderr)
    # the report shows agents on both generators, connections on both gateways, every lab host, the infra probes
    assert {h: a["state"] for h, a in summary["agents"].items()} == {"gen1": "done", "gen2": "done"}
    assert set(summary["distribution"]["nodes"]) == {"gw1", "gw2"}
    assert all(v > 0 for v in summary["distribution"]["nodes"].values())
    html = (run_dir / "report.html").read_text()
    for host in ("gen1", "gen2", "gw1", "gw2", "infra1", "infra2", "infra3"):
        assert f">{host}<" in html, host
    after = run_dir / "probes" / "infra1" / "after"
    assert (after / "etcd-health.txt").read_text().count("is healthy") == 3
    assert "ReplicationFactor: 3" in (after / "kafka-topics.txt").read_text()
    assert any("connected_slaves:2" in p.read_text() for p in run_dir.glob("probes/infra*/after/redis-info.txt"))


# Redis: how many groups have members on both gateway nodes now (their hashes im:group:<g> of node -> count)
GROUPS_ON_BOTH_NODES = ("local n = 0 for _, k in ipairs(redis.call('KEYS', 'im:group:*')) do "
                        "if redis.call('HEXISTS', k, 'gw1') == 1 and redis.call('HEXISTS', k, 'gw2') == 1 "
                        "then n = n + 1 end end return n")


@pytest.mark.timeout(900)
def test_chat_mix_across_both_nodes_groups_span_them_and_every_delivery_is_accounted(lab, tmp_path):
    """The cluster scenario as users run it (`fab cluster-test`), with the chat-mix model across the two lab
    gateways: users on both nodes, groups with members on both (Redis counts them per node during the run), and
    per message type sent x recipients = delivered + counted errors, nothing lost, group messages fanned out to
    several members, some of them through the other node (Kafka records, one per node and message)."""
    before = {gw: metrics(gw) for gw in GATEWAYS}
    # 100 msg/s offered, fanned out to more deliveries: near the lab default's load (1,000 users x 0.125 msg/s)
    proc = fab_cluster_test(lab, tmp_path / "reports", ["5s:400", "40s:400", "3s:0"], rate=0.25,
                            extra=["--traffic", "chat-mix", "--seed", "15"])
    spanning = []
    try:
        def groups_spanning_nodes() -> bool:
            out = redis_cli(lab, "EVAL", shlex.quote(GROUPS_ON_BOTH_NODES), "0")
            spanning.append(int(out) if out.isdigit() else 0)
            return spanning[-1] > 0

        # fab's preflight and snapshots come first (a minute or more on a busy lab), then the ramp-up; a fab that
        # ended meanwhile (a failure) ends the wait and shows its output below
        wait_for(lambda: groups_spanning_nodes() or proc.poll() is not None, 480,
                 "a group with members on both gateway nodes in Redis")
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
    assert proc.returncode == 0, out[-4000:]
    assert max(spanning) > 0, spanning  # seen in Redis during the run: members of one group on both nodes
    run_dir = only_run(tmp_path / "reports")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert json.loads((run_dir / "plan.json").read_text())["traffic"]["name"] == "chat-mix"
    nodes = summary["distribution"]["nodes"]
    assert set(nodes) == {"gw1", "gw2"} and all(v > 0 for v in nodes.values()), summary["distribution"]
    delta = {}
    for gw in GATEWAYS:
        after = metrics(gw)
        delta[gw] = {k: after.get(k, 0) - before[gw].get(k, 0) for k in after if k.startswith("im_gateway_")}
    # a Kafka produce or Redis read that timed out is refused (an error frame), or leaves the members it could
    # not address out of the ack's n; Kafka may still deliver it (at least once): one delivery more than owed
    # per failure the gateways counted (none in a healthy run)
    failures = sum(v for d in delta.values() for k, v in d.items() if k.startswith("im_gateway_errors_total")
                   and any(f'kind="{kind}"' in k for kind in ("kafka", "redis")))
    by_type = summary["by_type"]
    assert set(by_type) == {"text", "typing", "receipt", "group"}, list(by_type)
    for name, f in by_type.items():  # sent x recipients (owed) = delivered + counted errors, nothing lost
        assert f["sent"] > 0 and f["lost"] == 0, (name, f)
        assert f["owed"] <= f["received"] + f["errors"] <= f["owed"] + failures, (name, f, failures)
    group = by_type["group"]
    assert group["acked"] + group["errors"] == group["sent"] and group["fan_out"] > 1, group
    msgs = summary["messages"]
    assert msgs["lost"] == 0 and sum(f["received"] for f in by_type.values()) == msgs["received"], msgs
    # every group message went to the other node too (one Kafka record each), and was fanned out there
    for gw, d in delta.items():
        assert d[f'im_gateway_group_records_total{{node="{gw}",direction="received"}}'] > 0, delta
        assert d[f'im_gateway_group_deliveries_total{{node="{gw}",route="remote"}}'] > 0, delta
        assert d.get(f'im_gateway_errors_total{{node="{gw}",kind="remote_group_member_gone"}}', 0) == 0, delta
    # the gateways' side of the same accounting: every gmsg they wrote is one the agents received
    written = sum(v for d in delta.values() for k, v in d.items() if k.startswith("im_gateway_group_deliveries_total"))
    assert written == group["received"], (delta, group)
    cross = sum(d[f'im_gateway_group_deliveries_total{{node="{gw}",route="remote"}}'] for gw, d in delta.items())
    print(f"\nlab chat-mix: {sum(nodes.values())} users over {nodes}, groups on both nodes (Redis, max seen) "
          f"{max(spanning)}; per type sent/owed/received/errors/lost: "
          + ", ".join(f"{n} {f['sent']}/{f['owed']}/{f['received']}/{f['errors']}/{f['lost']}" for n, f in by_type.items())
          + f"; group fan-out {group['fan_out']:.2f}, cross-node group deliveries {cross:g}, backend failures "
          f"{failures:g}", file=sys.stderr)


def lab_defaults(cfg: LabConfig) -> dict:
    """The load `fab cluster-test -i inventory/lab` runs when given none (the lab inventory's loadgen_* vars)."""
    return yaml.safe_load((cfg.inventory_dir / "group_vars" / "generators" / "lab.yml").read_text())


def fab_defaults_run(cfg: LabConfig, reports: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`fab cluster-test -i inventory/lab` and nothing else but `extra`: the lab's default load and the spec's
    criteria for the cluster scenario (latency and message success included)."""
    r = run(_tool("fab"), "-r", str(REPO), "cluster-test", "-i", str(cfg.inventory_dir), "--reports-dir", str(reports),
            *extra, timeout=600, env={"AUTH_TOKEN": lab_token(cfg)})
    return r, json.loads((only_run(reports) / "summary.json").read_text())


@pytest.mark.timeout(900)
def test_the_lab_default_cluster_test_passes(lab, tmp_path):
    """The lab's own cluster test at its default load (chosen below the measured capacity of this 2-core
    machine, docs/cluster-capacity.md) passes every default criterion, with exact accounting and an even
    split of the users over the two gateway nodes."""
    defaults = lab_defaults(lab)
    assert defaults["loadgen_stages"] and defaults["loadgen_rate"] > 0
    r, summary = fab_defaults_run(lab, tmp_path / "reports")
    findings = {f["id"]: f["evidence"] for f in summary["diagnostics"]["findings"]}
    assert r.returncode == 0 and summary["status"] == "PASS", (summary["status"], summary["criteria"], findings,
                                                                tail(r))
    msgs = summary["messages"]
    assert msgs["received"] + msgs["errors"] + msgs["lost"] == msgs["sent"] and msgs["lost"] == 0, msgs
    assert msgs["sent"] >= 0.9 * summary["plan"]["offered_msgs_per_s"] * summary["plan"]["hold_s"], msgs
    # the agents split users evenly over the nodes: the report's per-node figure must show it
    assert summary["distribution"]["node_imbalance"] <= 1.1, summary["distribution"]
    print(f"\nlab defaults {defaults['loadgen_stages']} x {defaults['loadgen_rate']} msg/s: PASS, p99 "
          f"{summary['latency_ms']['p99']} ms, {msgs['sent']} sent", file=sys.stderr)


@pytest.mark.timeout(900)
def test_twice_the_default_load_passes_or_the_report_names_the_saturated_part(lab, tmp_path):
    defaults = lab_defaults(lab)
    rate = 2 * float(defaults["loadgen_rate"])
    r, summary = fab_defaults_run(lab, tmp_path / "reports", "--rate", f"{rate:g}")
    msgs = summary["messages"]
    assert msgs["received"] + msgs["errors"] + msgs["lost"] == msgs["sent"], msgs  # accounted for, passed or not
    findings = {f["id"]: f for f in summary["diagnostics"]["findings"]}
    print(f"\n2x the lab default ({rate:g} msg/s per user): {summary['status']}, p99 {summary['latency_ms']['p99']} ms; "
          f"saturation: {findings.get('saturation', {}).get('title')}", file=sys.stderr)
    if summary["status"] == "PASS":
        assert r.returncode == 0
        return
    assert r.returncode == 99, tail(r)
    sat = findings.get("saturation")
    assert sat is not None, {k: f["evidence"] for k, f in findings.items()}
    assert sat["parts"] and sat["title"].startswith("Saturated: "), sat
    # the named part is one the run measured: a gateway's event loop, a backend, or the machine's CPU
    assert any(word in part for part in sat["parts"] for word in ("gateway", "kafka", "Kafka", "redis", "Redis",
                                                                   "etcd", "CPU")), sat
    html = (only_run(tmp_path / "reports") / "report.html").read_text()
    assert sat["title"] in html_unescape(html)  # as the page shows it (jinja writes "host's" as host&#39;s)


@pytest.mark.timeout(900)
def test_a_kafka_broker_stopped_mid_run_routing_continues(lab, tmp_path):
    proc = fab_cluster_test(lab, tmp_path / "reports", ["5s:400", "40s:400", "3s:0"])
    stopped_at = None
    try:
        time.sleep(20)  # fab's start lead + ramp + some hold
        r = ssh(lab, "infra2", "systemctl stop kafka")
        assert r.returncode == 0, r.stderr
        stopped_at = time.time()
        out, _ = proc.communicate(timeout=600)
    finally:
        ssh(lab, "infra2", "systemctl start kafka")
        if proc.poll() is None:
            proc.terminate()
    run_dir = only_run(tmp_path / "reports")
    msgs = agent_messages(run_dir)
    # every message accounted for; a broker's failover may deliver a few twice (the gateway's Kafka producer retries
    # a produce whose first attempt was written: at least once, docs/protocol.md), never lose one. A fresh clone saw
    # 6 of 35,155 delivered twice.
    duplicates = msgs["received"] + msgs["errors"] + msgs["lost"] - msgs["sent"]
    assert 0 <= duplicates <= 0.001 * msgs["sent"], msgs
    assert msgs["errors"] + msgs["lost"] <= 0.05 * msgs["sent"], msgs
    # messages kept arriving after the broker went away (RF 3, min.insync.replicas 2)
    received_after = 0
    for ts_csv in run_dir.glob("agents/*/timeseries.csv"):
        with open(ts_csv, newline="") as f:
            received_after += sum(int(row["msgs_received"]) for row in csv.DictReader(f)
                                  if float(row["ts"]) > stopped_at + 5)
    assert received_after > 5_000, received_after
    errors = {gw: {k: v for k, v in metrics(gw).items() if k.startswith("im_gateway_errors_total")} for gw in GATEWAYS}
    print("\ngateway errors after the broker stop:", json.dumps(errors), file=sys.stderr)
    wait_for(lambda: "ReplicationFactor: 3" in ssh(lab, "infra1", f"kafka-topics --bootstrap-server {INFRA1[0]}:9092 "
                                                   "--describe --topic im-gateway.node.gw1").stdout, 120, "kafka back")


@pytest.mark.timeout(600)
def test_a_stopped_gateway_node_entries_expire_and_the_other_node_serves(lab):
    from websockets.asyncio.client import connect

    token = lab_token(lab)
    headers = {"Authorization": f"Bearer {token}"}

    def url(gw, user):
        return f"ws://{GATEWAYS[gw]}:8080/ws?user={user}"

    async def recv(ws):
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
            if frame["type"] != "pong":
                return frame

    async def go():
        # no client keepalive: the ssh/redis-cli checks below block this loop for seconds at a time, and a
        # client-side ping timeout would end the test for reasons that are not the gateway's
        async with connect(url("gw1", "lab-a1"), additional_headers=headers, ping_interval=None) as a1, \
                connect(url("gw1", "lab-a2"), additional_headers=headers, ping_interval=None) as a2, \
                connect(url("gw2", "lab-b1"), additional_headers=headers, ping_interval=None) as b1:
            wait_for(lambda: redis_cli(lab, "EXISTS", "im:session:lab-b1") == "1", 10, "lab-b1 registered")
            await a1.send(json.dumps({"type": "send", "to": "lab-b1", "id": 1, "ts": 1, "body": "x"}))
            crossed = await recv(b1)
            # gw2 dies without a goodbye (SIGKILL; systemd's restart cancelled)
            r = ssh(lab, "gw2", "systemctl kill -s KILL im-gateway; systemctl stop im-gateway")
            assert r.returncode == 0, r.stderr
            t0 = time.time()
            gone_after = None
            while time.time() - t0 < REGISTRY_TTL_S + 10:
                await a1.send(json.dumps({"type": "ping", "ts": 0}))  # a1 and a2 keep their entries alive
                await a2.send(json.dumps({"type": "ping", "ts": 0}))
                if gone_after is None and redis_cli(lab, "EXISTS", "im:session:lab-b1") == "0":
                    gone_after = time.time() - t0
                    break
                await asyncio.sleep(1)
            await a1.send(json.dumps({"type": "send", "to": "lab-a2", "id": 2, "ts": 2, "body": "local"}))
            local = await recv(a2)
            await a1.send(json.dumps({"type": "send", "to": "lab-b1", "id": 3, "ts": 3, "body": "gone"}))
            err = await recv(a1)
            while err.get("id") != 3:
                err = await recv(a1)
            return crossed, gone_after, local, err

    try:
        crossed, gone_after, local, err = asyncio.run(go())
        assert crossed["from"] == "lab-a1"
        assert gone_after is not None and gone_after <= REGISTRY_TTL_S + 3, gone_after
        assert local["body"] == "local"  # the other node keeps serving
        assert err["type"] == "error" and err["code"] == "unknown_recipient"
        wait_for(lambda: etcd_nodes(lab) == ["gw1"], LEASE_TTL_S + 10, "gw2's lease to expire")
        assert metric("gw1", "im_gateway_cluster_nodes") in (1.0, 2.0)
    finally:
        ssh(lab, "gw2", "systemctl start im-gateway")
    wait_for(lambda: all(metric(g, "im_gateway_cluster_nodes") == 2 for g in GATEWAYS), 60, "gw2 back in the cluster")


def prometheus_api(path: str, **params) -> dict:
    from urllib.parse import urlencode

    url = f"http://{INFRA1[0]}:9090/api/v1/{path}" + (f"?{urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=15) as r:
        body = json.loads(r.read().decode())
    assert body["status"] == "success", body
    return body["data"]


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads((REPO / "dashboards" / "loadgen.json").read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


@pytest.mark.timeout(900)
def test_prometheus_scrapes_gateways_node_exporters_and_agents_and_every_dashboard_query_has_data(lab, tmp_path):
    """Prometheus (roles/prometheus, on the lab's first infra host) scrapes both gateways, every host's node
    exporter and, during a run, both agents (file_sd targets fab writes); every query of the shipped dashboard
    returns data from it while the run goes on (docs/live.md)."""
    hosts = re.findall(r"^(\S+) ansible_host=", (lab.inventory_dir / "hosts.ini").read_text(), re.M)
    proc = fab_cluster_test(lab, tmp_path / "reports", ["5s:200", "45s:200", "3s:0"], rate=2.0)
    try:
        def up(job: str) -> set[str]:
            return {t["labels"].get("host") or t["labels"]["instance"]
                    for t in prometheus_api("targets")["activeTargets"]
                    if t["labels"]["job"] == job and t["health"] == "up"}

        # fab connects, runs preflight and the before-snapshot first (a minute or more on a busy lab)
        wait_for(lambda: len(up("loadgen-agents")) == 2, 300, "both agents' /metrics up in Prometheus")
        assert up("im-gateway") == {"gw1", "gw2"}
        assert up("node") == set(hosts)
        time.sleep(25)  # a few scrapes (5 s apart) into the hold: rate()s over 1m have two samples and more
        empty = [(title, expr) for title, expr in dashboard_queries()
                 if not prometheus_api("query", query=expr)["result"]]
        assert empty == [], empty
        # the fleet's live connections as the agents report them
        active = prometheus_api("query", query="sum(loadgen_connections_active)")["result"]
        assert float(active[0]["value"][1]) >= 150, active
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
    assert proc.returncode == 0, out[-4000:]
    # after the run fab emptied the agents' targets again
    r = ssh(lab, "infra1", "cat /etc/prometheus/file_sd/loadgen-agents.json")
    assert json.loads(r.stdout) == [], r.stdout
