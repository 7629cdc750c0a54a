"""A group member's planned close, apart from I/O (a traffic model's groups, peer mode's quiet period).

A group message owes a delivery to every other member the gateway counted (the ack's n). A member that closes
while one is on its way to it (e.g. in a gateway cluster's Kafka) loses it, and a sender that closes before its
ack receives deliveries nobody counted as owed. A member that joins while one is on its
way to its node receives a delivery nobody counted. So a member joins and leaves only when its group is quiet:
no member sends to the group until every group message of the group has been acked or refused and every delivery
owed has arrived; then the `join` (after the connect) or `leave` (a planned close, before the close frame) goes,
which the gateway answers (`joined`, `left`) once every node counts the change (docs/protocol.md), and the group
speaks again. A worker's groups are its own (loadgen.traffic.groups): every member's
sends, acks and deliveries pass through this worker, so the counts per group are complete.
"""

from __future__ import annotations

from array import array

STAYING, JOINING, JOIN_SENT, LEAVING, LEAVE_SENT = range(5)
JOIN, LEAVE = "join", "leave"


class GroupQuiet:
    def __init__(self, group_of: array, n_groups: int, bound_ns: int = 0) -> None:
        self.group_of = group_of  # slot -> its group, or < 0: in none
        # a join or leave waits for its group's idle at most this long (the quiet period, --close-quiesce): a
        # delivery that never arrives (its member dropped) is lost, and counted so by the report, not waited for
        # for ever with the group silent; 0: no bound
        self.bound_ns = bound_ns
        self.since: dict[int, int] = {}  # waiting slot -> when to_send first saw it waiting
        self.written_off = 0  # deliveries and acks given up on by that bound
        self.unacked = array("q", bytes(8 * n_groups))  # group messages neither acked nor refused yet
        self.owed = array("q", bytes(8 * n_groups))  # deliveries the acks' n call for
        self.arrived = array("q", bytes(8 * n_groups))  # deliveries received by members
        self.changing = array("I", bytes(4 * n_groups))  # members joining or leaving: the group is quiet
        self.state = bytearray(len(group_of))  # slot -> STAYING (a member, or in no group), JOINING, ...
        self.waiting: set[int] = set()  # slots JOINING or LEAVING: their frame goes once their group is idle
        self.close_after_join: set[int] = set()  # JOIN_SENT slots whose planned close began meanwhile

    # --- the send and receive paths --------------------------------------------------------------------
    def quiet(self, slot: int) -> bool:
        """The slot's group is not to be sent to now (a member is joining or leaving). Members only."""
        return self.changing[self.group_of[slot]] > 0

    def sent(self, slot: int) -> None:
        self.unacked[self.group_of[slot]] += 1

    def acked(self, slot: int, n: int) -> None:
        g = self.group_of[slot]
        if g >= 0:
            self.unacked[g] -= 1
            self.owed[g] += n

    def refused(self, slot: int) -> None:
        g = self.group_of[slot]
        if g >= 0:
            self.unacked[g] -= 1

    def delivered(self, slot: int) -> None:
        g = self.group_of[slot]
        if g >= 0:
            self.arrived[g] += 1

    def idle(self, g: int) -> bool:
        """Nothing of the group is in flight: every message acked or refused, every owed delivery arrived."""
        return self.unacked[g] <= 0 and self.arrived[g] >= self.owed[g]

    # --- joining (after each connect) and leaving (a planned close) -----------------------------------
    def _change(self, slot: int, state: int) -> None:
        if self.state[slot] == STAYING:
            self.changing[self.group_of[slot]] += 1
        self.state[slot] = state
        self.waiting.add(slot)

    def _settled(self, slot: int) -> None:
        if self.state[slot] != STAYING:
            self.state[slot] = STAYING
            self.changing[self.group_of[slot]] -= 1
        self.waiting.discard(slot)
        self.since.pop(slot, None)
        self.close_after_join.discard(slot)

    def opened(self, slot: int) -> None:
        """A member connected (not a member of its group yet): it joins once the group is quiet and idle."""
        if self.group_of[slot] >= 0:
            self._change(slot, JOINING)

    def begin(self, slot: int) -> None:
        """A planned close of the slot begins: a member leaves its group first."""
        state = self.state[slot]
        if self.group_of[slot] < 0:
            return
        if state == STAYING:
            self._change(slot, LEAVING)
        elif state == JOINING:  # never joined: nothing to leave
            self._settled(slot)
        elif state == JOIN_SENT:
            self.close_after_join.add(slot)

    def busy(self, slot: int) -> bool:
        """The slot may not close yet: it is joining or has not left its group."""
        return self.state[slot] != STAYING

    def to_send(self, now_ns: int = 0) -> list[tuple[int, str]]:
        """(slot, JOIN or LEAVE) for the waiting slots whose group is idle, or has kept them waiting bound_ns:
        their frames are to go now (a group's books are written off when its wait ran out)."""
        out = []
        for slot in list(self.waiting):
            g = self.group_of[slot]
            since = self.since.setdefault(slot, now_ns)
            if not self.idle(g) and self.bound_ns and now_ns - since >= self.bound_ns:
                self.written_off += max(0, self.unacked[g]) + max(0, self.owed[g] - self.arrived[g])
                self.unacked[g], self.owed[g] = 0, self.arrived[g]
            if self.idle(g):
                self.waiting.discard(slot)
                self.since.pop(slot, None)
                joining = self.state[slot] == JOINING
                self.state[slot] = JOIN_SENT if joining else LEAVE_SENT
                out.append((slot, JOIN if joining else LEAVE))
        return out

    def joined(self, slot: int) -> None:
        """The gateway answered the join: every node counts the member."""
        if self.state[slot] != JOIN_SENT:
            return
        if slot in self.close_after_join:
            self.close_after_join.discard(slot)
            self.state[slot] = LEAVING  # still counted in `changing`: the group stays quiet
            self.waiting.add(slot)
        else:
            self._settled(slot)

    def left(self, slot: int) -> None:
        """The gateway answered the leave: the group may speak again."""
        if self.state[slot] == LEAVE_SENT:
            self._settled(slot)

    def ended(self, slot: int) -> None:
        """The slot's connection ended (closed or dropped): whatever it was doing is over."""
        self._settled(slot)
