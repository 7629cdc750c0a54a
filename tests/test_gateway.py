"""The reference gateway over real sockets, driven by an independent client (python-websockets)."""

import asyncio
import json
import signal
import socket
import time
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import TOKEN, start_gateway, two_free_ports


def url(gw, user):
    return f"ws://127.0.0.1:{gw.port}/ws?user={user}"


def auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


async def recv_json(ws, timeout=5):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


def metric(gw, name_prefix):
    return sum(float(line.rsplit(" ", 1)[1]) for line in gw.metrics().splitlines()
               if line.startswith(name_prefix) and not line.startswith("#"))


@pytest.mark.parametrize("headers", [auth("wrong-token"), {}])
def test_wrong_or_missing_token_gets_401_and_no_session(gateway, headers):
    async def go():
        with pytest.raises(InvalidStatus) as err:
            async with connect(url(gateway, "mallory"), additional_headers=headers):
                pass
        return err.value.response.status_code

    assert asyncio.run(go()) == 401
    assert metric(gateway, "im_gateway_active_connections") == 0
    assert metric(gateway, 'im_gateway_connections_total{node="test-gw",result="rejected_auth"}') == 1


def test_send_delivers_with_ids_intact_and_acks(gateway):
    async def go():
        async with connect(url(gateway, "alice"), additional_headers=auth()) as a, \
                connect(url(gateway, "bob"), additional_headers=auth()) as b:
            await a.send(json.dumps({"type": "send", "to": "bob", "id": "m-1", "ts": 1234.5, "body": "hello"}))
            got = await recv_json(b)
            ack = await recv_json(a)
            await a.send(json.dumps({"type": "echo", "id": 9, "ts": 77, "body": "e"}))
            echo = await recv_json(a)
            await b.send(json.dumps({"type": "ping", "ts": 5}))
            pong = await recv_json(b)
            return got, ack, echo, pong

    got, ack, echo, pong = asyncio.run(go())
    assert got == {"type": "msg", "from": "alice", "id": "m-1", "ts": 1234.5, "body": "hello"}
    assert ack == {"type": "ack", "id": "m-1"}
    assert echo == {"type": "echo", "id": 9, "ts": 77, "body": "e"}
    assert pong == {"type": "pong", "ts": 5}
    assert metric(gateway, "im_gateway_messages_sent_total") == 2
    assert metric(gateway, "im_gateway_message_latency_count") == 2


def test_delivery_delay_holds_every_send(tmp_path):
    """testing.delivery_delay (the known slowdown tests/test_compare.py's slowed run used): a send is held, an
    echo sent after it is not, and the gateway's own latency histogram includes the hold."""
    gw = start_gateway(tmp_path, "testing:\n  delivery_delay: 200ms\n")

    async def go():
        async with connect(url(gw, "alice"), additional_headers=auth()) as a, \
                connect(url(gw, "bob"), additional_headers=auth()) as b:
            await a.send(json.dumps({"type": "send", "to": "bob", "id": "m-1", "ts": 1, "body": "late"}))
            await a.send(json.dumps({"type": "echo", "id": 2, "ts": 2, "body": "now"}))
            first, second = await recv_json(a), await recv_json(a)
            return first, second, await recv_json(b)

    try:
        first, second, got = asyncio.run(go())
        assert first["type"] == "echo" and second == {"type": "ack", "id": "m-1"} and got["body"] == "late"
        assert metric(gw, "im_gateway_message_latency_sum") >= 0.2
    finally:
        gw.stop()


def test_bad_frames_get_error_frames_and_connection_survives(gateway):
    async def go():
        async with connect(url(gateway, "carol"), additional_headers=auth()) as c:
            replies = []
            for raw in ("{oops", '{"type":"send","id":1,"to":"nobody","ts":1,"body":""}', b"\x00\x01binary", '{"type":"nope"}'):
                await c.send(raw)
                replies.append(await recv_json(c))
            await c.send(json.dumps({"type": "echo", "id": 1, "ts": 1, "body": "still here"}))
            replies.append(await recv_json(c))
            return replies

    replies = asyncio.run(go())
    assert [r.get("code") for r in replies[:4]] == ["malformed", "unknown_recipient", "binary_frame", "unknown_type"]
    assert replies[4]["body"] == "still here"
    text = gateway.metrics()
    for kind in ("malformed", "unknown_recipient", "binary_frame", "unknown_type"):
        assert f'kind="{kind}"}} 1' in text


