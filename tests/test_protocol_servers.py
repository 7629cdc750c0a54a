"""The xmpp and mqtt profiles against real servers the tests start themselves on 127.0.0.1 (Debian's prosody
and mosquitto, installed by `make test`'s system step), stopped by PID: the connection scenario (ramp, hold,
ramp down) and the throughput scenario (users send to peers) at 200 users, every message accounted for.

Prosody runs on one Lua thread: the load stays small (1 msg/s per user) and the latency bound is one a busy
machine keeps; what must be exact is the accounting: sent = delivered + counted errors, nothing lost.
"""

import json
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import free_port, run_loadgen

# the gateway's own figures come from the reference gateway's /metrics, which these servers do not have
GATEWAY_CRITERIA_OFF = {"throughput": ("--criterion", "gateway_cpu_percent=off",
                                       "--criterion", "gateway_rss_growth_bytes_per_min=off"),
                        "connection": ("--criterion", "gateway_memory_per_connection_bytes=off")}

# A test-only Prosody: 127.0.0.1 only, no TLS, any user name logs in with any password (mod_auth_insecure), so
# no accounts need creating; WebSocket at /xmpp-websocket.
PROSODY_CONFIG = """
run_as_root = true
daemonize = false
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
log = {{ info = "{dir}/prosody.log" }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
s2s_ports = {{}}
http_ports = {{ {http} }}
http_interfaces = {{ "127.0.0.1" }}
https_ports = {{}}
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; "websocket" }}
modules_disabled = {{ "s2s"; "offline" }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
consider_websocket_secure = true
cross_domain_websocket = true
authentication = "insecure"
insecure_open_authentication = "Yes please, I know what I'm doing!"
VirtualHost "im.test"
"""


def wait_listening(proc, port: int, log, what: str) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text() if log.exists() else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port}")


