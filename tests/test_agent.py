"""The agent end to end against a real reference gateway on 127.0.0.1 (a few seconds per scenario)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

from conftest import TOKEN, start_gateway, run_loadgen
from loadgen.results import histogram as hdr
from loadgen.results.columns import COLUMNS


def read_rows(out):
    with open(out / "timeseries.csv") as f:
        return list(csv.DictReader(f))


def summary(out):
    return json.loads((out / "summary.json").read_text())


def wait_until_active(out, n: int, proc, timeout: float = 60) -> None:
    """Until the agent's latest second shows n open connections (a busy machine starts agents slowly)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "timeseries.csv").exists():
            rows = read_rows(out)
            if rows and sum(int(r["active"]) for r in rows if r["ts"] == rows[-1]["ts"]) >= n:
                return
        time.sleep(0.2)
    raise AssertionError(f"the agent never held {n} connections")


def test_throughput_scenario_measures_every_message(gateway, tmp_path):
    out = tmp_path / "t"
    r = run_loadgen("run", "throughput", "--vus", "20", "--rate", "10", "--duration", "4s", "--workers", "2",
                    "-e", f"GATEWAY_PORT={gateway.port}", "-e", "MESSAGE_SIZE=256", "--out", str(out),
                    "--gateway-metrics", gateway.metrics_url,
                    "--criterion", "gateway_rss_growth_bytes_per_min=off")  # 4 s: too short a hold for a slope
    assert r.returncode == 0, r.stdout + r.stderr
    s = summary(out)
    assert s["connections"]["established"] == 20 and s["connections"]["success_rate"] == 1.0
    m = s["messages"]
    assert 700 <= m["sent"] <= 820  # 20 users x 10/s x 4 s, on schedule
    assert m["received"] == m["sent"] and m["acked"] == m["sent"] and m["errors"] == 0
    assert 170 <= m["throughput_per_s"] <= 230
    assert s["latency_ms"]["count"] == m["received"] and 0 < s["latency_ms"]["p99"] < 200
    assert {c["name"] for c in s["criteria"]} >= {"throughput_per_s", "message_p99_ms", "message_success_rate"}
    assert s["passed"] is True and s["complete"] is True
    assert s["gateway"]["gateway_cpu_percent"] is not None  # sampled from /metrics
    rows = read_rows(out)
    assert list(rows[0].keys()) == list(COLUMNS)
    assert {r["worker"] for r in rows} == {"0", "1"}
    assert 8 <= len(rows) <= 14  # one row per second per worker (+ drain rows)
    # the CSV alone reproduces the summary: merged interval histograms == summary histogram
    merged = hdr.new_histogram()
    for row in rows:
        hdr.merge_encoded(merged, row["latency_hdr"])
    assert merged.get_total_count() == m["received"]
    assert merged.get_value_at_percentile(99) / 1000 == s["latency_ms"]["p99"]
    assert sum(int(r["msgs_sent"]) for r in rows) == m["sent"]
    assert "Throughput Load Test Summary" in r.stdout and "Result: PASSED" in r.stdout


def test_connection_scenario_ramps_holds_and_heartbeats(gateway, tmp_path):
    out = tmp_path / "c"
    r = run_loadgen("run", "connection", "--stage", "2s:60", "--stage", "2s:60", "--stage", "1s:0",
                    "--heartbeat-interval", "1s", "--rate", "2", "-e", f"GATEWAY_PORT={gateway.port}",
                    "--out", str(out), "--workers", "1")
    # gateway memory is not measured without --gateway-metrics: never a pass, so PARTIAL, exit 1 (issue 11)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Result: PARTIAL (not measured: Gateway memory per connection (bytes))" in r.stdout
    s = summary(out)
    assert s["status"] == "PARTIAL" and s["passed"] is False and s["complete"] is True
    assert s["connections"]["established"] == 60 and s["connections"]["peak_active"] == 60
    assert s["session_s"]["count"] == 60 and s["session_s"]["p95"] >= 2.0
    rows = read_rows(out)
    # a row carries the phase of the second it counts: 2 ramp seconds (all the connects), 2 hold, 1 ramp-down
    planned = [r["phase"] for r in rows if r["phase"] != "drain"]
    assert planned == ["ramp-up", "ramp-up", "hold", "hold", "ramp-down"], planned
    assert sum(int(r["connects_ok"]) for r in rows if r["phase"] == "ramp-up") >= 30
    assert sum(int(r["pings"]) for r in rows) > 60 and sum(int(r["pongs"]) for r in rows) > 60
    assert sum(int(r["closes"]) for r in rows) == 60 and sum(int(r["disconnects"]) for r in rows) == 0
    crit = {c["name"]: c for c in s["criteria"]}
    assert crit["gateway_memory_per_connection_bytes"]["passed"] is None  # not measured without --gateway-metrics
    assert crit["connection_success_rate"]["passed"] is True


