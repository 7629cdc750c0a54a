"""Protocol profiles (loadgen/protocols, docs/protocols.md): the format's rules, the compiled templates and
inbound rules, the MQTT codec, and the agent's profile path end to end - the reference protocol through a
profile, and a user-written profile for a differently shaped JSON gateway this test starts itself."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import TOKEN, free_port, run_loadgen
from loadgen.agent import frames
from loadgen.errors import UsageError
from loadgen.plan.runplan import RunPlan, protocol_entry
from loadgen.protocols import profile as protocols
from loadgen.protocols.mqtt import Codec
from loadgen.protocols.template import Template
from loadgen.plan.stages import Stage

REFERENCE_YAML = os.path.join(os.path.dirname(protocols.__file__), "reference.yaml")


def summary(out):
    return json.loads((out / "summary.json").read_text())


def test_shipped_profiles_compile_and_only_the_reference_one_needs_a_token():
    digests = set()
    for name in protocols.SHIPPED:
        p = protocols.load(name)
        assert p.name == name and p.digest.startswith("sha256:")
        digests.add(p.digest)
        assert p.needs_token == (name == "reference")
    assert len(digests) == 3


def test_the_reference_profile_writes_and_reads_exactly_the_built_in_frames():
    p = protocols.load("reference")
    acts = p.bind(p.connection_values(b"alice", "tok"))
    body = frames.make_body(40)
    assert acts.send(b"bob", b"alice", 7, 123456789, body, b"") == frames.send_frame(b"bob", 7, 123456789, body)
    assert acts.echo(b"alice", b"alice", 8, 5, body, b"") == frames.echo_frame(8, 5, body)
    assert acts.heartbeat(b"", b"", 0, 99, b"", b"") == frames.ping_frame(99)
    assert p.path.render(p.connection_values(b"alice", "tok")) == b"/ws?user=alice"
    for frame in (b'{"type":"msg","from":"a","id":1,"ts":42,"body":"x"}', b'{"type":"echo","id":1,"ts":43,"body":"x"}',
                  b'{"type":"ack","id":1}', b'{"type":"pong","ts":1}', b'{"type":"error","code":"x"}', b'{"x":1}'):
        kind, ts = frames.classify(frame)
        assert p.classify(frame) == (frames.MSG if kind == frames.ECHO else kind, ts)  # a delivery either way


def test_templates_keep_json_and_xml_braces_and_percent_signs_literal():
    t = Template.compile('{"a":"{user}","p":"100%","n":{id},"x":{}}', "t")
    assert t.names == ("user", "id")
    bound = t.bind({"user": b"u%1"})
    assert bound.message_renderer()(b"", b"", 5, 0, b"", b"") == b'{"a":"u%1","p":"100%","n":5,"x":{}}'


def test_xmpp_login_values_and_rules_match_attributes_by_name():
    p = protocols.load("xmpp")
    values = p.connection_values(b"u1", "")
    assert values["sasl_plain"] == b"AHUxAGxvYWRnZW4="  # base64("\0u1\0loadgen")
    assert p.classify(b"<message type='chat' from='a@im.test/r'><body>777 hello</body></message>") == (0, 777)
    assert p.classify(b'<message from="a" type="error"><error/></message>')[0] == frames.ERROR
    assert p.classify(b"<iq type='result' id='ping5' to='u1@im.test/r'/>")[0] == frames.PONG
    assert p.classify(b"<presence/>")[0] == frames.OTHER


def test_mqtt_codec_round_trips_a_publish_and_the_profile_classifies_it():
    p = protocols.load("mqtt")
    acts = p.bind(p.connection_values(b"u1", ""))
    frame = acts.send(b"u2", b"u1", 70000, 123, b"body", b"")
    fields = Codec().decode(frame)
    assert fields == {"packet": "publish", "topic": b"inbox/u2", "qos": 1, "packet_id": 70000 % 65535 + 1,
                      "payload": b"123 body"}
    assert p.classify(frame) == (frames.MSG, 123)
    assert p.classify(b"\x40\x02\x00\x05")[0] == frames.ACK and p.classify(b"\xd0\x00")[0] == frames.PONG
    assert acts.close == b"\xe0\x00" and acts.heartbeat(b"", b"", 0, 1, b"", b"") == b"\xc0\x00"


BAD = [
    ({"actions": {}}, "actions.send is required"),
    ({"actions": {"send": "{nope}"}}, "unknown placeholder {nope}"),
    ({"inbound": [{"match": {"prefix": "x"}, "kind": "delivery"}]}, "needs ts"),
    ({"inbound": [{"match": {"prefix": "x"}, "kind": "delivered", "ts": {"after": "t"}}]}, "kind 'delivered'"),
    ({"inbound": [{"match": {"regex": "("}, "kind": "ack"}]}, "not a valid regular expression"),
    ({"codec": "no.such.module:Codec"}, "codec no.such.module:Codec"),
    ({"frames": "morse"}, "frames 'morse'"),
    ({"login": [{"expect": {"prefix": "x"}, "timeout": 0}]}, "timeout must be seconds"),
    ({"surprise": 1}, "unknown key(s) surprise"),
    ({"connect": {"path": "ws"}}, "connect.path must start with /"),
]


@pytest.mark.parametrize("change,words", BAD, ids=[w for _, w in BAD])
def test_a_bad_profile_is_one_usage_error_naming_the_problem(change, words):
    raw = protocols.read("reference")
    raw = {**raw, "name": "mine", **change}
    if "inbound" not in change:
        raw["inbound"] = raw["inbound"]
    with pytest.raises(UsageError) as e:
        protocols.compile_profile(raw)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_the_plan_carries_the_whole_profile_and_refuses_a_changed_one():
    entry = protocol_entry("xmpp")
    plan = RunPlan(scenario="throughput", stages=[Stage(0, 2), Stage(5, 2)], rate=1.0, mode="peer", message_size=10,
                   endpoints=[("127.0.0.1", 1)], criteria=[], protocol=entry)
    again = RunPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.protocol_profile.name == "xmpp" and not again.builtin_protocol
    assert again.protocol_profile.digest == protocols.load("xmpp").digest
    data = plan.to_dict()
    data["protocol"]["profile"]["vars"]["domain"] = "elsewhere"
    with pytest.raises(UsageError, match="digest"):
        RunPlan.from_dict(data)
    assert RunPlan.from_dict({**plan.to_dict(), "protocol": None}).builtin_protocol


def test_loadgen_run_protocol_that_is_neither_shipped_nor_a_file_exits_2(tmp_path):
    r = run_loadgen("run", "throughput", "--vus", "2", "--duration", "2s", "--protocol", "smoke-signals",
                    "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "loadgen: error: --protocol 'smoke-signals' is neither a shipped profile (reference, xmpp, mqtt) nor a file"]


def test_the_reference_protocol_through_the_profile_path(gateway, tmp_path):
    """A copy of the shipped reference profile under another name is no longer the built-in protocol: the
    agent runs it on the profile path, with the same accounting as the built-in path."""
    copy = tmp_path / "ref.yaml"
    copy.write_text(open(REFERENCE_YAML).read().replace("name: reference\n", "name: reference-copy\n"))
    out = tmp_path / "t"
    r = run_loadgen("run", "throughput", "--vus", "20", "--rate", "5", "--duration", "4s", "--workers", "2",
                    "-e", f"GATEWAY_PORT={gateway.port}", "-e", "MESSAGE_SIZE=64", "--out", str(out),
                    "--protocol", str(copy), "--heartbeat-interval", "1s",
                    "--criterion", "gateway_cpu_percent=off", "--criterion", "gateway_rss_growth_bytes_per_min=off",
                    "--criterion", "message_p99_ms<2000")
    assert r.returncode == 0, r.stdout + r.stderr
    s = summary(out)
    assert s["protocol"] == {"name": "reference-copy", "digest": protocols.digest_of(protocols.read(str(copy))),
                             "path": "profile"}
    m = s["messages"]
    assert m["sent"] > 300 and m["received"] == m["sent"] == m["acked"] and m["errors"] == 0
    assert s["latency_ms"]["count"] == m["received"]
    assert s["connections"]["established"] == 20 and s["connections"]["disconnects"] == 0
    assert "Protocol: reference-copy" in r.stdout
    # closed loop through the profile path: latency per round trip, said so in the summary
    out2 = tmp_path / "c"
    r = run_loadgen("run", "connection", "--vus", "4", "--duration", "2s", "--closed-loop", "--workers", "1",
                    "-e", f"GATEWAY_PORT={gateway.port}", "--out", str(out2), "--protocol", str(copy),
                    "--criterion", "gateway_memory_per_connection_bytes=off", "--criterion", "session_p95_s=off")
    s = summary(out2)
    assert s["messages"]["received"] > 100, r.stdout + r.stderr
    assert "Message Latency (per round trip):" in r.stdout and "from scheduled send time" not in r.stdout


def test_the_built_in_path_names_the_reference_protocol(gateway, tmp_path):
    out = tmp_path / "b"
    r = run_loadgen("run", "throughput", "--vus", "4", "--rate", "2", "--duration", "2s", "--workers", "1",
                    "-e", f"GATEWAY_PORT={gateway.port}", "--out", str(out), "--protocol", "reference",
                    "--criterion", "gateway_cpu_percent=off", "--criterion", "gateway_rss_growth_bytes_per_min=off",
                    # 8 msg/s over a 2 s hold: one message landing in the next second's row reads 7 < 7.92
                    "--criterion", "throughput_per_s=off")
    assert r.returncode == 0, r.stdout + r.stderr
    assert summary(out)["protocol"] == {"name": "reference", "digest": protocols.load("reference").digest,
                                        "path": "built-in"}
    assert "Protocol:" not in r.stdout and "Message Latency (from scheduled send time):" in r.stdout


# --- a user-written profile for another gateway ------------------------------------------------------------
# A gateway shaped unlike the reference one: no auth at the upgrade, login by a first frame answered with a
# session id, string message ids, the send time as a string field, receipts with a 'ref' field, 'fail' frames.
OTHER_GATEWAY = textwrap.dedent('''
    import asyncio, json, sys
    from websockets.asyncio.server import serve

    users = {}

    async def handler(ws):
        hello = json.loads(await ws.recv())
        if hello.get("op") != "hello" or hello.get("password") != "s3cret":
            await ws.send(json.dumps({"op": "denied"}))
            return
        me = hello["user"]
        users[me] = ws
        await ws.send(json.dumps({"op": "welcome", "session": "S-" + me}))
        try:
            async for text in ws:
                f = json.loads(text)
                if f["op"] == "post":
                    assert f["session"] == "S-" + me
                    peer = users.get(f["dest"])
                    if peer is None:
                        await ws.send(json.dumps({"op": "fail", "ref": f["mid"], "why": "offline"}))
                        continue
                    await peer.send(json.dumps({"op": "incoming", "sender": me, "mid": f["mid"],
                                                "meta": {"sent_at": f["sent_at"]}, "text": f["text"]}))
                    await ws.send(json.dumps({"op": "receipt", "ref": f["mid"]}))
                elif f["op"] == "ping":
                    await ws.send(json.dumps({"op": "pong"}))
                elif f["op"] == "bye":
                    await ws.close(1000)
        finally:
            if users.get(me) is ws:
                del users[me]

    async def main():
        async with serve(handler, "127.0.0.1", int(sys.argv[1])):
            print("ready", flush=True)
            await asyncio.Future()

    asyncio.run(main())
''')

OTHER_PROFILE = textwrap.dedent('''
    name: chatty
    description: a JSON gateway with a login frame, string ids and receipts
    vars:
      password: s3cret
    connect:
      path: /chat
    login:
      - send: '{"op":"hello","user":"{user}","password":"{password}"}'
      - expect: {field: {op: welcome}}
        capture:
          session: {field: session}
        timeout: 10
    actions:
      send: '{"op":"post","session":"{session}","dest":"{to}","mid":"m-{id}","sent_at":"{ts}","text":"{body}"}'
      heartbeat: '{"op":"ping"}'
      close: '{"op":"bye"}'
    inbound:
      - match: {field: {op: incoming}}
        kind: delivery
        ts: {field: meta.sent_at}
      - match: {contains: '"op": "receipt"'}
        kind: ack
      - match: {field: {op: pong}}
        kind: pong
      - match: {field: {op: fail}}
        kind: error
    unmatched: error
''')


def test_a_user_written_profile_drives_a_differently_shaped_gateway(tmp_path):
    (tmp_path / "other_gateway.py").write_text(OTHER_GATEWAY)
    (tmp_path / "chatty.yaml").write_text(OTHER_PROFILE)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(tmp_path / "other_gateway.py"), str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        out = tmp_path / "o"
        r = run_loadgen("run", "throughput", "--vus", "20", "--rate", "5", "--duration", "3s", "--workers", "1",
                        "-e", f"GATEWAY_PORT={port}", "-e", "MESSAGE_SIZE=32", "--heartbeat-interval", "1s",
                        "--protocol", str(tmp_path / "chatty.yaml"), "--out", str(out), token=None,
                        env_extra={}, timeout=120)
        assert r.returncode in (0, 1), r.stdout + r.stderr  # PARTIAL: no gateway metrics to sample
        s = summary(out)
        m = s["messages"]
        assert s["connections"]["established"] == 20 and s["connections"]["failed"] == 0
        assert m["sent"] >= 200 and m["received"] == m["sent"] == m["acked"] and m["errors"] == 0
        assert s["latency_ms"]["count"] == m["received"]
        assert s["login_ms"]["count"] == 20
        assert s["protocol"]["name"] == "chatty"
        # a wrong password: the login step's expect times out into a counted login failure, not a crash
        bad = tmp_path / "bad.yaml"
        bad.write_text(OTHER_PROFILE.replace("password: s3cret", "password: wrong").replace("timeout: 10", "timeout: 1"))
        out2 = tmp_path / "o2"
        r = run_loadgen("run", "throughput", "--vus", "2", "--rate", "1", "--duration", "1s", "--workers", "1",
                        "-e", f"GATEWAY_PORT={port}", "--reconnect", "none", "--protocol", str(bad),
                        "--out", str(out2), token=None)
        s = summary(out2)
        assert s["connections"]["failed_by_reason"] == {"login": 2}, r.stdout + r.stderr
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_profile_other_than_reference_gets_constant_traffic_unless_a_model_is_asked_for():
    """The cluster scenario's default traffic model is typed (chat-mix), which only the built-in reference path
    can send: with --protocol xmpp and no --traffic the plan has the constant traffic; asked for, it is refused."""
    from loadgen.cli import _Parser, _run_parser
    from loadgen.plan.options import plan_from_args

    parser = _Parser(prog="loadgen")
    _run_parser(parser.add_subparsers(dest="command", parser_class=_Parser))

    def plan(*argv):
        return plan_from_args(parser.parse_args(["run", "cluster", "--vus", "4", "--duration", "2s", *argv]), {})

    assert plan("--protocol", "xmpp").traffic is None
    assert plan().traffic is not None  # the reference protocol keeps the scenario's default model
    with pytest.raises(UsageError, match="cannot express typed messages"):
        plan("--protocol", "xmpp", "--traffic", "chat-mix")
