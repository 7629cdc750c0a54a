"""The fast paths (issue 6) behave exactly like the slow ones: recorder encoding, canonical echo replies,
closed-loop echo, and a multi-process gateway on one port. Behaviour only, never timing."""

import asyncio
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
import types
import urllib.request

import picows
import pytest

from hypothesis import given, settings, strategies as st
from websockets.asyncio.client import connect

from conftest import TOKEN, free_port, run_loadgen, start_gateway, two_free_ports
from loadgen.agent import frames, worker
from loadgen.results import histogram as hdr
from loadgen.agent.interval import Interval
from loadgen.gateway import protocol
from loadgen.gateway.session import canonical_echo_reply


# --- Recorder: counts with HdrHistogram's index math, emits the standard encoding ----------------------
@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-5, 10**12), max_size=300))
def test_recorder_encodes_exactly_like_hdrhistogram(values):
    rec, ref = hdr.Recorder(), hdr.new_histogram()
    for v in values:
        rec.record(v)
        ref.record_value(min(max(v, hdr.LOWEST_US), hdr.HIGHEST_US))  # the clamp Recorder.record promises
    assert hdr.encode(rec) == hdr.encode(ref)
    built = rec.to_histogram()
    assert built.get_total_count() == ref.get_total_count() == len(values)
    for p in (50, 99, 100):
        assert built.get_value_at_percentile(p) == ref.get_value_at_percentile(p)


def test_recorder_index_math_matches_hdrhistogram_everywhere():
    ref = hdr.new_histogram()
    rng = random.Random(3)
    values = [1, 2047, 2048, 2049, 4095, 4096, hdr.HIGHEST_US] + [rng.randint(1, hdr.HIGHEST_US) for _ in range(2000)]
    for v in values:
        assert hdr.counts_index(v) == ref._counts_index_for(v)
    for v in range(1, hdr.DIRECT_US):  # the hot path's shortcut: below DIRECT_US the index is the value
        assert hdr.counts_index(v) == v


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 10**9), max_size=300))
def test_live_p99_equals_the_summary_p99(values):
    """status.json's p99 (one percentile, no mean) is the summary's p99."""
    h = hdr.new_histogram()
    for v in values:
        h.record_value(v)
    assert hdr.percentile_ms(h, 99) == hdr.percentiles_ms(h)["p99"]


def test_empty_recorder_is_an_empty_cell():
    assert hdr.encode(hdr.Recorder()) == ""


# --- canonical echo: the reply without JSON is the reply with JSON ---------------------------------
_body = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=40)
_num = st.one_of(st.integers(-10**20, 10**20), st.floats(allow_nan=False, allow_infinity=False))


@settings(max_examples=300, deadline=None)
@given(_num, _num, _body)
def test_canonical_echo_reply_equals_full_parse(msg_id, ts, body):
    for id_ in (msg_id, str(msg_id)):
        payload = json.dumps({"type": "echo", "id": id_, "ts": ts, "body": body}, separators=(",", ":"),
                             ensure_ascii=False).encode()
        fast = canonical_echo_reply(payload)
        cmd = protocol.parse_client_frame(payload)
        slow = protocol.echo_frame(cmd) if isinstance(cmd, protocol.Command) else None
        if fast is not None:
            assert fast == slow


def test_non_canonical_echo_frames_take_the_full_path():
    for raw in (b'{"type":"echo","id":01,"ts":1,"body":"x"}', b'{"type":"echo","id":-0,"ts":1,"body":"x"}',
                b'{"type":"echo","id":1,"ts":1.5,"body":"x"}', b'{"type":"echo","id":1,"ts":1,"body":"a\\"b"}',
                b'{"type":"echo", "id":1,"ts":1,"body":"x"}', b'{"type":"echo","id":1,"ts":1,"body":"x","to":"y"}',
                b'{"type":"echo","id":"1","ts":1,"body":"x"}', b'{"type":"echo","id":1,"ts":1,"body":"\x01"}'):
        assert canonical_echo_reply(raw) is None
    assert canonical_echo_reply(b'{"type":"echo","id":7,"ts":-3,"body":"ok ok"}') is not None


# --- closed loop -----------------------------------------------------------------------------------
def test_the_c_closed_loop_is_built_and_chosen():
    # `pip install -e .` compiles loadgen/agent/_echoloop.pyx against the pinned picows; the worker takes it
    assert worker.echoloop is not None, "loadgen/agent/_echoloop.pyx was not built (setup.py)"
    assert worker.echoloop.BUILT_WITH_PICOWS == picows.__version__


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1), st.integers(0, 3000))
def test_c_echo_frame_equals_the_python_one(seq, ts, size):
    body = frames.make_body(size)
    assert worker.echoloop.EchoStats(body).frame(seq, ts) == frames.echo_frame(seq, ts, body)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-5, 10**12), max_size=300))
