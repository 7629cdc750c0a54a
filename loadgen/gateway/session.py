"""One gateway session's frame handling apart from picows' I/O: limits, dispatch, close states, the half-open check.

`SessionLogic` decides; the I/O class (server.GatewaySession) does what it decides. It feeds every frame to
`take_frame` and supplies the effects: `push(frame)` (write a frame to the client), `abort(reason, code)` (close
this offender), `later(delay, fn, *args)` (a timer), and `gw` (config, metrics, router). Tests drive the logic
with fakes of those, without sockets (tests/test_gateway_session.py).
"""

from __future__ import annotations

import time

from picows import WSCloseCode, WSMsgType  # the protocol's constants only

from loadgen.gateway import protocol
from loadgen.gateway.guard import AbuseGuard

# what take_frame tells the I/O layer to do with the connection besides what the logic did itself
CONTINUE, REPLY_CLOSE, DISCONNECT = 0, 1, 2
CLOSE, PING, PONG, TEXT, CONTINUATION = WSMsgType.CLOSE, WSMsgType.PING, WSMsgType.PONG, WSMsgType.TEXT, \
    WSMsgType.CONTINUATION


def canonical_echo_reply(payload: bytes) -> bytes | None:
    """The echo reply without a JSON round trip when the frame is canonical, else None."""
    if payload.startswith(b'{"type":"echo","id":') and protocol.CANONICAL_ECHO.fullmatch(payload):
        return payload
    return None