def test_cluster_scenario_spreads_over_gateways(tmp_path):
    gws = [start_gateway(tmp_path), start_gateway(tmp_path)]
    try:
        out = tmp_path / "k"
        r = run_loadgen("run", "cluster", "--vus", "40", "--duration", "3s", "--rate", "2", "--workers", "1",
                        "--traffic", "constant",  # one message per send: received == sent
                        "--gateways", ",".join(f"127.0.0.1:{g.port}" for g in gws), "--out", str(out),
                        "--local-ips", "127.0.0.2-127.0.0.3")
        assert r.returncode == 0, r.stdout + r.stderr
        s = summary(out)
        assert s["messages"]["received"] == s["messages"]["sent"] > 100
        for g in gws:
            accepted = [ln for ln in g.metrics().splitlines() if 'result="accepted"' in ln]
            assert accepted and float(accepted[0].rsplit(" ", 1)[1]) == 20 + 1  # half the users + the preflight handshake
    finally:
        for g in gws:
            g.stop()


def test_failed_criterion_exits_99(gateway, tmp_path):
    r = run_loadgen("run", "throughput", "--vus", "4", "--rate", "5", "--duration", "2s", "--criterion",
                    "message_p99_ms<0.001", "-e", f"GATEWAY_PORT={gateway.port}", "--out", str(tmp_path / "f"))
    assert r.returncode == 99 and "[FAIL] P99 message latency" in r.stdout
    assert summary(tmp_path / "f")["passed"] is False


def test_lockstep_start_at_is_honoured_and_skew_measured(gateway, tmp_path):
    start_at = time.time() + 3
    r = run_loadgen("run", "throughput", "--vus", "4", "--rate", "5", "--duration", "2s", "--start-at", f"{start_at}",
                    "--criterion", "throughput_per_s=off", "--criterion", "gateway_cpu_percent=off",
                    "--criterion", "gateway_rss_growth_bytes_per_min=off",
                    "-e", f"GATEWAY_PORT={gateway.port}", "--out", str(tmp_path / "l"), "--workers", "2")
    assert r.returncode == 0, r.stderr
    s = summary(tmp_path / "l")
    assert s["started_at"] >= start_at
    assert set(s["start_skew_ms"]) == {"0", "1"} and all(0 <= v < 100 for v in s["start_skew_ms"].values())


def test_gateway_killed_mid_run_is_recorded_and_summary_written(tmp_path):
    gw = start_gateway(tmp_path)
    out = tmp_path / "k"
    env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-m", "loadgen", "run", "throughput", "--vus", "30", "--rate", "5",
                             "--duration", "10s", "-e", f"GATEWAY_PORT={gw.port}", "--out", str(out), "--workers", "1"],
                            env={**env, "AUTH_TOKEN": TOKEN}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_active(out, 30, proc)
    gw.stop(signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 99, stdout + stderr  # criteria fail; the run itself completes
    s = summary(out)
    assert s["connections"]["disconnects"] == 30
    rows = read_rows(out)
    assert sum(int(r["disc_lost"]) for r in rows) == 30  # SIGKILL: no close frame, the sockets just went
    assert s["connections"]["failed_by_reason"].get("refused", 0) > 0  # reconnects with backoff, refused
    assert s["messages"]["send_failed"] > 0 and s["messages"]["success_rate"] < 0.99
    assert "Traceback" not in stderr


def test_sigkilled_agent_leaves_flushed_rows(gateway, tmp_path):
    out = tmp_path / "s"
    env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-m", "loadgen", "run", "throughput", "--vus", "10", "--rate", "5",
                             "--duration", "30s", "-e", f"GATEWAY_PORT={gateway.port}", "--out", str(out),
                             "--workers", "1", "--quiet"], env={**env, "AUTH_TOKEN": TOKEN})
    # Wait for rows, not for a fixed time: a busy machine can take seconds to start the agent.
    deadline = time.monotonic() + 60
    flushed = []
    while time.monotonic() < deadline and len(flushed) < 3 and proc.poll() is None:
        time.sleep(0.2)
        if (out / "timeseries.csv").exists():
            flushed = read_rows(out)
    assert len(flushed) >= 3, "the agent wrote no rows within 60 s"
    proc.kill()
    proc.wait(10)
    rows = read_rows(out)
    assert len(rows) >= len(flushed)  # a row flushed before the kill survives it
    time.sleep(1.5)
    assert "active_connections" in gateway.metrics()