def test_abusers_are_closed_and_everyone_else_keeps_being_served(tmp_path):
    gw = start_gateway(tmp_path, "server:\n  max_message_size: 2048\nlimits:\n  max_frames_per_s: 50\n"
                                 "  flood_burst: 60\n  max_bad_frames_per_min: 5\n")
    try:
        async def go():
            async with connect(url(gw, "good"), additional_headers=auth()) as good:
                codes = {}
                async with connect(url(gw, "big"), additional_headers=auth(), max_size=None) as big:
                    await big.send("x" * 5000)
                    with pytest.raises(ConnectionClosed) as e:
                        await asyncio.wait_for(big.recv(), 5)
                    codes["oversized"] = e.value.rcvd.code
                async with connect(url(gw, "flooder"), additional_headers=auth()) as fl:
                    with pytest.raises(ConnectionClosed) as e:
                        for i in range(1000):
                            await fl.send(json.dumps({"type": "ping", "ts": i}))
                        while True:
                            await asyncio.wait_for(fl.recv(), 5)
                    codes["flood"] = e.value.rcvd.code
                async with connect(url(gw, "junk"), additional_headers=auth()) as junk:
                    with pytest.raises(ConnectionClosed) as e:
                        for _ in range(20):
                            await junk.send("not json")
                            await asyncio.wait_for(junk.recv(), 5)
                    codes["abuse"] = e.value.rcvd.code
                await good.send(json.dumps({"type": "echo", "id": 1, "ts": 1, "body": "ok"}))
                return codes, await recv_json(good)

        codes, reply = asyncio.run(go())
        assert codes == {"oversized": 1009, "flood": 1008, "abuse": 1008}
        assert reply["body"] == "ok"
        text = gw.metrics()
        for kind in ("oversized", "flood", "abuse_bad_frames"):
            assert f'kind="{kind}"}} 1' in text
        assert gw.proc.poll() is None
    finally:
        gw.stop()


def test_sends_to_an_offline_user_are_errors_but_never_abuse(tmp_path):
    """unknown_recipient is an answer to a well-formed send (the user went offline), not a bad frame."""
    gw = start_gateway(tmp_path, "limits:\n  max_bad_frames_per_min: 5\n")
    try:
        async def go():
            async with connect(url(gw, "dave"), additional_headers=auth()) as d:
                codes = []
                for i in range(20):
                    await d.send(json.dumps({"type": "send", "to": "offline", "id": i, "ts": i, "body": "x"}))
                    codes.append((await recv_json(d))["code"])
                await d.send("{oops")  # the bad frames still count: 1 of 5
                codes.append((await recv_json(d))["code"])
                await d.send(json.dumps({"type": "echo", "id": 1, "ts": 1, "body": "still here"}))
                return codes, await recv_json(d)

        codes, reply = asyncio.run(go())
        assert codes == ["unknown_recipient"] * 20 + ["malformed"] and reply["body"] == "still here"
        assert metric(gw, 'im_gateway_errors_total{node="test-gw",kind="unknown_recipient"}') == 20
        assert metric(gw, 'im_gateway_errors_total{node="test-gw",kind="abuse_bad_frames"}') == 0
    finally:
        gw.stop()


def test_max_connections_enforced_with_503(tmp_path):
    gw = start_gateway(tmp_path, "server:\n  max_connections: 2\n")
    try:
        async def go():
            async with connect(url(gw, "u1"), additional_headers=auth()), \
                    connect(url(gw, "u2"), additional_headers=auth()):
                with pytest.raises(InvalidStatus) as err:
                    async with connect(url(gw, "u3"), additional_headers=auth()):
                        pass
                return err.value.response.status_code

        assert asyncio.run(go()) == 503
    finally:
        gw.stop()