class SessionLogic:
    """A mixin: the attributes live in the I/O class's __slots__ (gw, user, guard, closing, last_rx, ping_at,
    groups)."""

    __slots__ = ()

    def init_state(self, gw, user: str, now: float) -> None:
        self.gw = gw
        self.user = user
        cfg = gw.config
        self.guard = AbuseGuard(cfg.max_frames_per_s, cfg.flood_burst, cfg.max_bad_frames_per_min)
        self.closing = None  # why the gateway is closing this session; None: it is not
        self.last_rx = now  # last frame from the peer (half-open check)
        self.ping_at = 0.0  # when the half-open check pinged, 0: no ping outstanding
        self.groups = None  # the groups this session is a member of (loadgen.gateway.groups), None: none yet

    def join_at_login(self, groups: list[str]) -> None:
        """`groups=` of the connect URL: joined silently; a refused join is an error frame, as for a join frame."""
        for group in groups:
            self.gw.router.join(self, group, lambda result, group=group: self.joined(group, result, None, None))

    # --- close states ------------------------------------------------------------------------------
    def begin_close(self, reason: str) -> bool:
        """The gateway closes the session for `reason`; False when it is on its way out already."""
        if self.closing:
            return False
        self.closing = reason
        if self.groups:  # it can receive nothing more: group senders stop counting it at once
            self.gw.router.leave_groups(self)
        return True

    def idle_check(self, now: float, half: float) -> str | None:
        """Half-open peers: 'ping' a session idle for half the read timeout, 'drop' it when the next half
        brings no frame (a pong counts)."""
        if self.closing:
            return None
        if self.ping_at:
            if now - self.ping_at > half:
                self.begin_close("read_timeout")
                return "drop"
        elif now - self.last_rx > half:
            self.ping_at = now
            return "ping"
        return None

    # --- frames ------------------------------------------------------------------------------------
    def take_frame(self, frame, now: float) -> int:
        """Handle one frame from the client (picows' frame: msg_type, fin, payload_size, get_payload_as_bytes)."""
        kind = frame.msg_type
        if self.closing:  # only the peer's close reply matters now
            return DISCONNECT if kind == CLOSE else CONTINUE
        if kind == CLOSE:
            self.gw.router.unregister(self)  # from now on senders hear 'unknown recipient', not silence
            return REPLY_CLOSE
        self.last_rx = now  # any frame, a pong too, proves the peer alive
        self.ping_at = 0.0
        if kind == PING or kind == PONG:
            return CONTINUE  # picows answers pings itself
        if not self.guard.allow_frame(now):
            self.abort("flood", WSCloseCode.POLICY_VIOLATION)
        elif frame.payload_size > self.gw.config.max_message_size:
            self.abort("oversized", WSCloseCode.MESSAGE_TOO_BIG)
        elif not frame.fin or kind == CONTINUATION:
            self.abort("fragmented", WSCloseCode.UNSUPPORTED_DATA)
        elif kind != TEXT:
            self.error("binary_frame", "frames must be JSON text")
        else:
            self.take_text(frame.get_payload_as_bytes(), now)
        return CONTINUE

    def take_text(self, payload: bytes, now: float) -> None:
        m = self.gw.metrics
        reply = canonical_echo_reply(payload)
        if reply is not None:  # the same counts and reply as the full path below, without the JSON work
            m.messages_received += 1
            self.push(reply)
            m.messages_sent += 1
            m.latency.observe(time.monotonic() - now)
            return
        cmd = protocol.parse_client_frame(payload)
        if isinstance(cmd, protocol.ProtocolError):
            self.error(cmd.kind, cmd.detail, cmd.id)
            return
        m.messages_received += 1
        if cmd.type == "send":
            delay = self.gw.config.delivery_delay_s
            if delay:
                self.later(delay, self.send, cmd, now)
            else:
                self.send(cmd, now)
        elif cmd.type == "echo":
            self.push(protocol.echo_frame(cmd))
            m.messages_sent += 1
            m.latency.observe(time.monotonic() - now)
        elif cmd.type == "ping":  # application heartbeat (refreshes the registry TTL in cluster mode)
            self.push(protocol.pong_frame(cmd))
            self.gw.router.heartbeat(self)
        elif cmd.type == "gsend":
            self.gsend(cmd, now)
        elif cmd.type == "join":
            self.gw.router.join(self, cmd.group,
                               lambda result: self.joined(cmd.group, result, protocol.joined_frame, cmd.id))
        elif self.gw.router.leave(self, cmd.group):  # answered once every node counts the leave
            self.gw.router.leave_counted(cmd.group, lambda group=cmd.group: self.push(protocol.left_frame(group)))
        else:
            self.not_member(cmd)

    # --- groups ------------------------------------------------------------------------------------
    def joined(self, group: str, result, reply, msg_id) -> None:
        """The router's answer to a join: the members now (reply with `reply`, if any), or why not."""
        if isinstance(result, tuple):  # refused by a limit: a well-formed request, not a bad frame
            self.error(result[0], result[1], msg_id, bad_frame=False)
        elif reply is not None:
            self.push(reply(group, result))

    def not_member(self, cmd) -> None:
        # not a bad frame: a member's leave (or its replaced session's groups) can race its own sends
        self.error("not_member", f"not a member of group {cmd.group}", cmd.id, bad_frame=False)

    def gsend(self, cmd, received: float) -> None:
        if not self.groups or cmd.group not in self.groups:
            self.not_member(cmd)
            return
        frame = protocol.group_deliver_frame(self.user, cmd)

        def addressed(n: int, written_here: int) -> None:
            m = self.gw.metrics
            m.messages_sent += written_here
            m.latency.observe(time.monotonic() - received)
            self.push(protocol.group_ack_frame(cmd, n))

        self.gw.router.gsend(self, cmd.group, frame, addressed)

    def send(self, cmd, received: float) -> None:
        m = self.gw.metrics
        router = self.gw.router
        frame = protocol.deliver_frame(self.user, cmd)
        if router.deliver(cmd.to, frame):
            m.messages_sent += 1
            m.latency.observe(time.monotonic() - received)
            self.push(protocol.ack_frame(cmd))
        elif router.remote:  # cluster mode: the user may be on another node
            router.route(cmd.to, frame, lambda error: self.routed(cmd, error))
        else:
            self.error("unknown_recipient", f"user {cmd.to} is not connected", cmd.id, bad_frame=False)

    def routed(self, cmd, error) -> None:
        """Cluster mode: the owning node's topic has the message (ack), or why not."""
        if error is None:
            self.push(protocol.ack_frame(cmd))
        else:  # the recipient is not connected, or a backend is down: not held against the client
            self.error(error[0], error[1], cmd.id, bad_frame=False)

    def error(self, kind: str, detail: str, msg_id=None, bad_frame: bool = True) -> None:
        """An error frame to the client, counted by kind; a bad frame also counts toward the abuse limit.
        bad_frame=False: a well-formed send whose recipient is not connected - normal in IM (the user just went
        offline, or a cluster's registry is slow), never a reason to cut the sender off."""
        m = self.gw.metrics
        m.count(m.errors, kind)
        self.push(protocol.error_frame(kind, detail, msg_id))
        if bad_frame and not self.guard.bad_frame(time.monotonic()):
            self.abort("abuse_bad_frames", WSCloseCode.POLICY_VIOLATION)
