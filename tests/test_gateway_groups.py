"""Groups in the reference gateway over real sockets (single node): login joins, fan-out, limits, metrics."""

import asyncio
import json
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from conftest import TOKEN, start_gateway
from loadgen.gateway.groups import Groups

AUTH = {"Authorization": f"Bearer {TOKEN}"}
MEMBERS = 60


def metric(text, name):
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


async def recv(ws, timeout=10):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def drained(ws):
    """Nothing else arrived: a ping's pong is the next frame."""
    await ws.send('{"type":"ping","ts":-1}')
    return await recv(ws) == {"type": "pong", "ts": -1}


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    g = start_gateway(tmp_path_factory.mktemp("groups"), "groups:\n  max_per_user: 3\n  max_members: 100\n")
    yield g
    g.stop()


def test_every_other_member_gets_each_group_message_once(gw):
    async def go():
        url = f"ws://127.0.0.1:{gw.port}/ws?user=m%d&groups=big,g{{}}"
        socks = [await connect(url.replace("%d", str(i)).format(i % 2), additional_headers=AUTH)
                 for i in range(MEMBERS)]
        try:
            acks = []
            for sender in (0, 1):  # two senders, one per small group too
                await socks[sender].send(json.dumps({"type": "gsend", "group": "big", "id": sender, "ts": 10 + sender,
                                                     "body": f"from m{sender}"}))
                await socks[sender].send(json.dumps({"type": "gsend", "group": f"g{sender}", "id": 100 + sender,
                                                     "ts": 1, "body": "small"}))
            got = {i: [] for i in range(MEMBERS)}
            for i, ws in enumerate(socks):
                # a sender: the other sender's big message and its own 2 acks; anyone else: both big messages
                # and its small group's message
                for _ in range(3):
                    frame = await recv(ws)
                    (acks if frame["type"] == "ack" else got[i]).append(frame)
            text = await asyncio.to_thread(gw.metrics)
            return acks, got, [await drained(ws) for ws in socks], text
        finally:
            for ws in socks:
                await ws.close()

    acks, got, quiet, text = asyncio.run(go())
    half = MEMBERS // 2
    assert sorted((a["id"], a["n"]) for a in acks) == [(0, MEMBERS - 1), (1, MEMBERS - 1), (100, half - 1),
                                                       (101, half - 1)]
    for i, frames in got.items():
        big = [f for f in frames if f["group"] == "big"]
        assert sorted(f["from"] for f in big) == sorted({"m0", "m1"} - {f"m{i}"}), i  # never its own
        small = [f for f in frames if f["group"] != "big"]
        assert [(f["group"], f["from"]) for f in small] == ([] if i < 2 else [(f"g{i % 2}", f"m{i % 2}")]), i
    assert got[2][0] == {"type": "gmsg", "group": "big", "from": "m0", "id": 0, "ts": 10, "body": "from m0"}
    assert all(quiet)
    assert metric(text, "im_gateway_groups") == 3 and metric(text, "im_gateway_group_members") == 2 * MEMBERS
    assert metric(text, "im_gateway_group_messages_total") == 4
    owed = sum(a["n"] for a in acks)
    assert f'im_gateway_group_deliveries_total{{node="test-gw",route="local"}} {owed}\n' in text
    assert metric(text, "im_gateway_messages_sent_total") >= owed


def test_closing_leaves_and_the_gauges_come_back_to_zero(gw):
    async def go():
        async with connect(f"ws://127.0.0.1:{gw.port}/ws?user=x&groups=a,b", additional_headers=AUTH) as x, \
                connect(f"ws://127.0.0.1:{gw.port}/ws?user=y", additional_headers=AUTH) as y:
            await y.send('{"type":"join","group":"a"}')
            assert await recv(y) == {"type": "joined", "group": "a", "members": 2}
            await y.send('{"type":"join","group":"b"}')
            assert await recv(y) == {"type": "joined", "group": "b", "members": 2}
            await x.close()
            await y.send('{"type":"gsend","group":"a","id":1,"ts":1,"body":""}')
            return await recv(y), await asyncio.to_thread(gw.metrics)

    ack, during = asyncio.run(go())
    assert ack == {"type": "ack", "id": 1, "n": 0}
    assert metric(during, "im_gateway_group_members") == 2
    after = gw.metrics()
    for _ in range(100):  # y's close is processed after its socket has gone from our side
        if metric(after, "im_gateway_active_connections") == 0:
            break
        time.sleep(0.05)
        after = gw.metrics()
    assert metric(after, "im_gateway_groups") == 0 and metric(after, "im_gateway_group_members") == 0


