"""The gateway's per-session frame handling without sockets: limits, dispatch and close states (SessionLogic)."""

import json
from dataclasses import replace
from types import SimpleNamespace

from picows import WSCloseCode, WSMsgType

from loadgen.gateway.config import GatewayConfig
from loadgen.gateway.groups import Groups
from loadgen.gateway.metrics import GatewayMetrics
from loadgen.gateway.registry import LocalRouter
from loadgen.gateway.session import CONTINUE, DISCONNECT, REPLY_CLOSE, SessionLogic


class FakeSession(SessionLogic):
    """The effects SessionLogic asks for, recorded instead of done."""

    __slots__ = ("gw", "user", "guard", "closing", "last_rx", "ping_at", "groups", "out", "aborts", "timers")

    def __init__(self, gw, user, now=0.0):
        self.init_state(gw, user, now)
        self.out, self.aborts, self.timers = [], [], []

    def push(self, frame):
        if self.closing is None:
            self.out.append(frame)
            return True
        return False

    def abort(self, reason, code, count=True):
        if self.begin_close(reason):
            self.aborts.append((reason, code))

    def later(self, delay_s, fn, *args):
        self.timers.append((delay_s, fn, args))

    def replaced(self):
        self.abort("replaced", 4000, count=False)


def frame(data=b"", kind=WSMsgType.TEXT, fin=True):
    return SimpleNamespace(msg_type=kind, fin=fin, payload_size=len(data), get_payload_as_bytes=lambda: data)


def gateway(**config):
    cfg = replace(GatewayConfig(), **config)
    groups = Groups(cfg.group_max_per_user, cfg.group_max_members)
    return SimpleNamespace(config=cfg, metrics=GatewayMetrics("n", groups), router=LocalRouter(groups))


def pair(**config):
    gw = gateway(**config)
    a, b = FakeSession(gw, "a"), FakeSession(gw, "b")
    gw.router.register(a)
    gw.router.register(b)
    return gw, a, b


def test_a_send_is_delivered_and_acked_an_echo_answered_a_ping_ponged():
    gw, a, b = pair()
    assert a.take_frame(frame(b'{"type":"send","to":"b","id":"m1","ts":5,"body":"hi"}'), 1.0) == CONTINUE
    assert b.out == [b'{"type":"msg","from":"a","id":"m1","ts":5,"body":"hi"}']
    assert a.out == [b'{"type":"ack","id":"m1"}']
    a.take_frame(frame(b'{"type":"echo","id":2,"ts":3,"body":"x"}'), 1.0)  # the canonical fast path
    a.take_frame(frame(b'{"type":"ping","ts":4}'), 1.0)
    assert a.out[1:] == [b'{"type":"echo","id":2,"ts":3,"body":"x"}', b'{"type":"pong","ts":4}']
    assert gw.metrics.messages_received == 3 and gw.metrics.messages_sent == 2


def test_limits_close_only_the_offender_with_the_right_code():
    gw, a, _ = pair(max_message_size=10)
    a.take_frame(frame(b"x" * 11), 1.0)
    assert a.aborts == [("oversized", WSCloseCode.MESSAGE_TOO_BIG)] and a.closing == "oversized"
    gw, a, _ = pair()
    a.take_frame(frame(b'{"type":"ping"', fin=False), 1.0)
    assert a.aborts == [("fragmented", WSCloseCode.UNSUPPORTED_DATA)]
    gw, a, _ = pair(max_frames_per_s=1.0, flood_burst=3.0)
    for _ in range(4):
        a.take_frame(frame(b'{"type":"ping","ts":1}'), 0.0)
    assert a.aborts == [("flood", WSCloseCode.POLICY_VIOLATION)] and len(a.out) == 3


def test_bad_frames_are_errors_until_the_abuse_limit_and_offline_recipients_never_count():
    gw, a, _ = pair(max_bad_frames_per_min=2)
    for i in range(5):  # a well-formed send to nobody: an error frame, never abuse
        a.take_frame(frame(b'{"type":"send","to":"nobody","id":%d,"ts":1,"body":""}' % i), 1.0)
    assert [f[:40] for f in a.out] == [b'{"type":"error","code":"unknown_recipien'] * 5 and not a.aborts
    a.take_frame(frame(b"\x00", kind=WSMsgType.BINARY), 1.0)
    a.take_frame(frame(b"{oops"), 1.0)
    assert not a.aborts
    a.take_frame(frame(b'{"type":"nope"}'), 1.0)  # the third bad frame within the minute
    assert a.aborts == [("abuse_bad_frames", WSCloseCode.POLICY_VIOLATION)]
    assert gw.metrics.errors["unknown_recipient"] == 5 and gw.metrics.errors["malformed"] == 1


def test_close_states_the_clients_close_our_close_and_the_half_open_check():
    gw, a, b = pair()
    assert a.take_frame(frame(kind=WSMsgType.CLOSE), 1.0) == REPLY_CLOSE
    assert gw.router.deliver("a", b"x") is False  # unregistered at once: senders hear 'unknown recipient'
    b.abort("replaced", 4000)
    assert b.take_frame(frame(b'{"type":"ping","ts":1}'), 1.0) == CONTINUE and b.out == []  # ignored while closing
    assert b.take_frame(frame(kind=WSMsgType.CLOSE), 1.0) == DISCONNECT  # the reply to our close
    assert b.begin_close("shutdown") is False and b.closing == "replaced"
    gw, c, _ = pair()
    assert c.idle_check(5.0, 10.0) is None
    assert c.idle_check(11.0, 10.0) == "ping"
    c.take_frame(frame(kind=WSMsgType.PONG), 12.0)  # any frame proves it alive
    assert c.idle_check(21.0, 10.0) is None and c.idle_check(23.0, 10.0) == "ping"
    assert c.idle_check(34.0, 10.0) == "drop" and c.closing == "read_timeout"


