"""One agent worker: an event loop holding its share of the connections (worker 0 in the agent process,
workers 1..N-1 forked).

Connections are picows listeners (callbacks, no task per idle connection). The control loop
keeps the open count on the profile's target, fires scheduled sends and heartbeats, and every
second hands the parent one CSV row (counters + interval histograms).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import heapq
import logging
import os
import random
import re
import signal
import socket
import time
from array import array
from collections import deque

import picows
from picows import WSCloseCode, WSHandshakeError, WSListener, WSMsgType, ws_connect

from loadgen.agent import frames
from loadgen.agent.groupquiet import JOIN, GroupQuiet
from loadgen.agent.login import LoginFailed, run_login
from loadgen.results import histogram as hdr
from loadgen.agent.interval import Interval
from loadgen.agent.pairs import PairLatency, node_index
from loadgen.agent.schedule import OpenSchedule
from loadgen.agent.slots import OPEN, Slots
from loadgen.plan.stages import Profile, Stage
from loadgen.traffic import groups as traffic_groups
from loadgen.traffic import keyed
from loadgen.traffic.model import TYPE_BITS
from loadgen.traffic.schedule import TrafficSchedule

TEXT, BINARY, CLOSE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CLOSE
# Per-connection memory (bench/README.md): picows' smallest read buffer (it grows by itself for bigger
# frames), no aiofastnet (+5 KB per connection) except in closed loop (few connections, ~10 % less CPU per
# message measured), and one shared logger adapter (picows creates a child Logger per connection when
# handed a logging.Logger).
READ_BUFFER_INIT = 2048
try:
    import aiofastnet  # noqa: F401 - optional; picows imports it too when present
    HAS_AIOFASTNET = True
except ImportError:
    HAS_AIOFASTNET = False
PICOWS_LOG = logging.LoggerAdapter(logging.getLogger("picows.client"), {})
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux >= 4.2


def source_socket(ip: str):
    """A picows socket_factory: an unconnected socket bound to source address `ip`.

    IP_BIND_ADDRESS_NO_PORT defers the port to connect(), which picks it per destination (4-tuple). A
    plain bind(ip, 0) picks a port unique per source address at bind time, scanning the range under a
    lock: measured, it stalls opening at ~30K connections over 4 addresses (kernel time), and caps a
    source address at one port range for all gateway endpoints together.
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET

    def factory(_url):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((ip, 0))
        except OSError:
            sock.close()
            raise
        return sock

    return factory
TICK_NS = 50_000_000  # control loop granularity; sends use their own scheduled times regardless
CLOSE_WAIT_S = 2.0  # a planned close waits this long for the gateway's close reply