def test_slow_handshake_is_dropped_without_hurting_others(tmp_path):
    gw = start_gateway(tmp_path, "websocket:\n  handshake_timeout: 1s\n")
    try:
        slow = socket.create_connection(("127.0.0.1", gw.port))
        slow.sendall(b"GET /ws?user=slow HTTP/1.1\r\nHost: x\r\n")  # never finishes the request
        started = time.time()

        async def go():
            async with connect(url(gw, "fine"), additional_headers=auth()) as ws:
                await ws.send(json.dumps({"type": "echo", "id": 1, "ts": 1, "body": "b"}))
                return await recv_json(ws)

        assert asyncio.run(go())["body"] == "b"
        slow.settimeout(5)
        closed = False
        try:
            while slow.recv(100):  # a 4xx answer may come first; then the server must hang up
                pass
            closed = True
        except ConnectionResetError:
            closed = True
        except socket.timeout:
            pass
        assert closed and time.time() - started < 4.5  # 1 s handshake_timeout, not forever
        slow.close()
    finally:
        gw.stop()


def test_newer_connection_of_same_user_replaces_older(gateway):
    async def go():
        async with connect(url(gateway, "dup"), additional_headers=auth()) as first:
            async with connect(url(gateway, "dup"), additional_headers=auth()) as second:
                with pytest.raises(ConnectionClosed) as e:
                    await asyncio.wait_for(first.recv(), 5)
                await second.send(json.dumps({"type": "echo", "id": 1, "ts": 1, "body": ""}))
                return e.value.rcvd.code, await recv_json(second)

    code, reply = asyncio.run(go())
    assert code == 4000 and reply["type"] == "echo"
    wait_for_metric(gateway, "im_gateway_active_connections", 0)  # both sessions gone: every count is final
    text = gateway.metrics()
    assert 'im_gateway_disconnections_total{node="test-gw",reason="replaced"} 1' in text  # once, not twice
    assert 'im_gateway_disconnections_total{node="test-gw",reason="client"} 1' in text


def wait_for_metric(gw, name, value, timeout=10.0):
    deadline = time.time() + timeout
    while metric(gw, name) != value and time.time() < deadline:
        time.sleep(0.05)
    assert metric(gw, name) == value


def test_the_auth_scheme_is_case_insensitive_and_nothing_else_passes(gateway):
    async def status(header):
        try:
            async with connect(url(gateway, "alice"), additional_headers={"Authorization": header}) as ws:
                await ws.send(json.dumps({"type": "ping", "ts": 1}))
                assert await recv_json(ws) == {"type": "pong", "ts": 1}
                return 101
        except InvalidStatus as err:
            return err.response.status_code

    async def go():
        good = [await status(f"{scheme} {TOKEN}") for scheme in ("Bearer", "bearer", "BEARER", "bEaReR")]
        bad = [await status(h) for h in (f"Basic {TOKEN}", TOKEN, f"Bearer{TOKEN}", "Bearer", f"Bearer {TOKEN}x")]
        return good, bad

    assert asyncio.run(go()) == ([101] * 4, [401] * 5)


def test_no_error_series_before_an_error(gateway):
    text = gateway.metrics()
    assert "# TYPE im_gateway_errors_total counter" in text and "im_gateway_errors_total{" not in text


def test_non_json_numbers_and_lone_surrogates_never_reach_another_user(gateway):
    """NaN / Infinity / 1e400 / a lone surrogate in a send: refused to the sender, nothing written to the peer."""
    hostile = ['{"type":"send","to":"bob","id":1,"ts":NaN,"body":"x"}',
               '{"type":"send","to":"bob","id":2,"ts":Infinity,"body":"x"}',
               '{"type":"send","to":"bob","id":3,"ts":-Infinity,"body":"x"}',
               '{"type":"send","to":"bob","id":4,"ts":1e400,"body":"x"}',
               '{"type":"send","to":"bob","id":5,"ts":1,"body":"\\ud800"}',
               '{"type":"echo","id":6,"ts":1e400,"body":"x"}']

    async def go():
        async with connect(url(gateway, "alice"), additional_headers=auth()) as a, \
                connect(url(gateway, "bob"), additional_headers=auth()) as b:
            codes = []
            for raw in hostile:
                await a.send(raw)
                reply = json.loads(await asyncio.wait_for(a.recv(), 5), parse_constant=lambda c: 1 / 0)
                codes.append(reply["code"])
            await a.send(json.dumps({"type": "send", "to": "bob", "id": 7, "ts": 7, "body": "fine"}))
            return codes, await asyncio.wait_for(b.recv(), 5), await recv_json(a)

    codes, first_to_bob, ack = asyncio.run(go())
    assert codes == ["malformed"] * 3 + ["bad_field"] * 3
    assert first_to_bob == '{"type":"msg","from":"alice","id":7,"ts":7,"body":"fine"}' and ack["id"] == 7


