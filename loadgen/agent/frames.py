"""The agent's side of the protocol, apart from I/O: build client frames, read server frames fast.

The reference gateway writes server frames with a fixed field order (docs/protocol.md), so the hot
path reads the type and timestamp by position; anything unexpected falls back to a JSON parse.
"""

from __future__ import annotations

import json

MSG, ECHO, ACK, PONG, ERROR, OTHER, GMSG, JOINED, LEFT = range(9)
_PREFIXES = ((b'{"type":"msg"', MSG), (b'{"type":"echo"', ECHO), (b'{"type":"ack"', ACK),
             (b'{"type":"pong"', PONG), (b'{"type":"error"', ERROR), (b'{"type":"gmsg"', GMSG))
ECHO_PREFIX = b'{"type":"echo"'
_TYPES = {"msg": MSG, "echo": ECHO, "ack": ACK, "pong": PONG, "error": ERROR, "gmsg": GMSG, "joined": JOINED,
          "left": LEFT}


def make_body(size: int) -> bytes:
    """MESSAGE_SIZE bytes of body text (JSON-safe, no escaping needed)."""
    return (b"0123456789abcdef" * (size // 16 + 1))[:size]


def send_frame(to_user: bytes, seq: int, scheduled_ns: int, body: bytes) -> bytes:
    return b'{"type":"send","to":"%s","id":%d,"ts":%d,"body":"%s"}' % (to_user, seq, scheduled_ns, body)


def gsend_frame(group: bytes, seq: int, scheduled_ns: int, body: bytes) -> bytes:
    """A message to every other member of a group (the gateway acks it with n = members addressed)."""
    return b'{"type":"gsend","group":"%s","id":%d,"ts":%d,"body":"%s"}' % (group, seq, scheduled_ns, body)


def join_frame(group: bytes) -> bytes:
    """Join a group (the gateway answers `joined` once every node counts the member)."""
    return b'{"type":"join","group":"%s"}' % group


def leave_frame(group: bytes) -> bytes:
    """Leave a group (the gateway answers `left` once every node counts the leave)."""
    return b'{"type":"leave","group":"%s"}' % group


def int_field(payload: bytes, key: bytes) -> int | None:
    """The integer after `key` (e.g. b'"id":') in a server frame, or None (absent, null or not a number)."""
    i = payload.find(key)
    if i < 0:
        return None
    i += len(key)
    j = i
    end = len(payload)
    while j < end and payload[j] not in b",}":
        j += 1
    try:
        return int(payload[i:j])
    except ValueError:
        return None


def echo_frame(seq: int, scheduled_ns: int, body: bytes) -> bytes:
    return b'{"type":"echo","id":%d,"ts":%d,"body":"%s"}' % (seq, scheduled_ns, body)


def ping_frame(now_ns: int) -> bytes:
    return b'{"type":"ping","ts":%d}' % now_ns


def classify(payload: bytes) -> tuple[int, int | None]:
    """(frame kind, 'ts' integer or None) of a server frame."""
    for prefix, kind in _PREFIXES:
        if payload.startswith(prefix):
            if kind == MSG or kind == ECHO or kind == GMSG:
                i = payload.find(b'"ts":')
                if i >= 0:
                    j = payload.find(b",", i)
                    try:
                        return kind, int(payload[i + 5:j])
                    except ValueError:
                        break  # not where the fixed layout puts it: parse properly
            return kind, None
    try:
        obj = json.loads(payload)
        kind = _TYPES.get(obj.get("type"), OTHER)
        ts = obj.get("ts")
        return kind, int(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else None
    except (ValueError, AttributeError, TypeError):
        return OTHER, None