def test_deadman_stops_load_when_controller_heartbeat_goes_stale(gateway, tmp_path):
    hb = tmp_path / "heartbeat"
    hb.write_text("")
    r = run_loadgen("run", "throughput", "--vus", "4", "--rate", "2", "--duration", "60s", "--heartbeat-file", str(hb),
                    "--deadman-timeout", "2s", "-e", f"GATEWAY_PORT={gateway.port}", "--out", str(tmp_path / "d"),
                    timeout=40)
    s = summary(tmp_path / "d")
    assert s["stopped_by"] == "deadman" and s["complete"] is False
    assert s["ended_at"] - s["started_at"] < 15
    assert r.returncode in (1, 99)  # stopped early: PARTIAL (1) at best


def test_disk_full_stops_the_load_with_a_clear_error(gateway, tmp_path):
    import pytest

    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root (CI runs as root)")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(small)], check=True)
    try:
        started = time.time()
        r = run_loadgen("run", "throughput", "--vus", "20", "--rate", "20", "--duration", "60s",
                        "-e", f"GATEWAY_PORT={gateway.port}", "--out", str(small / "o"), "--workers", "1", timeout=90)
        assert r.returncode == 1, r.stdout[-1000:] + r.stderr
        assert "No space left on device" in r.stderr and "the load was stopped" in r.stderr
        assert "Traceback" not in r.stderr
        assert time.time() - started < 40  # stopped early, not after the planned 60 s
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_gateway_closing_on_us_is_a_disconnect_by_gateway_and_no_reconnect_is_honoured(tmp_path):
    """With --reconnect none, users dropped by the gateway stay gone; the drops are counted by reason."""
    gw = start_gateway(tmp_path)
    try:
        out = tmp_path / "n"
        env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
        proc = subprocess.Popen([sys.executable, "-m", "loadgen", "run", "connection", "--vus", "10", "--duration", "10s",
                                 "--rate", "1", "-e", f"GATEWAY_PORT={gw.port}", "--out", str(out), "--workers", "1",
                                 "--reconnect", "none", "--quiet"], env={**env, "AUTH_TOKEN": TOKEN})
        wait_until_active(out, 10, proc)
        gw.stop(signal.SIGTERM)  # a graceful stop closes every session with a close frame
        try:
            proc.wait(20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        rows = read_rows(out)
        drops = sum(int(r["disconnects"]) for r in rows)
        assert drops == 10
        assert sum(int(r["disc_by_gateway"]) for r in rows) == drops  # each got the gateway's close frame 1001
        assert sum(int(r["disc_lost"]) for r in rows) == 0
        assert gw.proc.wait(10) == 0
        assert sum(int(r["connects_failed"]) for r in rows) == 0  # nobody tried to come back
        assert summary(out)["connections"]["attempted"] == 10
    finally:
        gw.stop()


# --- planned close with a quiet period (--close-quiesce), without sockets ---------------------------
class FakeTransport:
    def __init__(self):
        self.texts, self.closes = [], []
        self.request = self.response = None

    def send(self, kind, data):
        self.texts.append(data)

    def send_close(self, code):
        self.closes.append(code)

    def disconnect(self):
        pass


def quiesce_worker(quiesce_s: float, mode: str = "peer", n: int = 8):
    """A worker with n open connections (fake transports), every send due."""
    from types import SimpleNamespace

    from loadgen.agent import worker as wk
    from loadgen.agent.slots import OPEN
    from loadgen.plan.stages import Profile, Stage

    plan = SimpleNamespace(profile=Profile([Stage(10, n)]), workers=1, agent_id="t", endpoints=[("127.0.0.1", 1)],
                           path="/ws", closed_loop=False, message_size=16, token=TOKEN, rate=10.0, heartbeat_s=30.0,
                           pairing="same-node", mode=mode, close_quiesce_s=quiesce_s, local_ips=None,
                           max_connecting=256, reconnect="backoff", backoff_base_s=0.5, backoff_cap_s=30.0)
    w = wk.Worker(plan, 0, plan.profile, lambda msg: None)
    for slot in range(n):
        conn = wk.Conn(w, slot)
        conn.transport = FakeTransport()
        w.slots.conns[slot], w.slots.state[slot] = conn, OPEN
        w.slots.active += 1
        w.sends.add(slot, 0)
    w.slots.high = n
    return w


def test_ramp_down_quiesces_the_pair_until_nothing_is_in_flight_then_closes_exactly_as_many():
    import asyncio

    from loadgen.agent import frames
    from loadgen.agent import worker as wk
    from loadgen.agent.slots import IDLE

    async def go():
        w = quiesce_worker(60.0)  # the quiet periods end on counts here, never on the 60 s bound
        w.fire_sends(99_999_999)  # every slot sends one message to its partner (s <-> s^1): one period, 0.1 s
        assert all(w.pending_in[s] == 1 and w.pending_out[s] == 1 for s in range(8))
        # slot 5's message to 4 was delivered and acked; nothing else has arrived yet
        w.on_text(b'{"type":"msg","from":"t-0-5","id":6,"ts":1,"body":""}', 4)
        w.on_text(b'{"type":"ack","id":6}', 5)
        assert w.pending_in[4] == 0 and w.pending_out[5] == 0 and w.pending_in[5] == 1
        w.adjust(5, 2_000_000_000)  # ramp-down of 3: the newest slots 7, 6, 5 quiesce; no close frame yet
        assert set(w.slots.quiescing) == {5, 6, 7} and w.slots.closing == 3 and w.slots.held() == 5
        assert not any(w.slots.conns[s].transport.closes for s in range(8))
        w.adjust(5, 2_000_000_000)  # quiescing slots are not held: nothing more to close or open
        assert set(w.slots.quiescing) == {5, 6, 7} and w.slots.connecting == 0 and w.slots.held() == 5
        for s in range(8):
            w.slots.conns[s].transport.texts.clear()
        w.fire_sends(3_000_000_000)  # every slot is due
        sent = {s for s in range(8) if w.slots.conns[s].transport.texts}
        assert sent == {0, 1, 2, 3}  # 5-7 quiesce; 4 does not send to its quiescing partner 5
        assert w.iv.msgs_skipped >= 1
        w.end_quiet_periods(3_000_000_000)  # 4's message to 5 and 6's, 7's are still in flight: no close
        assert set(w.slots.quiescing) == {5, 6, 7}
        # 4's message to 5 arrives: 5 has nothing in flight any more and closes, with no time bound reached
        w.on_text(b'{"type":"msg","from":"t-0-4","id":5,"ts":1,"body":""}', 5)
        w.end_quiet_periods(3_000_000_000)
        assert set(w.slots.quiescing) == {6, 7} and w.slots.conns[5].planned
        assert w.slots.conns[5].transport.closes == [wk.WSCloseCode.OK]
        # the gateway drops slot 6 during its quiet period: a drop, but the slot was leaving (IDLE, not DOWN)
        conn6 = w.slots.conns[6]
        conn6.closed_by_gateway = True
        w.on_disconnected(conn6)
        assert w.iv.disconnects == 1 and w.iv.disc_by_gateway == 1 and not w.slots.down
        assert w.slots.state[6] == IDLE and w.slots.closing == 2 and w.slots.held() == 5 and set(w.slots.quiescing) == {7}
        assert w.pending_in[6] == 0 and w.pending_out[6] == 0  # what was in flight ended with the session
        # 7's own message is refused (error frame to 7): that is an answer for 7 and settles 6's inbound count
        w.on_text(b'{"type":"error","code":"unknown_recipient","detail":"x","id":8}', 7)
        assert w.pending_out[7] == 0 and w.pending_in[7] == 1  # 6's message to 7 is still on its way
        w.end_quiet_periods(3_000_000_000)
        assert set(w.slots.quiescing) == {7} and not conn6.transport.closes
        w.end_quiet_periods(3_000_000_000 + 60_000_000_000)  # the bound: closed with 1 message still in flight
        assert not w.slots.quiescing and w.slots.conns[7].planned and w.slots.closing == 2 and w.slots.held() == 5
        for s in (5, 7):  # the gateway's close replies
            w.on_disconnected(w.slots.conns[s])
        assert w.iv.closes == 2 and w.slots.closing == 0 and w.slots.active == 5 and w.slots.held() == 5
        w.adjust(5, 0)
        assert w.slots.connecting == 0 and not w.slots.quiescing
        assert frames.classify(b'{"type":"error","code":"x"}')[0] == frames.ERROR

    asyncio.run(go())


def test_a_slot_with_nothing_in_flight_closes_at_once_and_no_quiet_period_with_0_or_in_echo_mode():
    import asyncio

    async def go():
        for w in (quiesce_worker(60.0), quiesce_worker(0.0), quiesce_worker(1.0, mode="echo")):
            w.adjust(5, 0)  # nothing was sent: nothing to wait for
            assert not w.slots.quiescing and w.slots.closing == 3
            assert [s for s in range(8) if w.slots.conns[s].transport.closes] == [5, 6, 7]
        w = quiesce_worker(0.0)
        w.fire_sends(1_000_000_000)
        assert w.pending_in is None  # --close-quiesce 0: no accounting at all
        w.adjust(5, 0)
        assert not w.slots.quiescing and [s for s in range(8) if w.slots.conns[s].transport.closes] == [5, 6, 7]

    asyncio.run(go())


def _start_agent(gateway, out, workers, duration="30s"):
    env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
    return subprocess.Popen([sys.executable, "-m", "loadgen", "run", "throughput", "--vus", "10", "--rate", "5",
                             "--duration", duration, "-e", f"GATEWAY_PORT={gateway.port}", "--out", str(out),
                             "--workers", str(workers), "--quiet"], env={**env, "AUTH_TOKEN": TOKEN},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_all_open(proc, out, n=10, timeout=30):
    """Until status.json shows all n connections open (the agent writes it every second)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            status = json.loads((out / "status.json").read_text())
        except (OSError, ValueError):
            status = {}
        if status.get("state") == "running" and status.get("active") == n:
            return status
        time.sleep(0.1)
    raise AssertionError(f"agent did not open {n} connections: {proc.poll()}")


def _children(pid):
    import psutil

    return psutil.Process(pid).children(recursive=True)


def test_one_worker_agent_is_one_process_and_sigterm_ends_with_a_summary(gateway, tmp_path):
    out = tmp_path / "one"
    proc = _start_agent(gateway, out, 1)
    try:
        status = _wait_all_open(proc, out)
        assert _children(proc.pid) == []  # worker 0 runs inside the agent process
        assert status["pid"] == proc.pid and status["workers_alive"] == 1
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode in (1, 99), stderr  # stopped early: PARTIAL (1) at best
    s = summary(out)
    assert s["stopped_by"] == "SIGTERM" and s["complete"] is False and s["workers_dead"] == []
    assert s["connections"]["established"] == 10 and s["messages"]["sent"] > 0
    assert s["messages"]["received"] == s["messages"]["sent"]  # drained before closing
    assert sum(int(r["msgs_sent"]) for r in read_rows(out)) == s["messages"]["sent"]
    assert json.loads((out / "status.json").read_text())["state"] == "done"
    assert "Traceback" not in stderr


def test_sigint_stops_every_worker_and_keeps_their_data(gateway, tmp_path):
    out = tmp_path / "int"
    proc = _start_agent(gateway, out, 2)
    try:
        _wait_all_open(proc, out)
        assert len(_children(proc.pid)) == 1  # worker 0 in the agent process, worker 1 forked
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode in (1, 99), stderr  # stopped early: PARTIAL (1) at best
    s = summary(out)
    assert s["stopped_by"] == "SIGINT" and s["workers_dead"] == [] and s["complete"] is False
    rows = read_rows(out)
    assert {r["worker"] for r in rows} == {"0", "1"}
    assert {r["worker"] for r in rows if r["phase"] == "drain"} == {"0", "1"}  # both drained
    assert s["messages"]["received"] == s["messages"]["sent"] > 0
    assert "Traceback" not in stderr


def test_killed_forked_worker_is_reported_dead_and_the_others_data_kept(gateway, tmp_path):
    out = tmp_path / "dead"
    proc = _start_agent(gateway, out, 2, duration="6s")
    try:
        _wait_all_open(proc, out)
        (child,) = _children(proc.pid)
        child.kill()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr
    assert "1 worker(s) died" in stderr and "Traceback" not in stderr
    s = summary(out)
    assert s["workers_dead"] == [1] and s["complete"] is False and s["stopped_by"] is None
    rows = read_rows(out)
    w0 = [r for r in rows if r["worker"] == "0"]
    assert [r for r in w0 if r["phase"] == "drain"]  # worker 0 ran to its planned end
    assert sum(int(r["msgs_sent"]) for r in rows) == s["messages"]["sent"]
    assert s["connections"]["established"] == 10