def test_metrics_expose_the_spec_names(gateway):
    text = gateway.metrics()
    for name in ("im_gateway_active_connections", "im_gateway_message_latency_bucket", "im_gateway_messages_sent_total",
                 "im_gateway_errors_total", "im_gateway_connections_total", "process_resident_memory_bytes"):
        assert name in text


def test_half_open_client_is_dropped_after_read_timeout(tmp_path):
    """A peer that completes the handshake and then goes silent (no pongs) is cut; the server stays up."""
    import base64
    import os

    gw = start_gateway(tmp_path, "websocket:\n  read_timeout: 2s\n")
    try:
        s = socket.create_connection(("127.0.0.1", gw.port))
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET /ws?user=ghost HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").encode())
        s.settimeout(10)
        assert s.recv(4096).startswith(b"HTTP/1.1 101")
        started, received = time.time(), b""
        try:
            while chunk := s.recv(4096):  # pings arrive; we never answer them
                received += chunk
        except ConnectionResetError:
            pass
        elapsed = time.time() - started
        assert b"\x89" in received  # the gateway did ping before giving up
        assert 1.0 <= elapsed <= 6.0
        assert metric(gw, "im_gateway_active_connections") == 0 and gw.proc.poll() is None
        s.close()
    finally:
        gw.stop()


# --- graceful stop: SIGTERM/SIGINT closes every session with 1001 (GOING_AWAY) ------------------------------

def raw_session(gw, user):
    """A client that completes the handshake and then never answers anything (not even a close frame)."""
    import base64
    import os

    s = socket.create_connection(("127.0.0.1", gw.port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws?user={user} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").encode())
    s.settimeout(10)
    assert s.recv(4096).startswith(b"HTTP/1.1 101")
    return s


def read_until_dropped(s) -> bytes:
    received = b""
    try:
        while chunk := s.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


GOING_AWAY_FRAME = b"\x88\x17\x03\xe9gateway shutting down"  # close frame: 1001 + reason, unmasked


async def closed_with(ws):
    """The close code and reason the gateway sent, once the close handshake is over."""
    with pytest.raises(ConnectionClosed) as e:
        while True:
            await asyncio.wait_for(ws.recv(), 15)
    return e.value.rcvd.code, e.value.rcvd.reason


def test_sigterm_closes_every_session_with_going_away_and_exits_0(tmp_path):
    # a long grace: the gateway must exit as soon as every client has answered, not wait it out
    gw = start_gateway(tmp_path, "server:\n  shutdown_grace: 60s\n")
    try:
        async def go():
            clients = [await connect(url(gw, f"u{i}"), additional_headers=auth()) for i in range(5)]
            for ws in clients:
                await ws.send(json.dumps({"type": "echo", "id": 1, "ts": 1, "body": "up"}))
                assert (await recv_json(ws))["body"] == "up"
            gw.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*(closed_with(ws) for ws in clients))

        assert asyncio.run(go()) == [(1001, "gateway shutting down")] * 5
        assert gw.proc.wait(20) == 0  # well before the 60 s grace
    finally:
        gw.stop(signal.SIGKILL)


def test_client_that_never_answers_the_close_is_dropped_after_the_grace(tmp_path):
    gw = start_gateway(tmp_path, "server:\n  shutdown_grace: 8s\n")
    try:
        silent = raw_session(gw, "silent")

        async def go():
            async with connect(url(gw, "polite"), additional_headers=auth()) as ws:
                await ws.send(json.dumps({"type": "echo", "id": 1, "ts": 1, "body": "up"}))
                await recv_json(ws)
                gw.proc.send_signal(signal.SIGTERM)
                return await closed_with(ws)

        assert asyncio.run(go()) == (1001, "gateway shutting down")
        # the grace is running: the silent session is still held, the polite one counted, no new connections
        text = gw.metrics()
        assert 'im_gateway_disconnections_total{node="test-gw",reason="shutdown"} 1' in text
        assert metric(gw, "im_gateway_active_connections") == 1
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", gw.port), timeout=5).close()
        silent.settimeout(30)
        assert read_until_dropped(silent).startswith(GOING_AWAY_FRAME)  # told why, then cut at the grace's end
        silent.close()
        assert gw.proc.wait(20) == 0
    finally:
        gw.stop(signal.SIGKILL)


def test_second_sigterm_ends_the_grace_at_once(tmp_path):
    gw = start_gateway(tmp_path, "server:\n  shutdown_grace: 5m\n")
    try:
        silent = raw_session(gw, "silent")
        gw.proc.send_signal(signal.SIGTERM)
        silent.settimeout(15)
        assert silent.recv(4096).startswith(GOING_AWAY_FRAME)  # the stop is under way
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(20) == 0  # not the 5 minutes
        silent.settimeout(5)
        read_until_dropped(silent)
        silent.close()
    finally:
        gw.stop(signal.SIGKILL)


def test_processes_2_every_child_closes_its_sessions(tmp_path):
    mport = two_free_ports()  # process i serves metrics on mport + i (the later --metrics-port wins)
    gw = start_gateway(tmp_path, "server:\n  shutdown_grace: 60s\n",
                       extra_args=["--processes", "2", "--metrics-port", str(mport)])
    try:
        def active(i):
            with urllib.request.urlopen(f"http://127.0.0.1:{mport + i}/metrics", timeout=5) as r:
                return metric_text(r.read().decode(), "im_gateway_active_connections")

        async def go():
            clients = []
            # SO_REUSEPORT spreads connections by hash: connect until both processes hold sessions
            while len(clients) < 64:
                ws = await connect(url(gw, f"u{len(clients)}"), additional_headers=auth())
                await ws.send(json.dumps({"type": "echo", "id": 1, "ts": 1, "body": "up"}))
                await recv_json(ws)
                clients.append(ws)
                if len(clients) >= 4 and all([await asyncio.to_thread(poll_metric, active, i) for i in (0, 1)]):
                    break
            counts = [await asyncio.to_thread(poll_metric, active, i) for i in (0, 1)]
            gw.proc.send_signal(signal.SIGTERM)
            return counts, await asyncio.gather(*(closed_with(ws) for ws in clients))

        counts, closes = asyncio.run(go())
        assert all(counts) and sum(counts) == len(closes)
        assert set(closes) == {(1001, "gateway shutting down")}
        assert gw.proc.wait(20) == 0
    finally:
        if gw.proc.poll() is None:  # never SIGKILL the parent alone: its children would live on
            gw.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
        gw.stop()  # a second SIGTERM: the children cut their grace


def metric_text(text, name_prefix):
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name_prefix) and not line.startswith("#"))


