"""The wire protocol on both sides, without sockets: gateway parsing and the agent's fast reader."""

import json

from hypothesis import given, settings, strategies as st

from loadgen.agent import frames
from loadgen.gateway import protocol
from loadgen.gateway.guard import AbuseGuard


def test_send_round_trip_keeps_sender_id_and_timestamp():
    raw = frames.send_frame(b"bob", 42, 123456789012345, frames.make_body(100))
    cmd = protocol.parse_client_frame(raw)
    assert cmd == protocol.Command("send", to="bob", id=42, ts=123456789012345, body=frames.make_body(100).decode())
    delivered = protocol.deliver_frame("alice", cmd)
    obj = json.loads(delivered)
    assert obj == {"type": "msg", "from": "alice", "id": 42, "ts": 123456789012345, "body": cmd.body}
    assert frames.classify(delivered) == (frames.MSG, 123456789012345)


def test_echo_ping_ack_error_frames_classified():
    cmd = protocol.parse_client_frame(frames.echo_frame(7, 99, b"hi"))
    assert frames.classify(protocol.echo_frame(cmd)) == (frames.ECHO, 99)
    assert frames.classify(protocol.ack_frame(cmd))[0] == frames.ACK
    ping = protocol.parse_client_frame(frames.ping_frame(5))
    assert ping.type == "ping" and frames.classify(protocol.pong_frame(ping))[0] == frames.PONG
    assert frames.classify(protocol.error_frame("malformed", "x"))[0] == frames.ERROR


def test_classify_falls_back_to_json_for_other_layouts():
    assert frames.classify(b'{"ts": 12, "type": "msg", "from": "a"}') == (frames.MSG, 12)
    assert frames.classify(b"garbage") == (frames.OTHER, None)


def test_body_has_exact_size():
    for n in (1, 16, 1024, 4097):
        assert len(frames.make_body(n)) == n


BAD = [
    (b"{not json", "malformed"),
    (b"[1,2]", "malformed"),
    (b'"str"', "malformed"),
    (b'{"type":"launch"}', "unknown_type"),
    (b'{"id":1,"ts":1,"body":""}', "bad_field"),  # no type: a missing field, not an unknown type
    (b'{"type":7,"id":1,"ts":1,"body":""}', "bad_field"),
    (b'{"type":"echo","id":1,"body":"x"}', "bad_field"),  # no ts
    (b'{"type":"echo","id":1,"ts":null,"body":"x"}', "bad_field"),
    (b'{"type":"echo","id":1,"ts":1}', "bad_field"),  # no body
    (b'{"type":"send","to":"bob","id":1,"ts":1}', "bad_field"),
    (b'{"type":"send","to":"bob","id":1,"body":""}', "bad_field"),
    (b'{"type":"ping"}', "bad_field"),
    (b'{"type":"echo","id":1,"ts":1e400,"body":""}', "bad_field"),  # parses to inf: not writable as JSON
    (b'{"type":"echo","id":1,"ts":-1e400,"body":""}', "bad_field"),
    (b'{"type":"echo","id":1,"ts":NaN,"body":""}', "malformed"),  # not JSON at all
    (b'{"type":"echo","id":1,"ts":Infinity,"body":""}', "malformed"),
    (b'{"type":"echo","id":1,"ts":-Infinity,"body":""}', "malformed"),
    (b'{"type":"ping","ts":1,"x":NaN}', "malformed"),
    (b'{"type":"echo","id":1,"ts":1,"body":"a\\ud800b"}', "bad_field"),  # a lone surrogate: not Unicode
    (b'{"type":"echo","id":1,"ts":1,"body":"\\udfff"}', "bad_field"),
    (b'{"type":"echo","id":"\\ud83d","ts":1,"body":""}', "bad_field"),
    (b'{"type":"send","to":"bob","id":1,"ts":1,"body":"\\uDC00"}', "bad_field"),
    (b'{"type":"send","id":1,"to":"bad id!"}', "bad_field"),
    (b'{"type":"send","to":"bob"}', "bad_field"),
    (b'{"type":"send","id":1.5,"to":"bob"}', "bad_field"),
    (b'{"type":"send","id":1,"to":"bob","ts":"now"}', "bad_field"),
    (b'{"type":"send","id":1,"to":"bob","body":{"x":1}}', "bad_field"),
    (b'{"type":"echo","id":true}', "bad_field"),
    (b"\xff\xfe", "malformed"),
    (b"[" * 100000, "malformed"),
]


def test_bad_frames_become_counted_errors():
    for raw, kind in BAD:
        result = protocol.parse_client_frame(raw)
        assert isinstance(result, protocol.ProtocolError), raw[:40]
        assert result.kind == kind, raw[:40]
        json.loads(protocol.error_frame(result.kind, result.detail, result.id))  # the answer is JSON, always


def test_a_surrogate_pair_is_unicode_and_written_back_as_utf8():
    cmd = protocol.parse_client_frame(b'{"type":"echo","id":1,"ts":1,"body":"\\ud83d\\ude00"}')
    assert cmd.body == "\U0001F600"
    assert protocol.echo_frame(cmd) == '{"type":"echo","id":1,"ts":1,"body":"\U0001F600"}'.encode()


def test_what_is_accepted_is_written_back_as_strict_json():
    strict = json.JSONDecoder(parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    for raw in (b'{"type":"echo","id":1,"ts":1e300,"body":""}', b'{"type":"echo","id":1,"ts":-0.0,"body":""}',
                b'{"type":"ping","ts":123456789012345678901234567890}'):
        cmd = protocol.parse_client_frame(raw)
        out = protocol.echo_frame(cmd) if cmd.type == "echo" else protocol.pong_frame(cmd)
        assert strict.decode(out.decode())["ts"] == json.loads(raw)["ts"]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.floats()
                              | st.text(st.characters(exclude_categories=()), max_size=20),  # lone surrogates too
                              lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(
                                  ["type", "to", "id", "ts", "body", "group", "x"]), c, max_size=5), max_leaves=10)
                 .map(lambda o: json.dumps(o).encode()),
                 # frames of every known type with fields of any shape: the group frames get reached too
                 st.fixed_dictionaries({"type": st.sampled_from(protocol.COMMANDS)}, optional={
                     k: st.none() | st.integers() | st.floats() | st.sampled_from(["g1", "bob", "bad id", "\ud800"])
                     for k in ("to", "id", "ts", "body", "group")}).map(lambda o: json.dumps(o).encode())))
def test_parser_never_raises_on_hostile_input(raw):
    result = protocol.parse_client_frame(raw)
    assert isinstance(result, (protocol.Command, protocol.ProtocolError))
    if isinstance(result, protocol.Command):  # anything accepted can be answered, in JSON
        out = {"send": protocol.deliver_frame, "gsend": protocol.group_deliver_frame}.get(
            result.type, lambda u, r: protocol.pong_frame(r))("u", result)
        json.loads(out, parse_constant=lambda c: 1 / 0)
    else:
        json.loads(protocol.error_frame(result.kind, result.detail, result.id))


def test_guard_allows_burst_then_refuses_flood_and_bad_frames():
    g = AbuseGuard(rate=10, burst=20, bad_limit=3)
    assert all(g.allow_frame(0.0) for _ in range(20))
    assert not g.allow_frame(0.0)
    assert g.allow_frame(0.2)  # refilled 2 tokens
    assert [g.bad_frame(1.0) for _ in range(4)] == [True, True, True, False]
    assert g.bad_frame(100.0)  # a new minute