def classify_connect_error(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, WSHandshakeError):
        status = getattr(getattr(exc, "response", None), "status", None)
        status = int(status) if status is not None else None
        return "auth" if status in (401, 403) else "rejected" if status else "reset"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, EOFError, ConnectionAbortedError)):
        return "reset"
    if isinstance(exc, OSError):
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EADDRINUSE):
            return "no_ports"
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return "fd_limit"
        if exc.errno in (errno.ECONNREFUSED,):
            return "refused"
        if exc.errno in (errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "timeout"
    return "other"


class ConnLogic:
    """What every connection does on connect, on the gateway's close and on disconnect (a mixin of the
    listener classes below, so the C closed loop shares it)."""

    __slots__ = ()

    def on_ws_connected(self, transport) -> None:
        self.transport = transport
        # the handshake headers are not needed any more: ~2 KB per idle connection
        if transport.request is not None:
            transport.request.headers = None
        if transport.response is not None:
            transport.response.headers = None

    def on_close_frame(self, transport) -> None:
        if not self.planned:  # the gateway closes on us: answer, then drop the socket
            self.closed_by_gateway = True
            transport.send_close(WSCloseCode.OK)
        transport.disconnect()

    def on_ws_disconnected(self, transport) -> None:
        self.w.on_disconnected(self)


class Conn(ConnLogic, WSListener):
    __slots__ = ("w", "slot", "transport", "established_ns", "planned", "closed_by_gateway", "sent_ns")

    def __init__(self, worker: "Worker", slot: int) -> None:
        super().__init__()
        self.w = worker
        self.slot = slot
        self.transport = None
        self.established_ns = 0
        self.planned = False
        self.closed_by_gateway = False
        self.sent_ns = 0  # closed loop: send time of the echo in flight (0: none)

    def on_ws_frame(self, transport, frame) -> None:
        kind = frame.msg_type
        if kind == TEXT:
            self.w.on_text(frame.get_payload_as_bytes(), self.slot)
        elif kind == CLOSE:
            self.on_close_frame(transport)


class LoopLogic:
    """Closed loop: one echo in flight; its reply is timed against its send and triggers the next send.
    The reply of the echo in flight takes the fast path (send_next); everything else comes here."""

    __slots__ = ()

    def on_other_frame(self, transport, frame) -> None:
        kind = frame.msg_type
        if kind == TEXT:
            w = self.w
            if w.on_text(frame.get_payload_as_bytes()) == frames.ERROR and self.sent_ns:
                self.sent_ns = 0  # the round trip ended in an error frame: go on with the next
                if w.sending and not self.planned:
                    self.send_next(time.monotonic_ns())
        elif kind == CLOSE:
            self.on_close_frame(transport)


class LoopConn(LoopLogic, Conn):
    """The closed loop in Python (used when the C one, _echoloop.pyx, is not built for this picows)."""

    __slots__ = ()

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == TEXT and self.sent_ns:
            payload = frame.get_payload_as_bytes()
            if payload.startswith(frames.ECHO_PREFIX):
                now = time.monotonic_ns()
                w = self.w
                iv = w.iv
                iv.msgs_received += 1
                iv.bytes_received += len(payload)
                w.totals_received += 1
                us = (now - self.sent_ns) // 1000
                if 0 < us < hdr.DIRECT_US:
                    iv.latency.counts[us] += 1
                else:
                    iv.latency.record(us)
                self.sent_ns = 0
                if w.sending and not self.planned:
                    self.send_next(now)
                return
        self.on_other_frame(transport, frame)

    def send_next(self, now_ns: int) -> None:
        """The next echo of this connection, timed from now."""
        w = self.w
        w.seq += 1
        data = frames.echo_frame(w.seq, now_ns, w.body)
        self.sent_ns = now_ns
        self.transport.send(TEXT, data)
        iv = w.iv
        iv.msgs_sent += 1
        iv.bytes_sent += len(data)
        w.totals_sent += 1


class ProfileConn(Conn):
    """A connection speaking a protocol profile (loadgen.protocols): frames buffered for the login steps
    until they are done, then classified by the profile's inbound rules."""

    __slots__ = ("acts", "user", "login_frames", "login_wake")

    def __init__(self, worker: "Worker", slot: int) -> None:
        super().__init__(worker, slot)
        self.acts = None  # the profile's frames bound to this connection, after login
        self.user = b""
        self.login_frames = deque()  # a server may speak first: buffered from the upgrade on
        self.login_wake = None

    def on_ws_frame(self, transport, frame) -> None:
        kind = frame.msg_type
        if kind == TEXT or kind == BINARY:
            payload = frame.get_payload_as_bytes()
            if self.login_frames is not None:
                self.login_frames.append(payload)
                self.wake_login()
                return
            w = self.w
            kind = w.on_text(payload, self.slot)
            if self.sent_ns and (kind == frames.MSG or kind == frames.ERROR):
                self.sent_ns = 0  # the round trip ended (its ts was the send time): go on with the next
                if w.sending and not self.planned:
                    self.send_next(time.monotonic_ns())
        elif kind == CLOSE:
            self.on_close_frame(transport)

    def wake_login(self) -> None:
        wake = self.login_wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def on_ws_disconnected(self, transport) -> None:
        self.wake_login()
        self.w.on_disconnected(self)

    def send_next(self, now_ns: int) -> None:
        """Closed loop: the next echo of this connection, timed from now."""
        w = self.w
        w.seq += 1
        data = self.acts.echo(self.user, self.user, w.seq, now_ns, w.body, b"")
        self.sent_ns = now_ns
        self.transport.send(w.msg_type, data)
        iv = w.iv
        iv.msgs_sent += 1
        iv.bytes_sent += len(data)
        w.totals_sent += 1


def _load_echoloop():
    """The C closed loop when it is built for the installed picows, else None (LOADGEN_PURE_PYTHON=1
    forces the Python one). It cimports picows' classes: another picows version could crash it."""
    if os.environ.get("LOADGEN_PURE_PYTHON"):
        return None
    try:
        from loadgen.agent import _echoloop
    except Exception:  # not built, or Cython's binary-compatibility check failed
        return None
    return _echoloop if _echoloop.BUILT_WITH_PICOWS == picows.__version__ else None


echoloop = _load_echoloop()
if echoloop is not None:
    class FastLoopConn(LoopLogic, ConnLogic, echoloop.EchoConnBase):
        """The closed loop with its per-reply path in C (fields and on_ws_frame in _echoloop.pyx)."""

        __slots__ = ()


class Worker:
    def __init__(self, plan, index: int, profile, send_to_parent, inbox=None) -> None:
        """profile: this worker's share of the agent's stages (Profile.share, computed once by the agent).
        inbox: a forked worker's end of the pipe on which the agent process hands it control messages
        (loadgen.agent.control); worker 0 is handed them by a direct call of apply_control."""
        self.plan = plan
        self.index = index
        self.emit = send_to_parent
        self.inbox = inbox
        self.profile = profile
        self.profile_from_s = 0.0  # seconds after the start at which self.profile's time 0 lies
        self.target = 0
        self.t0_ns = None  # monotonic ns of the start
        self.send_lag_ns = 0  # this interval's largest lateness of a send (fire_sends) or of the loop's wake-up
        n = self.profile.peak
        self.n = n
        self.rng = random.Random(os.getpid())
        agent = re.sub(r"[^A-Za-z0-9_.:-]", "_", plan.agent_id)[:60]
        self.uid_prefix = f"{agent}-{index}-"  # user id of slot s: prefix + s (made when needed, not stored)
        # a protocol profile other than the shipped reference one: the profile path (ProfileConn)
        self.proto = None if getattr(plan, "builtin_protocol", True) else plan.protocol_profile
        self.msg_type = BINARY if self.proto is not None and self.proto.binary else TEXT
        self.classify = frames.classify if self.proto is None else self.proto.classify
        # without an ack in the protocol, a delivery ends its sender's in-flight count (peer mode's quiet period)
        self.delivery_ends_send = self.proto is not None and not self.proto.has_ack
        self.url_bases = [f"ws://{host}:{port}{plan.path}?user=" for host, port in plan.endpoints] \
            if self.proto is None else [f"ws://{host}:{port}" for host, port in plan.endpoints]
        self.closed_loop = getattr(plan, "closed_loop", False)
        # closed loop: the C per-reply path when built (its counters are drained into iv at each flush)
        self.echo_stats = echoloop.EchoStats(frames.make_body(plan.message_size)) \
            if self.closed_loop and echoloop is not None and self.proto is None else None
        self.conn_class = ProfileConn if self.proto is not None else \
            (FastLoopConn if self.echo_stats is not None else LoopConn) if self.closed_loop else Conn
        self.headers = {"Authorization": f"Bearer {plan.token}"}
        # peer mode quiesces a closing pair (loadgen.agent.slots); the echo modes have no partner to wait for
        # (and on the profile path, echo mode too: a real server's echo can take a while, and an echo still on
        # its way when the close goes is lost)
        quiesce = (plan.mode == "peer" or self.proto is not None) and not self.closed_loop
        quiesce_ns = int(getattr(plan, "close_quiesce_s", 0) * 1e9) if quiesce else 0
        self.slots = Slots(n, self.rng, quiesce_ns=quiesce_ns, reconnect=plan.reconnect,
                           backoff_base_s=plan.backoff_base_s, backoff_cap_s=plan.backoff_cap_s)
        # the receive path's in-flight counts: the slots' arrays themselves, bound once (no lookup per message)
        self.pending_in, self.pending_out = self.slots.pending_in, self.slots.pending_out
        self.body = frames.make_body(plan.message_size)
        self.sends = OpenSchedule(0 if self.closed_loop else plan.rate, self.rng)
        self.model = getattr(plan, "traffic_model", None)  # None: today's constant traffic
        self.group_of = None
        self.group_quiet = None
        if self.model is not None:
            self._init_traffic(plan, n)
        # Heartbeats: a cursor sweeps the slots once per heartbeat period, so a connection costs no
        # schedule entry (~200 B each in a heap); each open connection is pinged once per period.
        self.beat_period_ns = int(plan.heartbeat_s * 1e9)
        self.beat_pos = 0.0
        self.beat_last_ns = 0
        self.seq = 0
        self.iv = Interval(self.model.names if self.model is not None else None)
        self.stopping = False
        self.sending = True
        self.totals_sent = 0
        self.totals_received = 0
        self.totals_errors = 0
        # routing latency per gateway node pair, when partners sit on different nodes
        self.pairs = (PairLatency(plan.endpoints, plan.pairing, index)
                      if plan.pairing == "cross-node" and len(plan.endpoints) > 1 else None)

    def _init_traffic(self, plan, n: int) -> None:
        """A traffic model's per-worker state: user keys, groups, the typed schedule and receive path."""
        model = self.model
        self.keys = array("Q", (keyed.user_key(plan.seed, self.uid_prefix + str(s)) for s in range(n)))
        n_endpoints = len(plan.endpoints)
        same_node = None if plan.pairing == "cross-node" else (
            lambda s: node_index(plan.pairing, s, self.index, n_endpoints))
        group_of, sizes = traffic_groups.assign(n, model.groups, keyed.user_key(plan.seed, self.uid_prefix),
                                                same_node)
        self.group_of = group_of if model.groups is not None else None
        # peer mode's quiet period covers groups too: a member's planned close quiets its group first
        self.group_quiet = GroupQuiet(group_of, len(sizes), self.slots.quiesce_ns) \
            if self.group_of is not None and self.slots.quiesce_ns else None
        if self.group_quiet is not None:
            self.slots.busy = self.group_quiet.busy
        in_group = bytearray(1 if g >= 0 else 0 for g in group_of) if model.groups is not None else None
        self.sends = TrafficSchedule(model, plan.rate, self.keys, 0, in_group)
        self.body = frames.make_body(model.max_size)
        self.type_to_group = [t.to == "group" for t in model.types]
        self.on_text = self.on_text_typed
        self.totals_owed = 0  # deliveries owed (loadgen.results.bytype), for the drain's in-flight check
        self.churn = model.churn
        if self.churn is not None:
            self.session_no = array("I", bytes(4 * n))  # sessions each user began: keys its session draws
            self.session_ends: list = []  # heap of (ns, tie, slot, conn): when a session ends by churn
            self.session_tie = 0
            self.storm_pending = self.churn.storm_at_s is not None
        self.group_unanswered = 0  # group messages neither acked nor refused yet

    def session_began(self, slot: int, conn, now_ns: int) -> None:
        """Churn: draw this session's length (keyed by the user and its session number)."""
        churn = self.churn
        if churn.session is None:
            return
        k = self.session_no[slot]
        length_s = churn.session.sample(keyed.uniform(self.keys[slot], k, keyed.SESSION))
        self.session_tie += 1
        heapq.heappush(self.session_ends, (now_ns + int(length_s * 1e9), self.session_tie, slot, conn))

    def churn_due(self, now_ns: int, elapsed_s: float) -> None:
        """End the sessions whose time is up, and the reconnect storm when it is due: each user closes as
        planned and reconnects after its pause (loadgen.agent.slots: it stays held meanwhile)."""
        churn, slots, ends = self.churn, self.slots, self.session_ends
        while ends and ends[0][0] <= now_ns:
            _, _, slot, conn = heapq.heappop(ends)
            if slots.conns[slot] is conn and slots.sendable(slot):
                self._churn_close(slot, now_ns, churn.pause)
        if self.storm_pending and elapsed_s >= churn.storm_at_s:
            self.storm_pending = False
            for slot in range(slots.high):
                if slots.sendable(slot) and keyed.uniform(self.keys[slot], 0, keyed.STORM) < churn.storm_fraction:
                    self._churn_close(slot, now_ns, churn.storm_pause)

    def _churn_close(self, slot: int, now_ns: int, pause) -> None:
        k = self.session_no[slot]
        self.session_no[slot] = k + 1
        pause_ns = int(pause.sample(keyed.uniform(self.keys[slot], k, keyed.PAUSE)) * 1e9)
        conn = self.slots.conns[slot]
        if conn.transport is not None and self._begin_close(slot, now_ns, pause_ns):
            self._send_close(conn)

    def group_name(self, group: int) -> str:
        return f"{self.uid_prefix}g{group}"

    def url(self, slot: int, values: dict | None = None) -> str:
        """Computed per connect rather than stored: an idle slot costs no string. values: a profile's."""
        bases = self.url_bases
        # Partners (slot s and s^1) sit on neighbouring endpoints when routing crosses nodes, else on one node.
        base = bases[node_index(self.plan.pairing, slot, self.index, len(bases))]
        if values is not None:
            return base + self.proto.path.render(values).decode()
        url = base + self.uid_prefix + str(slot)
        if self.group_of is not None and self.group_of[slot] >= 0 and self.group_quiet is None:
            url += "&groups=" + self.group_name(self.group_of[slot])  # joined at login (else: GroupQuiet)
        return url

    def local_ip(self, slot: int):
        ips = self.plan.local_ips
        return ips[(slot // len(self.plan.endpoints)) % len(ips)] if ips else None

    # --- receive path (called by picows) -----------------------------------------------------------
    def on_text(self, payload: bytes, slot: int = -1) -> int:
        iv = self.iv
        iv.bytes_received += len(payload)
        kind, ts = self.classify(payload)
        pending_in, pending_out = self.pending_in, self.pending_out
        if kind == frames.MSG or kind == frames.ECHO:
            iv.msgs_received += 1
            self.totals_received += 1
            if ts is not None:
                us = (time.monotonic_ns() - ts) // 1000
                iv.latency.record(us)
                if self.pairs is not None and kind == frames.MSG:
                    self.pairs.record(slot, us)
            if pending_in is not None and slot >= 0:
                if pending_in[slot]:
                    pending_in[slot] -= 1
                if self.delivery_ends_send:
                    peer = self.slots.peer_of(slot)
                    if pending_out[peer]:
                        pending_out[peer] -= 1
        elif kind == frames.ACK:
            iv.msgs_acked += 1
            if pending_out is not None and slot >= 0 and pending_out[slot]:
                pending_out[slot] -= 1
        elif kind == frames.PONG:
            iv.pongs += 1
        elif kind == frames.ERROR:
            iv.msgs_errors += 1
            self.totals_errors += 1
            if pending_out is not None and slot >= 0:  # a refused send: to the partner, not received
                if pending_out[slot]:
                    pending_out[slot] -= 1
                peer = self.slots.peer_of(slot) if self.plan.mode == "peer" else slot  # an echo: to itself
                if pending_in[peer]:
                    pending_in[peer] -= 1
        return kind

    def on_text_typed(self, payload: bytes, slot: int = -1) -> int:
        """The receive path under a traffic model: the message's type is the low bits of its id (the agent
        chooses ids; every protocol that echoes the id carries it), counted per type (loadgen.results.bytype)."""
        iv = self.iv
        iv.bytes_received += len(payload)
        kind, ts = frames.classify(payload)
        by_type = iv.by_type
        if kind == frames.MSG or kind == frames.GMSG:
            iv.msgs_received += 1
            self.totals_received += 1
            mid = frames.int_field(payload, b'"id":')
            c = by_type[mid & 7] if mid is not None and (mid & 7) < len(by_type) else None
            if c is not None:
                c[2] += 1
            if ts is not None:
                us = (time.monotonic_ns() - ts) // 1000
                iv.latency.record(us)
                if c is not None:
                    c[5].record(us)
                if self.pairs is not None and kind == frames.MSG:
                    self.pairs.record(slot, us)
            if kind == frames.MSG and self.pending_in is not None and slot >= 0 and self.pending_in[slot]:
                self.pending_in[slot] -= 1
            elif kind == frames.GMSG and self.group_quiet is not None and slot >= 0:
                self.group_quiet.delivered(slot)
        elif kind == frames.ACK:
            iv.msgs_acked += 1
            mid = frames.int_field(payload, b'"id":')
            t = mid & 7 if mid is not None else -1
            if 0 <= t < len(by_type):
                by_type[t][3] += 1
                if self.type_to_group[t]:
                    n = frames.int_field(payload, b'"n":') or 0
                    by_type[t][1] += n
                    self.totals_owed += n
                    self.group_unanswered -= 1
                    if self.group_quiet is not None and slot >= 0:
                        self.group_quiet.acked(slot, n)
                elif self.pending_out is not None and slot >= 0 and self.pending_out[slot]:
                    self.pending_out[slot] -= 1
        elif kind == frames.PONG:
            iv.pongs += 1
        elif kind == frames.JOINED:
            if self.group_quiet is not None and slot >= 0:
                self.group_quiet.joined(slot)
        elif kind == frames.LEFT:
            if self.group_quiet is not None and slot >= 0:
                self.group_quiet.left(slot)
        elif kind == frames.ERROR:
            iv.msgs_errors += 1
            self.totals_errors += 1
            mid = frames.int_field(payload, b'"id":')
            t = mid & 7 if mid is not None else -1
            if 0 <= t < len(by_type):
                by_type[t][4] += 1
                if self.type_to_group[t]:  # a refused group message: owed once, refused once
                    by_type[t][1] += 1
                    self.totals_owed += 1
                    self.group_unanswered -= 1
                    if self.group_quiet is not None and slot >= 0:
                        self.group_quiet.refused(slot)
                    return kind
            pending_in, pending_out = self.pending_in, self.pending_out
            if pending_out is not None and slot >= 0:  # a refused send: to the partner, not received
                if pending_out[slot]:
                    pending_out[slot] -= 1
                peer = self.slots.peer_of(slot)
                if pending_in[peer]:
                    pending_in[peer] -= 1
        return kind

    def on_disconnected(self, conn: Conn) -> None:
        now = time.monotonic_ns()
        outcome = self.slots.ended(conn.slot, conn, now)
        if outcome is None:  # not the slot's current connection (already accounted for)
            return
        if self.group_quiet is not None:
            self.group_quiet.ended(conn.slot)
        iv = self.iv
        iv.session.record((now - conn.established_ns) // 1000)
        if outcome == "closed" or outcome == "churned":
            iv.closes += 1
            if outcome == "churned":  # the session ended by the traffic model's churn: back after its pause
                iv.churns += 1
        else:  # the gateway or the network dropped it: sends keep coming due and count as failed
            iv.disconnects += 1
            if conn.closed_by_gateway:
                iv.disc_by_gateway += 1
            else:
                iv.disc_lost += 1
        if outcome != "dropped":  # closed, or dropped in its quiet period (it was leaving anyway): IDLE
            self.sends.remove(conn.slot)

    # --- connection management ---------------------------------------------------------------------
    async def _open(self, slot: int) -> None:
        start = time.monotonic_ns()
        ip = self.local_ip(slot)
        cls = self.conn_class
        values = headers = None
        if self.proto is not None:
            values = self.proto.connection_values((self.uid_prefix + str(slot)).encode(), self.plan.token)
            headers = {name: tpl.render(values).decode() for name, tpl in self.proto.headers}
        try:
            async with asyncio.timeout(self.plan.connect_timeout_s):  # a timer, not wait_for's extra task
                transport, conn = await ws_connect(
                    lambda _request=None, _response=None: cls(self, slot), self.url(slot, values),
                    extra_headers=self.headers if values is None else headers,
                    websocket_handshake_timeout=self.plan.connect_timeout_s,
                    socket_factory=source_socket(ip) if ip else None, logger_name=PICOWS_LOG,
                    read_buffer_init_size=READ_BUFFER_INIT, use_aiofastnet=self.closed_loop and HAS_AIOFASTNET)
        except Exception as exc:  # every failure is a measured outcome, never a crash
            self.iv.fail(classify_connect_error(exc))
            self.slots.open_failed(slot, time.monotonic_ns())
            return
        now = time.monotonic_ns()
        if transport.is_disconnected:
            self.iv.fail("reset")
            self.slots.open_failed(slot, now)
            return
        upgraded = now
        if values is not None:
            try:
                await run_login(conn, self.proto, values, self.msg_type)
            except LoginFailed:
                transport.disconnect()
                self.iv.fail("login")
                self.slots.open_failed(slot, time.monotonic_ns())
                return
            conn.acts = self.proto.bind(values)
            conn.user = values["user"]
            now = time.monotonic_ns()
            if self.proto.login:
                self.iv.login.record((now - upgraded) // 1000)
        conn.established_ns = now
        self.slots.opened(slot, conn)
        if self.group_quiet is not None:
            self.group_quiet.opened(slot)
        if self.model is not None and self.churn is not None:
            self.session_began(slot, conn, now)
        self.iv.connects_ok += 1
        self.iv.connect.record((upgraded - start) // 1000)  # TCP + upgrade; a profile's login has its own
        if self.closed_loop:
            if self.sending:
                conn.send_next(now)
        elif slot not in self.sends and self.sending:
            self.sends.add(slot, now)
        if self.stopping:
            self._close(slot, now)  # opened after the stop: nobody has sent to it

    def _close(self, slot: int, now_ns: int) -> None:
        """Planned close. Peer mode: first the quiet period - the slot stops sending and its partner stops
        sending to it (fire_sends) until nothing is in flight to or from it (end_quiet_periods), at most
        --close-quiesce; then the close handshake: messages already on their way arrive before the
        gateway's close reply."""
        conn = self.slots.conns[slot]
        if conn is not None and conn.transport is not None and self._begin_close(slot, now_ns):
            self._send_close(conn)

    def _begin_close(self, slot: int, now_ns: int, churn_pause_ns: int | None = None) -> bool:
        """Slots.begin_close; a group member's close first quiets its group (loadgen.agent.groupquiet)."""
        if self.group_quiet is not None and self.slots.sendable(slot):
            self.group_quiet.begin(slot)
        return self.slots.begin_close(slot, now_ns, churn_pause_ns)

    def end_quiet_periods(self, now_ns: int) -> None:
        gq = self.group_quiet
        if gq is not None and gq.waiting:  # members join or leave once their group is quiet and idle
            conns = self.slots.conns
            for slot, what in gq.to_send(now_ns):
                group = self.group_name(self.group_of[slot]).encode()
                frame = frames.join_frame(group) if what == JOIN else frames.leave_frame(group)
                conns[slot].transport.send(WSMsgType.TEXT, frame)
        for conn in self.slots.quiet_periods_over(now_ns):
            self._send_close(conn)

    def _send_close(self, conn: Conn) -> None:
        conn.planned = True
        if self.proto is not None and conn.acts is not None and conn.acts.close is not None:
            conn.transport.send(self.msg_type, conn.acts.close)  # the protocol's own goodbye first
        conn.transport.send_close(WSCloseCode.OK)
        asyncio.get_running_loop().call_later(CLOSE_WAIT_S, conn.transport.disconnect)

    def adjust(self, target: int, now_ns: int) -> None:
        """Keep the held connections on the target: open slots (each its own task), give up or close others."""
        slots = self.slots
        loop = asyncio.get_running_loop()
        for slot in slots.to_open(target, now_ns, self.plan.max_connecting):
            loop.create_task(self._open(slot))
        given_up, closes = slots.to_close(target)
        for slot in given_up:
            self.sends.remove(slot)
        for slot in closes:
            self._close(slot, now_ns)

    # --- send path ---------------------------------------------------------------------------------
    def fire_sends(self, now_ns: int) -> None:
        # How late the oldest due send goes out: a worker short of CPU falls further behind its schedule every
        # second (the generator's limit, not the gateway's); the row keeps the interval's largest (send_lag_ms).
        due = self.sends.next_due_ns()
        if due is not None and now_ns - due > self.send_lag_ns:
            self.send_lag_ns = now_ns - due
        if self.model is not None:
            self.fire_typed(now_ns)
            return
        slots = self.slots
        iv, state, conns, body, peer_of = self.iv, slots.state, slots.conns, self.body, slots.peer_of
        peer_mode = self.plan.mode == "peer"
        quiescing, pending_in, pending_out = slots.quiescing, self.pending_in, self.pending_out
        proto, msg_type = self.proto, self.msg_type
        for slot, scheduled in self.sends.due(now_ns):
            if state[slot] != OPEN:
                iv.msgs_send_failed += 1  # the user is supposed to be connected and sending
                continue
            if conns[slot].planned or slot in quiescing:
                continue  # closing as planned: its schedule ends here
            self.seq += 1
            if peer_mode:
                peer = peer_of(slot)
                if state[peer] != OPEN or conns[peer].planned or peer in quiescing:
                    iv.msgs_skipped += 1  # the partner is not connected (yet): nothing to measure
                    continue
                to = (self.uid_prefix + str(peer)).encode()
                if proto is None:
                    data = frames.send_frame(to, self.seq, scheduled, body)
                else:
                    conn = conns[slot]
                    data = conn.acts.send(to, conn.user, self.seq, scheduled, body, b"")
                if pending_in is not None:
                    pending_in[peer] += 1
                    pending_out[slot] += 1
            elif proto is None:
                data = frames.echo_frame(self.seq, scheduled, body)
            else:
                conn = conns[slot]
                data = conn.acts.echo(conn.user, conn.user, self.seq, scheduled, body, b"")
                if pending_in is not None:  # on its way back to this user: its close waits for it
                    pending_in[slot] += 1
            conns[slot].transport.send(msg_type, data)
            iv.msgs_sent += 1
            iv.bytes_sent += len(data)
            self.totals_sent += 1
        self.fire_beats(now_ns)

    def fire_typed(self, now_ns: int) -> None:
        """fire_sends under a traffic model: each due send has its type (in the id's low bits) and size."""
        slots = self.slots
        iv, state, conns, body, peer_of = self.iv, slots.state, slots.conns, self.body, slots.peer_of
        quiescing, pending_in, pending_out = slots.quiescing, self.pending_in, self.pending_out
        by_type, to_group, group_of, group_quiet = iv.by_type, self.type_to_group, self.group_of, self.group_quiet
        for slot, scheduled, kind, size in self.sends.due(now_ns):
            if state[slot] != OPEN:
                iv.msgs_send_failed += 1  # the user is supposed to be connected and sending
                continue
            if conns[slot].planned or slot in quiescing:
                continue  # closing as planned: its schedule ends here
            self.seq += 1
            mid = self.seq << TYPE_BITS | kind
            c = by_type[kind]
            if to_group[kind]:
                if group_quiet is not None:
                    if group_quiet.quiet(slot):
                        iv.msgs_skipped += 1  # a member is leaving: nothing may be on its way to it
                        continue
                    group_quiet.sent(slot)
                data = frames.gsend_frame(self.group_name(group_of[slot]).encode(), mid, scheduled, body[:size])
                self.group_unanswered += 1
            else:
                peer = peer_of(slot)
                if state[peer] != OPEN or conns[peer].planned or peer in quiescing:
                    iv.msgs_skipped += 1  # the partner is not connected (yet): nothing to measure
                    continue
                data = frames.send_frame((self.uid_prefix + str(peer)).encode(), mid, scheduled, body[:size])
                c[1] += 1
                self.totals_owed += 1
                if pending_in is not None:
                    pending_in[peer] += 1
                    pending_out[slot] += 1
            conns[slot].transport.send(WSMsgType.TEXT, data)
            c[0] += 1
            iv.msgs_sent += 1
            iv.bytes_sent += len(data)
            self.totals_sent += 1
        self.fire_beats(now_ns)

    def fire_beats(self, now_ns: int) -> None:
        high, last = self.slots.high, self.beat_last_ns
        self.beat_last_ns = now_ns
        if not high or not last:
            return
        step = high * (now_ns - last) / self.beat_period_ns
        start = int(self.beat_pos)
        self.beat_pos += min(step, high)
        end = int(self.beat_pos)
        state, conns, iv = self.slots.state, self.slots.conns, self.iv
        proto = self.proto
        for i in range(start, end):
            slot = i % high
            if state[slot] == OPEN and not conns[slot].planned:
                if proto is None:
                    conns[slot].transport.send(TEXT, frames.ping_frame(now_ns))
                else:
                    beat = conns[slot].acts.heartbeat
                    if beat is None:  # the protocol has no application heartbeat
                        continue
                    conns[slot].transport.send(self.msg_type, beat(b"", b"", 0, now_ns, b"", b""))
                iv.pings += 1
        if self.beat_pos >= high:
            self.beat_pos -= high * (self.beat_pos // high)

    # --- control messages (loadgen.agent.control) ----------------------------------------------------------
    def apply_control(self, control) -> None:
        """This worker's share of a control message (loadgen.plan.control.Control): new stages from now on,
        continuing from the current target; a new rate; or a ramp down to 0 within N s, after which the run
        ends as after its last stage."""
        now = time.monotonic_ns()
        elapsed = (now - self.t0_ns) / 1e9 if self.t0_ns is not None else 0.0
        stages = control.stages
        if control.ramp_down_s is not None:
            stages = [Stage(control.ramp_down_s, 0)]
        if stages is not None:
            if self.model is not None:  # a traffic model's users and groups are drawn for the plan's peak
                stages = [Stage(s.duration_s, min(s.target, self.n)) for s in stages]
            self.profile = Profile(stages, begin=self.target)
            self.profile_from_s = elapsed
            self.slots.grow(self.profile.peak)
            self.n = self.slots.n
        if control.rate is not None and not self.closed_loop and self.model is None:
            if not self.stopping:
                slots = self.slots
                self.sends.set_rate(control.rate, [s for s in range(slots.high) if slots.sendable(s)], now)

    def _read_inbox(self) -> None:
        try:
            while self.inbox.poll():
                self.apply_control(self.inbox.recv())
        except (EOFError, OSError):  # the agent process is gone: the parent check stops the load
            asyncio.get_running_loop().remove_reader(self.inbox.fileno())

    # --- the run -----------------------------------------------------------------------------------
    def sync(self) -> None:
        """Bring iv and the totals up to date with the C closed loop's counters."""
        if self.echo_stats is not None:
            self.echo_stats.drain_into(self.iv, self)

    def in_flight(self) -> bool:
        """Messages sent and neither received nor answered with an error yet (under a traffic model: owed
        deliveries not yet received or refused, or group messages not yet acked)."""
        self.sync()
        if self.model is not None:
            return self.totals_received + self.totals_errors < self.totals_owed or self.group_unanswered > 0
        return self.totals_received + self.totals_errors < self.totals_sent

    def flush(self, t0_ns: int, phase: str, target: int) -> None:
        self.sync()
        now = time.time()
        elapsed = (time.monotonic_ns() - t0_ns) / 1e9
        lag_ms, self.send_lag_ns = self.send_lag_ns // 1_000_000, 0
        row = self.iv.row(ts=round(now, 3), agent=self.plan.agent_id, worker=self.index,
                          elapsed_s=round(elapsed, 3), phase=phase, target=target,
                          active=self.slots.active, connecting=self.slots.connecting, send_lag_ms=lag_ms)
        self.iv.reset()
        self.emit(("row", row))
        if self.pairs is not None:
            rows = self.pairs.rows(ts=row["ts"], agent=self.plan.agent_id, worker=self.index)
            if rows:
                self.emit(("pairs", rows))

    async def run(self, own_process: bool = True) -> None:
        """own_process: a forked worker (stops on SIGTERM/SIGINT and when the agent process dies);
        False: worker 0 inside the agent process, whose supervisor handles signals and calls _stop."""
        loop = asyncio.get_running_loop()
        if own_process:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop)
        parent = os.getppid() if own_process else None
        if self.inbox is not None:
            loop.add_reader(self.inbox.fileno(), self._read_inbox)
        if self.plan.start_at:
            delay = self.plan.start_at - time.time()
            if delay > 0.002:
                await asyncio.sleep(delay - 0.002)
            # the loop's timers have millisecond resolution and may fire early: never start before the instant
            while time.time() < self.plan.start_at:
                await asyncio.sleep(0)
        started = time.time()
        self.emit(("started", self.index, started))
        self.t0_ns = t0 = time.monotonic_ns()
        if self.model is not None:
            self.sends.t0_ns = t0  # bursts and the spike are timed from the run's start
        next_flush = t0 + 1_000_000_000
        next_quiet_check = t0
        target = 0
        while not self.stopping:
            now = time.monotonic_ns()
            profile = self.profile  # a control message may replace it (apply_control)
            elapsed = (now - t0) / 1e9 - self.profile_from_s
            if elapsed >= profile.total_s:
                if now >= next_flush:  # the last planned second gets its own row, not the drain's
                    self.flush(t0, profile.phase_at(profile.total_s - 0.5), target)
                    next_flush += 1_000_000_000
                break
            self.target = target = profile.target_at(elapsed)
            self.adjust(target, now)
            if now >= next_quiet_check:  # O(quiescing slots): at the tick, not at every due send
                if self.model is not None and self.churn is not None:
                    self.churn_due(now, elapsed)
                self.end_quiet_periods(now)
                next_quiet_check = now + TICK_NS
            self.fire_sends(now)
            if now >= next_flush:
                # the phase of the second this row counts (its middle), not of the instant it is written:
                # the row that ends a ramp counts ramp connects
                self.flush(t0, profile.phase_at(max(0.0, elapsed - 0.5)), target)
                next_flush += 1_000_000_000
                if parent is not None and os.getppid() != parent:
                    self.stopping = True  # the agent process died: never run load unattended
            nxt = min(next_flush, now + TICK_NS)
            due = self.sends.next_due_ns()
            if due is not None:
                nxt = min(nxt, due)
            await asyncio.sleep(max(0.0, (nxt - time.monotonic_ns()) / 1e9))
            late = time.monotonic_ns() - nxt  # woken late: a worker short of CPU (send_lag_ms)
            if late > self.send_lag_ns:
                self.send_lag_ns = late
        # drain: no new sends; wait for in-flight messages, then close everything as planned
        self.sending = False
        if self.echo_stats is not None:
            self.echo_stats.sending = False
        self.sends = OpenSchedule(0)
        deadline = time.monotonic_ns() + int(self.plan.drain_s * 1e9)
        while self.in_flight() and time.monotonic_ns() < deadline and self.slots.active:
            await asyncio.sleep(0.02)
            if time.monotonic_ns() >= next_flush:
                self.flush(t0, "drain", 0)
                next_flush += 1_000_000_000
        self.stopping = True
        now = time.monotonic_ns()
        slots = self.slots
        for slot in range(slots.high):  # slots with messages still in flight quiesce first
            if slots.state[slot] == OPEN:
                self._close(slot, now)
        close_deadline = now + slots.quiesce_ns + 2_000_000_000  # quiet periods under way too
        while (slots.active or slots.connecting) and time.monotonic_ns() < close_deadline:
            await asyncio.sleep(0.02)
            self.end_quiet_periods(time.monotonic_ns())
        for conn in slots.close_unanswered():  # sessions of connections that did not close in time
            self.on_disconnected(conn)
        self.flush(t0, "drain", 0)
        self.emit(("done", self.index))

    def _stop(self) -> None:
        self.stopping = True


def event_loop_runner():
    """uvloop's run when installed (the agent's measured choice), else asyncio's."""
    try:
        import uvloop
        return uvloop.run
    except ImportError:
        return asyncio.run


def tune_gc() -> None:
    """The collector for a process about to run a worker (forked or worker 0 in the agent process)."""
    # What start-up allocated (or the agent process left to a forked worker, copy-on-write) is never
    # traversed again (measured: ~5 MB less private memory per forked worker).
    gc.freeze()
    # Opening connections allocates many long-lived objects: at the default thresholds (700, 10, 10)
    # the collector took 13 % of the CPU of opening 10,000 connections (perf), at these 3 %.
    gc.set_threshold(20_000, 20, 20)


def worker_main(plan, index: int, profile, conn, inbox=None) -> None:
    """Entry point of a worker process; `conn` is its pipe to the agent process, `inbox` the agent's to it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent process decides when workers stop
    tune_gc()

    def emit(msg) -> None:
        try:
            conn.send(msg)
        except (BrokenPipeError, OSError):
            os._exit(3)  # the agent process is gone: stop the load at once

    try:
        event_loop_runner()(Worker(plan, index, profile, emit, inbox).run())
    except Exception as exc:
        emit(("error", index, f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1)