def test_limits_refuse_with_their_own_codes_and_keep_the_session(gw):
    async def go():
        async with connect(f"ws://127.0.0.1:{gw.port}/ws?user=lim&groups=l1,l2,l3", additional_headers=AUTH) as ws:
            await ws.send('{"type":"join","group":"l4","id":"j4"}')
            return await recv(ws)

    assert asyncio.run(go())["code"] == "too_many_groups"

    async def login(query):
        with pytest.raises(InvalidStatus) as err:
            async with connect(f"ws://127.0.0.1:{gw.port}/ws?user=bad&{query}", additional_headers=AUTH):
                pass
        return err.value.response.status_code

    assert asyncio.run(login("groups=a,b,c,d")) == 400  # more than max_per_user
    assert asyncio.run(login("groups=a,b%20c")) == 400
    assert asyncio.run(login("groups=a,,b")) == 400


def test_a_full_group_refuses_a_login_join_with_an_error_frame(tmp_path):
    g = start_gateway(tmp_path, "groups:\n  max_members: 2\n")
    try:
        async def go():
            base = f"ws://127.0.0.1:{g.port}/ws?groups=full&user="
            async with connect(base + "a", additional_headers=AUTH), connect(base + "b", additional_headers=AUTH), \
                    connect(base + "c", additional_headers=AUTH) as c:
                first = await recv(c)
                await c.send('{"type":"gsend","group":"full","id":1,"ts":1,"body":""}')
                return first, await recv(c)

        first, second = asyncio.run(go())
        assert (first["code"], first["id"]) == ("group_full", None) and second["code"] == "not_member"
    finally:
        g.stop()


@pytest.mark.parametrize("text", ["groups:\n  max_members: 0\n", "groups:\n  max_per_user: many\n",
                                  "groups:\n  max_per_user: -1\n", "groups:\n  fanout: 3\n"])
def test_invalid_group_limits_are_refused_at_start(tmp_path, text):
    from loadgen.errors import UsageError
    from loadgen.gateway.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(UsageError, match="groups"):
        load_config(str(cfg))
    cfg.write_text("groups:\n  max_per_user: 5\n  max_members: 7\n")
    assert (load_config(str(cfg)).group_max_per_user, load_config(str(cfg)).group_max_members) == (5, 7)


def test_a_group_record_from_another_node_fans_out_here_and_counts_members_gone():
    """The consuming side of cluster mode, without backends: every member here gets the frame once;
    members the sender's node counted here who are gone now are counted as errors; dead nodes' counts are ignored."""
    from types import SimpleNamespace

    from loadgen.gateway.cluster import bus as kafka_bus
    from loadgen.gateway.cluster.router import ClusterRouter, ClusterSettings
    from loadgen.gateway.metrics import GatewayMetrics

    class Member:
        def __init__(self, user, open_=True):
            self.user, self.groups, self.open, self.frames = user, None, open_, []

        def push(self, frame):
            if self.open:
                self.frames.append(frame)
            return self.open

    groups = Groups()
    metrics = GatewayMetrics("gw-b", groups)
    router = ClusterRouter("gw-b", ClusterSettings(["http://127.0.0.1:9"], "redis://127.0.0.1:9/0", "127.0.0.1:9"),
                           metrics, groups)
    here = [Member("x"), Member("y"), Member("closing", open_=False)]
    for m in here:
        groups.join(m, "team")
    frame = b'{"type":"gmsg","group":"team","from":"alice","id":1,"ts":1,"body":""}'
    router._on_record(kafka_bus.KIND_GROUP, "team", frame, {"f": b"alice", "c": b"3", "n": b"gw-a"})
    assert [m.frames for m in here] == [[frame], [frame], []]
    assert groups.deliveries == {"local": 0, "remote": 2} and router.group_records["received"] == 1
    assert metrics.errors == {"remote_group_member_gone": 1} and metrics.messages_sent == 2
    router.membership.nodes = {"gw-a": {}, "gw-b": {}}
    assert router._remote_counts({"gw-a": 3, "gw-b": 4, "gw-dead": 9, "gw-empty": 0}) == {"gw-a": 3}