def test_a_delivery_delay_holds_sends_not_echoes():
    gw, a, b = pair(delivery_delay_s=0.002)
    a.take_frame(frame(b'{"type":"send","to":"b","id":1,"ts":1,"body":""}'), 1.0)
    a.take_frame(frame(b'{"type":"echo","id":2,"ts":1,"body":""}'), 1.0)
    assert b.out == [] and a.out == [b'{"type":"echo","id":2,"ts":1,"body":""}']
    (delay, fn, args), = a.timers
    fn(*args)
    assert delay == 0.002 and b.out and a.out[-1] == b'{"type":"ack","id":1}'


# --- groups --------------------------------------------------------------------------------------------------

def members(n, **config):
    gw = gateway(**config)
    sessions = [FakeSession(gw, f"u{i}") for i in range(n)]
    for s in sessions:
        gw.router.register(s)
    return gw, sessions


def test_a_group_message_reaches_every_other_member_once_and_the_ack_says_how_many():
    gw, (a, b, c, d) = members(4)
    for s in (a, b, c):
        s.take_frame(frame(b'{"type":"join","group":"g1"}'), 1.0)
    assert [s.out for s in (a, b, c)] == [[b'{"type":"joined","group":"g1","members":%d}' % n] for n in (1, 2, 3)]
    a.take_frame(frame(b'{"type":"gsend","group":"g1","id":42,"ts":1234,"body":"hi"}'), 1.0)
    gmsg = b'{"type":"gmsg","group":"g1","from":"u0","id":42,"ts":1234,"body":"hi"}'
    assert b.out[1:] == [gmsg] and c.out[1:] == [gmsg] and d.out == []  # d is no member
    assert a.out[1:] == [b'{"type":"ack","id":42,"n":2}']  # the sender is not among them
    assert gw.metrics.messages_sent == 2
    g = gw.router.groups
    assert (len(g), g.memberships, g.messages, g.deliveries) == (1, 3, 1, {"local": 2, "remote": 0})


def test_leave_close_and_replacement_drop_memberships_and_n_follows():
    gw, (a, b, c) = members(3)
    for s in (a, b, c):
        s.take_frame(frame(b'{"type":"join","group":"g"}'), 1.0)
    a.take_frame(frame(b'{"type":"join","group":"g"}'), 1.0)  # joined already: the same answer, no second membership
    assert a.out[-1] == b'{"type":"joined","group":"g","members":3}'
    b.take_frame(frame(b'{"type":"leave","group":"g"}'), 1.0)
    assert b.out[-1] == b'{"type":"left","group":"g"}'
    b.take_frame(frame(b'{"type":"leave","group":"g"}'), 1.0)
    assert b.out[-1].startswith(b'{"type":"error","code":"not_member"')
    c.abort("flood", 1008)  # closing: gone from its groups at once, before the socket is
    a.take_frame(frame(b'{"type":"gsend","group":"g","id":1,"ts":1,"body":""}'), 1.0)
    assert a.out[-1] == b'{"type":"ack","id":1,"n":0}'
    new_a = FakeSession(gw, "u0")
    gw.router.register(new_a)  # a's newer connection: a's memberships go with the replaced session
    assert a.closing == "replaced" and len(gw.router.groups) == 0 and gw.router.groups.memberships == 0
    new_a.join_at_login(["g", "h"])
    assert new_a.out == [] and new_a.groups == {"g", "h"}  # joined silently at login
    gw.router.unregister(new_a)  # the client went away
    assert new_a.groups == set() and len(gw.router.groups) == 0


def test_not_member_and_limits_are_errors_but_never_abuse():
    gw, (a, b) = members(2, max_bad_frames_per_min=2, group_max_per_user=2, group_max_members=1)
    a.take_frame(frame(b'{"type":"join","group":"g1"}'), 1.0)
    for i in range(5):
        b.take_frame(frame(b'{"type":"gsend","group":"g1","id":%d,"ts":1,"body":""}' % i), 1.0)
    b.take_frame(frame(b'{"type":"join","group":"g1","id":"j"}'), 1.0)
    assert [json.loads(f)["code"] for f in b.out] == ["not_member"] * 5 + ["group_full"]
    assert json.loads(b.out[-1]) == {"type": "error", "code": "group_full", "id": "j",
                                     "detail": "group g1 has 1 members (groups.max_members)"}
    a.take_frame(frame(b'{"type":"join","group":"g2"}'), 1.0)
    a.take_frame(frame(b'{"type":"join","group":"g3"}'), 1.0)
    assert json.loads(a.out[-1])["code"] == "too_many_groups" and a.groups == {"g1", "g2"}
    assert not a.aborts and not b.aborts
    errors = gw.metrics.errors
    assert (errors["not_member"], errors["group_full"], errors["too_many_groups"]) == (5, 1, 1)


def test_group_frames_with_bad_fields_are_bad_frames():
    gw, (a,) = members(1)
    for raw in (b'{"type":"join"}', b'{"type":"join","group":"bad id"}', b'{"type":"leave","group":7}',
                b'{"type":"gsend","group":"g","ts":1,"body":""}', b'{"type":"gsend","id":1,"ts":1,"body":""}',
                b'{"type":"gsend","group":"g","id":1,"body":""}', b'{"type":"gsend","group":"g","id":1,"ts":1}'):
        a.take_frame(frame(raw), 1.0)
    assert [json.loads(f)["code"] for f in a.out] == ["bad_field"] * 7
