"""MQTT 3.1.1 packets for the `mqtt` profile (binary frames, one MQTT packet per WebSocket message).

A codec is what a binary profile names as `codec: module:Class`: `check(fields)` refuses a frame
description at profile-check time (ValueError), `encode(fields)` writes a frame from its rendered fields
(bytes for templates, numbers as given), `decode(payload)` gives the fields inbound rules match on.
"""

from __future__ import annotations

import struct

PACKETS = {"connect": 1, "connack": 2, "publish": 3, "puback": 4, "subscribe": 8, "suback": 9,
           "pingreq": 12, "pingresp": 13, "disconnect": 14}
NAMES = {v: k for k, v in PACKETS.items()}
FIELDS = {"connect": {"client_id", "keepalive", "username", "password"},
          "publish": {"topic", "payload", "qos", "packet_id"},
          "subscribe": {"topic", "qos", "packet_id"},
          "pingreq": set(), "disconnect": set()}


def _text(value) -> bytes:
    value = value if isinstance(value, bytes) else str(value).encode()
    return struct.pack("!H", len(value)) + value


def _int(value) -> int:
    return int(value) if not isinstance(value, int) else value


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        digit, n = n % 128, n // 128
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet_id(value) -> int:
    """Any whole number (a message's running id) as a packet identifier 1..65535."""
    return _int(value) % 65535 + 1


class Codec:
    def check(self, fields: dict) -> None:
        packet = fields.get("packet")
        if packet not in FIELDS:
            raise ValueError(f"packet {packet!r} is not one of: {', '.join(FIELDS)}")
        unknown = sorted(set(fields) - FIELDS[packet] - {"packet"})
        if unknown:
            raise ValueError(f"{packet} has no field(s) {', '.join(unknown)} (it has: {', '.join(sorted(FIELDS[packet]))})")
        if packet in ("publish", "subscribe") and "topic" not in fields:
            raise ValueError(f"{packet} needs a topic")

    def encode(self, fields: dict) -> bytes:
        packet = fields["packet"]
        packet = packet.decode() if isinstance(packet, bytes) else packet
        if packet == "connect":
            flags = 0x02  # clean session
            payload = _text(fields.get("client_id", b""))
            if "username" in fields:
                flags |= 0x80
                payload += _text(fields["username"])
            if "password" in fields:
                flags |= 0x40
                payload += _text(fields["password"])
            body = _text(b"MQTT") + bytes((4, flags)) + struct.pack("!H", _int(fields.get("keepalive", 60))) + payload
            return b"\x10" + _length(len(body)) + body
        if packet == "publish":
            qos = _int(fields.get("qos", 0))
            body = _text(fields["topic"])
            if qos:
                body += struct.pack("!H", _packet_id(fields.get("packet_id", 0)))
            payload = fields.get("payload", b"")
            body += payload if isinstance(payload, bytes) else str(payload).encode()
            return bytes((0x30 | qos << 1,)) + _length(len(body)) + body
        if packet == "subscribe":
            body = struct.pack("!H", _packet_id(fields.get("packet_id", 0))) + _text(fields["topic"]) + \
                bytes((_int(fields.get("qos", 0)),))
            return b"\x82" + _length(len(body)) + body
        if packet == "pingreq":
            return b"\xc0\x00"
        if packet == "disconnect":
            return b"\xe0\x00"
        raise ValueError(f"cannot encode an MQTT {packet}")

    def decode(self, payload: bytes) -> dict:
        kind = payload[0] >> 4
        name = NAMES.get(kind, str(kind))
        # remaining length: up to 4 bytes, 7 bits each
        n, shift, i = 0, 0, 1
        while True:
            b = payload[i]
            n |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                break
            shift += 7
        out = {"packet": name}
        if name == "connack":
            out["return_code"] = payload[i + 1]
        elif name == "publish":
            qos = (payload[0] >> 1) & 3
            tlen = struct.unpack_from("!H", payload, i)[0]
            out["topic"] = payload[i + 2:i + 2 + tlen]
            j = i + 2 + tlen
            if qos:
                out["packet_id"] = struct.unpack_from("!H", payload, j)[0]
                j += 2
            out["qos"] = qos
            out["payload"] = payload[j:]
        elif name in ("puback", "suback"):
            out["packet_id"] = struct.unpack_from("!H", payload, i)[0]
            if name == "suback":
                out["return_codes"] = list(payload[i + 2:])
        return out