def test_c_latency_counts_equal_the_recorders(values):
    stats, recorder, iv = worker.echoloop.EchoStats(b""), hdr.Recorder(), Interval()
    for v in values:
        stats.record_us(v)
        recorder.record(v)
    totals = types.SimpleNamespace(totals_received=0, totals_sent=0)
    stats.drain_into(iv, totals)
    assert iv.latency.counts == recorder.counts
    stats.drain_into(iv, totals)  # a drain starts over: nothing is counted twice
    assert iv.latency.counts == recorder.counts


@pytest.mark.parametrize("path", ["c", "python"])
def test_closed_loop_echo_records_every_round_trip(tmp_path, path):
    # closed loop sends thousands of frames/s per connection: above the gateway's default flood limit
    gateway = start_gateway(tmp_path, "limits:\n  max_frames_per_s: 1000000\n  flood_burst: 1000000\n")
    try:
        _closed_loop(gateway, tmp_path, {"LOADGEN_PURE_PYTHON": "1"} if path == "python" else {})
    finally:
        gateway.stop()


def _closed_loop(gateway, tmp_path, env):
    out = tmp_path / "cl"
    r = run_loadgen("run", "throughput", "--closed-loop", "--vus", "6", "--duration", "3s", "--workers", "2",
                    "-e", f"GATEWAY_PORT={gateway.port}", "-e", "MESSAGE_SIZE=200", "--out", str(out),
                    "--criterion", "gateway_cpu_percent=off", "--criterion", "gateway_rss_growth_bytes_per_min=off",
                    env_extra=env)
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((out / "summary.json").read_text())
    m = s["messages"]
    assert m["sent"] > 100 and m["received"] == m["sent"] and m["errors"] == 0 and m["lost"] == 0
    assert s["latency_ms"]["count"] == m["received"]  # every round trip in the histogram
    assert s["plan"]["mode"] == "echo" and s["plan"]["offered_msgs_per_s"] == 0
    rows = list(csv.DictReader(open(out / "timeseries.csv")))
    assert sum(int(r["bytes_received"]) for r in rows) == sum(int(r["bytes_sent"]) for r in rows) > m["sent"] * 200


def test_closed_loop_refuses_a_rate(tmp_path):
    r = run_loadgen("run", "throughput", "--closed-loop", "--rate", "5", "--vus", "2", "--duration", "1s",
                    "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "--closed-loop" in r.stderr and "Traceback" not in r.stderr


# --- multi-process gateway -------------------------------------------------------------------------
def _metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_gateway_processes_share_the_port_and_stop_together(tmp_path):
    port = free_port()
    mport = two_free_ports(avoid=port)
    log = open(tmp_path / "gw.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "loadgen", "gateway", "--port", str(port), "--metrics-port",
                             str(mport), "--processes", "2", "--node-id", "mp"],
                            env={**os.environ, "AUTH_TOKEN": TOKEN}, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, mport, mport + 1)

        async def go():
            socks = [await connect(f"ws://127.0.0.1:{port}/ws?user=u{i}",
                                   additional_headers={"Authorization": f"Bearer {TOKEN}"}) for i in range(16)]
            for i, ws in enumerate(socks):
                await ws.send(json.dumps({"type": "echo", "id": i, "ts": 1, "body": "b"}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 5))["id"] == i
            counts = [_active(_metrics(p)) for p in (mport, mport + 1)]
            for ws in socks:
                await ws.close()
            return counts

        counts = asyncio.run(go())
        assert sum(counts) == 16  # every session is on exactly one process, each with its own metrics
        assert 'node="mp/0"' in _metrics(mport) and 'node="mp/1"' in _metrics(mport + 1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_one_dead_gateway_process_stops_the_others(tmp_path):
    import psutil

    port = free_port()
    mport = two_free_ports(avoid=port)
    proc = subprocess.Popen([sys.executable, "-m", "loadgen", "gateway", "--port", str(port), "--metrics-port",
                             str(mport), "--processes", "2"], env={**os.environ, "AUTH_TOKEN": TOKEN},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_listening(port)
        children = psutil.Process(proc.pid).children()
        assert len(children) == 2
        children[0].kill()
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 1 and "gateway process" in err
        assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_gateway_processes_refuse_a_bad_count():
    r = run_loadgen("gateway", "--processes", "0")
    assert r.returncode == 2 and "--processes" in r.stderr


def _active(text):
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith("im_gateway_active_connections"))


def _wait_listening(*ports):
    import socket

    deadline = time.time() + 15
    for port in ports:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"port {port} not listening")
                time.sleep(0.05)


def test_preflight_warns_when_a_source_address_needs_over_half_the_port_range(tmp_path):
    from loadgen.host import ephemeral_port_count

    vus = ephemeral_port_count() // 2 + 100
    r = run_loadgen("run", "connection", "--vus", str(vus), "--duration", "1s", "--gateways", f"127.0.0.1:{free_port()}",
                    "--out", str(tmp_path / "w"))
    assert "over half of the" in r.stderr and r.returncode != 0  # then the unreachable gateway stops it
    r = run_loadgen("run", "connection", "--vus", str(vus), "--duration", "1s", "--gateways", f"127.0.0.1:{free_port()}",
                    "--local-ips", "127.0.0.2-127.0.0.3", "--out", str(tmp_path / "w2"))
    assert "over half of the" not in r.stderr
