"""One worker's connection slots apart from picows: states, reconnect backoff, planned closes and their quiet
periods, and the per-slot in-flight counts that end a quiet period.

A slot is one user: IDLE (no connection, not wanted), CONNECTING (handshake under way), OPEN, or DOWN (dropped
or failed, waiting out its backoff). The worker does the I/O these decisions call for (open a connection, send a
close frame) and the measurements; its send and receive paths read and update the arrays here directly (no call
per message).
"""

from __future__ import annotations

import heapq
import random
from array import array

IDLE, CONNECTING, OPEN, DOWN = 0, 1, 2, 3
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.5, 30.0
NEVER_NS = 1 << 62  # retry time of a slot that is not to reconnect (--reconnect none)


def backoff_s(failures: int, rng: random.Random, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S) -> float:
    """Full-jitter exponential backoff, so a dropped gateway is not hit by a synchronized storm."""
    return rng.uniform(0, min(cap_s, base_s * (2 ** min(failures, 16))))


class Slots:
    """`conns[slot]` is whatever connection object the worker keeps for an OPEN slot; it needs a `planned`
    attribute (True once its close frame went out)."""

    def __init__(self, n: int, rng: random.Random, *, quiesce_ns: int = 0, reconnect: str = "backoff",
                 backoff_base_s: float = BACKOFF_BASE_S, backoff_cap_s: float = BACKOFF_CAP_S) -> None:
        self.n = n
        self.rng = rng
        self.reconnect, self.backoff_base_s, self.backoff_cap_s = reconnect, backoff_base_s, backoff_cap_s
        self.state = bytearray(n)
        self.conns: list = [None] * n
        self.failures = bytearray(n)
        self.retry_at = [0] * n  # monotonic ns before which a DOWN slot is not retried
        self.idle: list[int] = []  # heap of IDLE slots below high-water mark
        self.high = 0
        self.down: set[int] = set()
        self.active = 0
        self.connecting = 0
        self.closing = 0  # planned closes: quiescing, or waiting for the gateway's close reply
        # Churn (a traffic model's sessions, docs/traffic.md): slot -> ns of its pause after its session ends. A
        # churning slot closes as planned, then waits out its pause DOWN and reconnects; it stays held throughout,
        # so the target does not open another user in its place.
        self.churn_pause_ns: dict[int, int] = {}
        # Peer mode: a planned close first quiesces the pair (neither sends to the other) until nothing is in
        # flight to or from the closing user - every message to it received or refused, every message from it
        # acked or refused - or for at most this long. A message still in a gateway cluster's Kafka when the
        # close frame went out would be neither received nor refused: lost to the agent's accounting.
        self.quiesce_ns = quiesce_ns
        # slot -> (its connection, monotonic ns when the quiet period ends at the latest)
        self.quiescing: dict[int, tuple[object, int]] = {}
        # per slot, peer mode: messages to it not yet received or refused (the sender's error frame), and
        # messages from it not yet acked or refused; 8 bytes per slot
        self.pending_in = array("I", bytes(4 * n)) if quiesce_ns else None
        self.pending_out = array("I", bytes(4 * n)) if quiesce_ns else None
        # slot -> True while it may not close for another reason (a group member that has not left its group:
        # loadgen.agent.groupquiet); None: no such reason
        self.busy = None

    def grow(self, n: int) -> None:
        """Room for n slots (a control message raised the target above the plan's peak); never shrinks."""
        more = n - self.n
        if more <= 0:
            return
        self.n = n
        self.state.extend(bytes(more))
        self.conns.extend([None] * more)
        self.failures.extend(bytes(more))
        self.retry_at.extend([0] * more)
        if self.pending_in is not None:
            self.pending_in.extend([0] * more)
            self.pending_out.extend([0] * more)

    def peer_of(self, slot: int) -> int:
        """Peer mode: slot s and s^1 message each other (an odd last slot messages itself)."""
        peer = slot ^ 1
        return peer if peer < self.n else slot

    def held(self) -> int:
        """Connections that count toward the target: open (not closing or quiescing), connecting, or waiting
        to reconnect."""
        return self.active - self.closing + len(self.churn_pause_ns) + self.connecting + len(self.down)

    def sendable(self, slot: int) -> bool:
        """OPEN and not closing as planned (nor quiescing before it)."""
        return self.state[slot] == OPEN and not self.conns[slot].planned and slot not in self.quiescing

    # --- connecting ----------------------------------------------------------------------------------
    def to_open(self, target: int, now_ns: int, max_connecting: int) -> list[int]:
        """Slots to connect now (marked CONNECTING): dropped slots first (after their backoff), then new ones,
        lowest first, within the handshake budget."""
        out: list[int] = []
        if not (self.held() < target or self.down):
            return out
        budget = max_connecting - self.connecting
        for slot in [s for s in self.down if self.retry_at[s] <= now_ns][:max(budget, 0)]:
            self.down.discard(slot)
            self._connecting(slot, out)
            budget -= 1
        for _ in range(max(min(target - self.held(), budget), 0)):
            if self.idle:
                slot = heapq.heappop(self.idle)
            elif self.high < self.n:
                slot = self.high
                self.high += 1
            else:
                break
            self._connecting(slot, out)
        return out

    def _connecting(self, slot: int, out: list[int]) -> None:
        self.state[slot] = CONNECTING
        self.connecting += 1
        out.append(slot)

    def opened(self, slot: int, conn) -> None:
        self.connecting -= 1
        self.conns[slot] = conn
        self.state[slot] = OPEN
        self.failures[slot] = 0
        self.active += 1

    def open_failed(self, slot: int, now_ns: int) -> None:
        self.connecting -= 1
        self.mark_down(slot, now_ns)

    def mark_down(self, slot: int, now_ns: int) -> None:
        """A dropped or failed slot waits out its jittered backoff (or for good, with --reconnect none)."""
        self.state[slot] = DOWN
        self.failures[slot] = min(self.failures[slot] + 1, 255)
        if self.reconnect == "none":
            self.retry_at[slot] = NEVER_NS
        else:
            self.retry_at[slot] = now_ns + int(backoff_s(self.failures[slot], self.rng, self.backoff_base_s,
                                                         self.backoff_cap_s) * 1e9)
        self.down.add(slot)

    # --- closing -------------------------------------------------------------------------------------
    def to_close(self, target: int) -> tuple[list[int], list[int]]:
        """Above the target: (DOWN slots given up, now IDLE; OPEN slots to close as planned, newest first)."""
        excess = self.held() - target
        given_up: list[int] = []
        closes: list[int] = []
        if excess <= 0:
            return given_up, closes
        for slot in sorted(self.down, reverse=True)[:excess]:
            self.down.discard(slot)
            self.state[slot] = IDLE
            heapq.heappush(self.idle, slot)
            given_up.append(slot)
            excess -= 1
        slot = self.high - 1
        while excess > 0 and slot >= 0:
            if self.sendable(slot):
                closes.append(slot)
                excess -= 1
            slot -= 1
        return given_up, closes

    def begin_close(self, slot: int, now_ns: int, churn_pause_ns: int | None = None) -> bool:
        """A planned close of an OPEN slot: True when its close frame is to go now; False when it quiesces
        first (something is in flight to or from it) or is closing already. A quiescing slot counts in
        `closing` (not held). churn_pause_ns: the session ends by churn; the user returns after this pause."""
        conn = self.conns[slot]
        if conn is None or conn.planned or slot in self.quiescing:
            return False
        self.closing += 1
        if churn_pause_ns is not None:
            self.churn_pause_ns[slot] = churn_pause_ns
        if self.quiesce_ns and (self.pending_in[slot] or self.pending_out[slot] or
                                (self.busy is not None and self.busy(slot))):
            self.quiescing[slot] = (conn, now_ns + self.quiesce_ns)
            return False
        return True

    def quiet_periods_over(self, now_ns: int) -> list:
        """The quiescing slots' connections whose messages have all arrived or been answered, or whose time is
        up: their close frames are to go now. A message still in flight then is the agent's `lost`."""
        if not self.quiescing:
            return []
        pending_in, pending_out, busy = self.pending_in, self.pending_out, self.busy
        done = [slot for slot, (_, until) in self.quiescing.items()
                if now_ns >= until or not (pending_in[slot] or pending_out[slot] or (busy is not None and busy(slot)))]
        return [self.quiescing.pop(slot)[0] for slot in done]

    def ended(self, slot: int, conn, now_ns: int) -> str | None:
        """The connection of a slot went. Returns None when it was not the slot's current OPEN connection,
        'closed' (a planned close completed), 'left' (dropped in its quiet period: it was leaving anyway) or
        'dropped' (the slot is DOWN and will reconnect after its backoff)."""
        if self.conns[slot] is not conn or self.state[slot] != OPEN:
            return None
        self.conns[slot] = None
        self.active -= 1
        quiescing = self.quiescing.pop(slot, None) is not None
        if self.pending_in is not None:  # what was in flight to or from this session ends with it
            self.pending_in[slot] = self.pending_out[slot] = 0
        if conn.planned or quiescing:
            self.closing -= 1
            pause = self.churn_pause_ns.pop(slot, None)
            if pause is not None:  # back after its pause (no backoff: nothing failed)
                self.state[slot] = DOWN
                self.retry_at[slot] = now_ns + pause
                self.down.add(slot)
                return "churned"
            self.state[slot] = IDLE
            heapq.heappush(self.idle, slot)
            return "closed" if conn.planned else "left"
        self.mark_down(slot, now_ns)
        return "dropped"

    def close_unanswered(self) -> list:
        """At the very end: the OPEN connections still there, each now counted as a planned close."""
        out = []
        for slot in range(self.high):
            conn = self.conns[slot]
            if self.state[slot] == OPEN and conn is not None:
                if not conn.planned:
                    conn.planned = True
                    if self.quiescing.pop(slot, None) is None:  # a quiescing one is in `closing` already
                        self.closing += 1
                self.churn_pause_ns.pop(slot, None)
                out.append(conn)
        return out
