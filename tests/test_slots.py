"""The worker's slot states apart from picows (loadgen.agent.slots): no sockets, no event loop."""

from __future__ import annotations

import random
from types import SimpleNamespace

from loadgen.agent.slots import CONNECTING, DOWN, IDLE, NEVER_NS, OPEN, Slots


def open_slots(slots: Slots, count: int, now_ns: int = 0) -> list:
    conns = []
    for slot in slots.to_open(count, now_ns, max_connecting=1000):
        conn = SimpleNamespace(planned=False)
        slots.opened(slot, conn)
        conns.append(conn)
    return conns


def test_opens_lowest_slots_first_within_the_handshake_budget():
    slots = Slots(10, random.Random(1))
    assert slots.to_open(6, 0, max_connecting=4) == [0, 1, 2, 3]
    assert slots.connecting == 4 and slots.held() == 4 and all(slots.state[s] == CONNECTING for s in range(4))
    assert slots.to_open(6, 0, max_connecting=4) == []  # the budget is spent until handshakes end
    slots.opened(0, SimpleNamespace(planned=False))
    assert slots.to_open(6, 0, max_connecting=4) == [4]
    assert slots.active == 1 and slots.held() == 5


def test_a_dropped_slot_reconnects_after_its_backoff_before_any_new_slot():
    slots = Slots(10, random.Random(1), backoff_base_s=0.5, backoff_cap_s=30.0)
    conns = open_slots(slots, 3)
    assert slots.ended(1, conns[1], now_ns=1_000) == "dropped"
    assert slots.state[1] == DOWN and slots.held() == 3 and 1_000 <= slots.retry_at[1] <= 1_000 + 1_000_000_000
    assert slots.ended(1, conns[1], now_ns=2_000) is None  # accounted for once
    assert slots.to_open(4, slots.retry_at[1] - 1, max_connecting=10) == [3]  # still backing off: a new slot
    assert slots.to_open(4, slots.retry_at[1], max_connecting=10) == [1]


def test_reconnect_none_never_retries():
    slots = Slots(4, random.Random(1), reconnect="none")
    slots.to_open(1, 0, max_connecting=4)
    slots.open_failed(0, 0)
    assert slots.retry_at[0] == NEVER_NS and slots.to_open(1, 10**15, max_connecting=4) == []


def test_ramp_down_gives_up_down_slots_then_closes_the_newest_open_ones():
    slots = Slots(8, random.Random(1))
    conns = open_slots(slots, 6)
    slots.ended(2, conns[2], now_ns=0)  # DOWN
    given_up, closes = slots.to_close(3)
    assert given_up == [2] and slots.state[2] == IDLE
    assert closes == [5, 4]
    assert all(slots.begin_close(s, 0) for s in closes)  # nothing in flight (no quiet period): close now
    assert slots.closing == 2 and slots.held() == 3
    for s in closes:
        conns[s].planned = True
        assert slots.ended(s, conns[s], now_ns=0) == "closed"
    assert slots.closing == 0 and slots.active == 3 and slots.to_open(4, 0, 10) == [2]  # IDLE slots reused first


def test_a_closing_slot_with_messages_in_flight_quiesces_until_they_are_answered_or_time_is_up():
    slots = Slots(4, random.Random(1), quiesce_ns=10_000)
    conns = open_slots(slots, 4)
    slots.pending_in[3] = 1  # a message to slot 3 is on its way
    assert not slots.begin_close(3, now_ns=100) and 3 in slots.quiescing and slots.closing == 1
    assert not slots.sendable(3) and slots.sendable(2)
    assert not slots.begin_close(3, now_ns=100)  # already closing: counted once
    assert slots.closing == 1 and slots.quiet_periods_over(200) == []
    slots.pending_in[3] = 0
    assert slots.quiet_periods_over(200) == [conns[3]] and not slots.quiescing
    slots.pending_out[2] = 1
    slots.begin_close(2, now_ns=100)
    assert slots.quiet_periods_over(10_099) == [] and slots.quiet_periods_over(10_100) == [conns[2]]


def test_a_slot_dropped_in_its_quiet_period_goes_idle_not_down():
    slots = Slots(2, random.Random(1), quiesce_ns=10_000)
    conns = open_slots(slots, 2)
    slots.pending_out[1] = 1
    slots.begin_close(1, 0)
    assert slots.ended(1, conns[1], now_ns=5) == "left"
    assert slots.state[1] == IDLE and not slots.down and slots.closing == 0 and slots.pending_out[1] == 0


def test_at_the_end_every_open_connection_counts_as_a_planned_close_once():
    slots = Slots(3, random.Random(1), quiesce_ns=10_000)
    conns = open_slots(slots, 3)
    slots.pending_in[0] = 1
    slots.begin_close(0, 0)  # quiescing: in `closing` already
    left = slots.close_unanswered()
    assert left == conns and all(c.planned for c in conns) and slots.closing == 3 and not slots.quiescing
    assert [slots.ended(s, c, 0) for s, c in enumerate(conns)] == ["closed"] * 3
    assert slots.active == 0 and slots.closing == 0 and slots.state[0] == IDLE and slots.state[2] != OPEN
