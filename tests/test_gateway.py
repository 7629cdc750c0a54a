"""The reference gateway over real sockets, driven by an independent client (python-websockets)."""

import asyncio
import json
import socket
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import TOKEN, start_gateway


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


def test_bad_frames_get_error_frames_and_connection_survives(gateway):
    async def go():
        async with connect(url(gateway, "carol"), additional_headers=auth()) as c:
            replies = []
            for raw in ("{oops", '{"type":"send","id":1,"to":"nobody"}', b"\x00\x01binary", '{"type":"nope"}'):
                await c.send(raw)
                replies.append(await recv_json(c))
            await c.send(json.dumps({"type": "echo", "id": 1, "body": "still here"}))
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
                await good.send(json.dumps({"type": "echo", "id": 1, "body": "ok"}))
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
                await ws.send(json.dumps({"type": "echo", "id": 1, "body": "b"}))
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
                await second.send(json.dumps({"type": "echo", "id": 1}))
                return e.value.rcvd.code, await recv_json(second)

    code, reply = asyncio.run(go())
    assert code == 4000 and reply["type"] == "echo"


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