def stop(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def prosody(tmp_path):
    exe = shutil.which("prosody")
    assert exe, "prosody is not installed: make test's system-deps installs it (as root)"
    c2s, http = free_port(), free_port()
    (tmp_path / "data").mkdir()
    cfg = tmp_path / "prosody.cfg.lua"
    cfg.write_text(PROSODY_CONFIG.format(dir=tmp_path, c2s=c2s, http=http))
    log = tmp_path / "prosody.out"
    proc = subprocess.Popen([exe, "-F", "--config", str(cfg)], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        wait_listening(proc, http, log, "prosody")
        yield http
    finally:
        stop(proc)


@pytest.fixture
def mosquitto(tmp_path):
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    plain, ws = free_port(), free_port()
    cfg = tmp_path / "mosquitto.conf"
    # 2.0 refuses to start with a WebSocket listener alone: a plain one on 127.0.0.1 beside it
    cfg.write_text(f"listener {plain} 127.0.0.1\nlistener {ws}\nprotocol websockets\nsocket_domain ipv4\n"
                   "allow_anonymous true\nmax_keepalive 600\n")
    log = tmp_path / "mosquitto.out"
    proc = subprocess.Popen([exe, "-c", str(cfg)], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        wait_listening(proc, ws, log, "mosquitto")
        yield ws
    finally:
        stop(proc)


def run(protocol: str, port: int, out, scenario: str, *args):
    r = run_loadgen("run", scenario, *args, "-e", f"GATEWAY_PORT={port}", "-e", "MESSAGE_SIZE=128",
                    "--protocol", protocol, "--out", str(out), *GATEWAY_CRITERIA_OFF[scenario],
                    # time for a handshake on a busy machine (Prosody's single Lua thread serves every upgrade
                    # and every login's round trips: TCP + upgrade P95 up to 12 s measured at load 14-22)
                    "--connect-timeout", "30s", token=None, timeout=240)
    return r, json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else None


def assert_every_message_accounted_for(s: dict) -> None:
    m = s["messages"]
    assert m["sent"] == m["received"] + m["error_frames"] and m["lost"] == 0, m
    assert s["latency_ms"]["count"] == m["received"]


def throughput(protocol: str, port: int, tmp_path, p99_ms: int):
    out = tmp_path / "throughput"
    # bounds a busy machine keeps (measured here at load 14-22 on 2 cores: connect P95 up to 12.4 s, 100-162
    # msg/s of the 200 offered while late connections were still logging in); the accounting stays exact
    r, s = run(protocol, port, out, "throughput", "--stage", "10s:200", "--stage", "8s:200", "--stage", "2s:0",
               "--rate", "1", "--criterion", f"message_p99_ms<{p99_ms}", "--criterion", "connect_p95_ms<30000",
               "--criterion", "throughput_per_s>50")
    assert s is not None, r.stdout + r.stderr
    assert r.returncode == 0 and s["status"] == "PASS", r.stdout + r.stderr
    c = s["connections"]
    # every attempt logged in; on a quiet machine all 200 do within the ramp, on a very busy one (load 24 on 2
    # cores measured) Prosody's single thread may still be logging the last ones in when the ramp-down begins
    assert c["failed"] == 0 and c["established"] >= 150 and s["login_ms"]["count"] == c["established"]
    assert s["protocol"]["name"] == protocol
    assert s["messages"]["sent"] >= 1000
    assert_every_message_accounted_for(s)
    return s


def connection(protocol: str, port: int, tmp_path, p99_ms: int):
    out = tmp_path / "connection"
    r, s = run(protocol, port, out, "connection", "--stage", "10s:200", "--stage", "6s:200", "--stage", "3s:0",
               "--rate", "0.5", "--heartbeat-interval", "2s", "--criterion", f"message_p99_ms<{p99_ms}",
               "--criterion", "connect_p95_ms<30000")
    assert s is not None, r.stdout + r.stderr
    assert r.returncode == 0 and s["status"] == "PASS", r.stdout + r.stderr
    c = s["connections"]
    assert c["failed"] == 0 and c["disconnects"] == 0 and c["established"] >= 150 and c["peak_active"] >= 100
    assert s["session_s"]["count"] == c["established"]  # every session ended by the ramp-down's polite close
    assert s["messages"]["sent"] > 0
    assert_every_message_accounted_for(s)
    rows = (out / "timeseries.csv").read_text().splitlines()
    header = rows[0].split(",")
    pings = sum(int(r.split(",")[header.index("pings")]) for r in rows[1:])
    pongs = sum(int(r.split(",")[header.index("pongs")]) for r in rows[1:])
    # the protocol's heartbeat answered: every ping but those still on their way when their session closed
    assert pongs > 150 and pings - c["established"] <= pongs <= pings
    return s


def test_xmpp_against_prosody_throughput(prosody, tmp_path):
    s = throughput("xmpp", prosody, tmp_path, p99_ms=10_000)
    assert s["messages"]["acked"] == 0  # XMPP acks no chat message: a delivery ends the sender's in-flight count


def test_xmpp_against_prosody_connection(prosody, tmp_path):
    connection("xmpp", prosody, tmp_path, p99_ms=10_000)


def test_mqtt_against_mosquitto_throughput(mosquitto, tmp_path):
    s = throughput("mqtt", mosquitto, tmp_path, p99_ms=5000)
    assert s["messages"]["acked"] == s["messages"]["sent"]  # every QoS 1 PUBLISH answered by a PUBACK


def test_mqtt_against_mosquitto_connection(mosquitto, tmp_path):
    connection("mqtt", mosquitto, tmp_path, p99_ms=5000)


def test_fab_cluster_test_protocol_xmpp_against_a_prosody_target_in_the_inventory(prosody, tmp_path):
    """`fab cluster-test --protocol xmpp` with the inventory naming a server fab does not start (Prosody here):
    two generators in lockstep, each plan carrying the xmpp profile, no token anywhere, ending in a report."""
    import os
    import sys

    inv, reports = tmp_path / "inventory", tmp_path / "reports"
    (inv / "group_vars").mkdir(parents=True)
    (inv / "hosts.ini").write_text(
        "[generators]\ngen1 loadgen_local_ips=127.0.0.2\ngen2 loadgen_local_ips=127.0.0.3\n\n"
        f"[gateways]\nprosody1 gateway_port={prosody} gateway_managed_by=external\n")
    (inv / "group_vars" / "all.yml").write_text(
        "ansible_connection: local\nansible_host: 127.0.0.1\n"
        f"loadgen_agent_workdir: {tmp_path}/work\nloadgen_workers: 1\n"
        'loadgen_stages: ["5s:40", "5s:40", "2s:0"]\nloadgen_rate: 1\nloadgen_message_size: 128\n')
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
    r = subprocess.run([os.path.join(os.path.dirname(sys.executable), "fab"), "-r", root, "cluster-test", "-i", str(inv),
                        "--reports-dir", str(reports), "--protocol", "xmpp", "--probe-interval", "2",
                        "--criterion", "message_p99_ms<10000"], capture_output=True, text=True, timeout=240, env=env)
    runs = os.listdir(reports) if reports.exists() else []
    assert len(runs) == 1, r.stdout[-3000:] + r.stderr[-3000:]
    run = reports / runs[0]
    assert (run / "report.html").exists() and r.stdout.splitlines()[-1] == f"report: {run.resolve()}/report.html"
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "PASS" and s["protocol"]["name"] == "xmpp"
    assert s["connections"]["established"] == 40 and s["login_ms"]["count"] == 40
    m = s["messages"]
    assert m["sent"] > 0 and m["sent"] == m["received"] + m["error_frames"] and m["lost"] == 0
    plan = json.loads((run / "plan.json").read_text())
    assert plan["protocol"]["name"] == "xmpp" and plan["protocol"]["profile"]["connect"]["subprotocols"] == ["xmpp"]
    for gen in ("gen1", "gen2"):
        agent = json.loads((run / "agents" / gen / "summary.json").read_text())
        assert agent["protocol"]["name"] == "xmpp" and agent["connections"]["established"] == 20
    html = (run / "report.html").read_text()
    assert "Protocol</td><td>xmpp (profile sha256:" in html
    assert not [p for p in tmp_path.joinpath("work").rglob("token")]  # the profile uses no token: none written