def poll_metric(read, i):
    """read(i), retried while process i's metrics port is not up yet."""
    for _ in range(100):
        try:
            return read(i)
        except OSError:
            time.sleep(0.1)
    return read(i)


@pytest.mark.parametrize("value", ["-1s", "soon", "0"])
def test_shutdown_grace_is_validated(tmp_path, value):
    from loadgen.errors import UsageError
    from loadgen.gateway.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"server:\n  shutdown_grace: {value}\n")
    with pytest.raises(UsageError, match="shutdown_grace"):
        load_config(str(cfg))
    cfg.write_text("server:\n  shutdown_grace: 500ms\n")
    assert load_config(str(cfg)).shutdown_grace_s == 0.5
    assert load_config(None).shutdown_grace_s == 2.0


def test_a_signal_while_leaving_the_cluster_abandons_the_leaving():
    from loadgen.gateway.server import _unless

    async def go():
        abandon = asyncio.Event()
        finished = await _unless(asyncio.sleep(0), abandon)
        asyncio.get_running_loop().call_soon(abandon.set)
        hung = await _unless(asyncio.Event().wait(), abandon)  # a backend that never answers
        return finished, hung

    assert asyncio.run(go()) == (True, False)


def test_a_delivery_to_a_closing_session_is_not_a_delivery():
    from loadgen.gateway.registry import LocalRouter

    class Session:
        def __init__(self, user, open_):
            self.user, self.open, self.frames = user, open_, []

        def push(self, frame):
            if self.open:
                self.frames.append(frame)
            return self.open

    router, alive, closing = LocalRouter(), Session("a", True), Session("b", False)
    router.register(alive)
    router.register(closing)
    assert router.deliver("a", b"x") is True and alive.frames == [b"x"]
    assert router.deliver("b", b"x") is False  # the sender gets an error, not an ack for a dropped frame
    assert router.deliver("nobody", b"x") is False
