"""The gateway's wire protocol, apart from any I/O: parse client frames, build server frames.

Every client frame is a JSON object in a text frame (docs/protocol.md). `parse_client_frame`
never raises on hostile input: it returns a Command or a ProtocolError with the error kind that
the gateway counts in im_gateway_errors_total{kind=...}.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

USER_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")

COMMANDS = ("send", "echo", "ping", "gsend", "join", "leave")
# An echo frame in canonical form (integers without leading zeros, a body of printable ASCII that needs
# no JSON escaping, no extra whitespace or keys): echo_frame(parse_client_frame(x)) == x, so the reply is
# the request itself (session.canonical_echo_reply). Anything else takes the full parse.
CANONICAL_ECHO = re.compile(
    rb'\{"type":"echo","id":(?:0|-?[1-9][0-9]{0,17}),"ts":(?:0|-?[1-9][0-9]{0,17}),"body":"[\x20\x21\x23-\x5b\x5d-\x7e]*"\}')


@dataclass(frozen=True, slots=True)
class Command:
    type: str  # one of COMMANDS
    to: str | None = None
    id: str | int | None = None
    ts: int | float | None = None
    body: str = ""
    group: str | None = None  # gsend, join, leave


@dataclass(frozen=True, slots=True)
class ProtocolError:
    kind: str  # counted: malformed | bad_field | unknown_type
    detail: str
    id: str | int | None = None


def valid_user_id(value) -> bool:
    return isinstance(value, str) and USER_ID.fullmatch(value) is not None


def login_groups(text: str) -> list[str] | None:
    """`groups=` of the connect URL: comma-separated group ids (the user id charset), duplicates dropped;
    None when one is not a valid id."""
    groups = list(dict.fromkeys(text.split(","))) if text else []
    return groups if all(valid_user_id(g) for g in groups) else None


def _is_number(value) -> bool:
    """A JSON number the gateway can write back as JSON: 1e400 parses to inf, which json.dumps would write
    as the non-JSON `Infinity`."""
    if isinstance(value, int):
        return not isinstance(value, bool)
    return isinstance(value, float) and math.isfinite(value)


def _refuse_constant(name: str):
    """json.loads accepts NaN, Infinity and -Infinity by default; they are not JSON (RFC 8259)."""
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # left by a \uXXXX escape without its pair: not Unicode


def _unicode(value) -> bool:
    """False for a string with a lone surrogate; ASCII (the common case) is answered without a scan."""
    return not isinstance(value, str) or value.isascii() or LONE_SURROGATE.search(value) is None


def parse_client_frame(payload: bytes | str) -> Command | ProtocolError:
    try:
        obj = _DECODER.decode(payload if isinstance(payload, str) else payload.decode())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ProtocolError("malformed", "not valid JSON")
    if not isinstance(obj, dict):
        return ProtocolError("malformed", "frame must be a JSON object")
    msg_id = obj.get("id")
    if msg_id is not None and not (isinstance(msg_id, str) or (isinstance(msg_id, int) and not isinstance(msg_id, bool))):
        return ProtocolError("bad_field", "id must be a string or an integer")
    if not _unicode(msg_id):
        return ProtocolError("bad_field", "id is not valid Unicode (lone surrogate)")
    kind = obj.get("type")
    if not isinstance(kind, str):
        return ProtocolError("bad_field", "type missing" if kind is None else "type must be a string", msg_id)
    if kind not in COMMANDS:
        return ProtocolError("unknown_type", f"unknown type {kind[:40]!r}", msg_id)
    if kind == "join" or kind == "leave":
        group = obj.get("group")
        if not valid_user_id(group):
            return ProtocolError("bad_field", "group must be a group id", msg_id)
        return Command(kind, id=msg_id, group=group)
    ts = obj.get("ts")
    if not _is_number(ts):
        return ProtocolError("bad_field", "ts missing" if ts is None else "ts must be a finite number", msg_id)
    if kind == "ping":
        return Command("ping", ts=ts)
    if msg_id is None:
        return ProtocolError("bad_field", f"{kind} needs an id", None)
    body = obj.get("body")
    if not isinstance(body, str):
        return ProtocolError("bad_field", "body missing" if body is None else "body must be a string", msg_id)
    if not _unicode(body):
        return ProtocolError("bad_field", "body is not valid Unicode (lone surrogate)", msg_id)
    if kind == "echo":
        return Command("echo", id=msg_id, ts=ts, body=body)
    if kind == "gsend":
        group = obj.get("group")
        if not valid_user_id(group):
            return ProtocolError("bad_field", "group must be a group id", msg_id)
        return Command("gsend", id=msg_id, ts=ts, body=body, group=group)
    to = obj.get("to")
    if not valid_user_id(to):
        return ProtocolError("bad_field", "to must be a user id", msg_id)
    return Command("send", to=to, id=msg_id, ts=ts, body=body)


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def deliver_frame(sender: str, cmd: Command) -> bytes:
    """What the recipient gets: sender id, message id and timestamp exactly as sent."""
    return _dumps({"type": "msg", "from": sender, "id": cmd.id, "ts": cmd.ts, "body": cmd.body})


def ack_frame(cmd: Command) -> bytes:
    return _dumps({"type": "ack", "id": cmd.id})


def group_deliver_frame(sender: str, cmd: Command) -> bytes:
    """What every other member gets: the group, the sender, and id, ts and body exactly as sent."""
    return _dumps({"type": "gmsg", "group": cmd.group, "from": sender, "id": cmd.id, "ts": cmd.ts, "body": cmd.body})


def group_ack_frame(cmd: Command, n: int) -> bytes:
    """n: the other members the message was addressed to (owed deliveries = the sum of n)."""
    return _dumps({"type": "ack", "id": cmd.id, "n": n})


def joined_frame(group: str, members: int) -> bytes:
    return _dumps({"type": "joined", "group": group, "members": members})


def left_frame(group: str) -> bytes:
    return _dumps({"type": "left", "group": group})


def echo_frame(cmd: Command) -> bytes:
    return _dumps({"type": "echo", "id": cmd.id, "ts": cmd.ts, "body": cmd.body})


def pong_frame(cmd: Command) -> bytes:
    return _dumps({"type": "pong", "ts": cmd.ts})


def error_frame(code: str, detail: str, msg_id=None) -> bytes:
    return _dumps({"type": "error", "code": code, "detail": detail, "id": msg_id})
