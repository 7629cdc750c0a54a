"""The agent's send schedule under a traffic model (open model, apart from I/O).

Like loadgen.agent.schedule.OpenSchedule, a LazyHeap of (due_ns, user, generation); each due
send also carries its message type and size. A user's n-th message (its gap, type and size) is a keyed draw of
(seed, user, n): the same seed gives the same schedule. Times are fixed when drawn, and latency is measured
from them (no coordinated omission); bursts and the spike compress the gaps (loadgen.traffic.arrivals).
"""

from __future__ import annotations

import bisect
import heapq
import math
from array import array

from loadgen.agent.schedule import LazyHeap
from loadgen.traffic import keyed


class TrafficSchedule(LazyHeap):
    def __init__(self, model, rate_per_s: float, keys: list[int], t0_ns: int = 0,
                 in_group: bytearray | None = None) -> None:
        """keys: a keyed.user_key per user (slot); in_group: 1 for users that are in a group (they may draw group
        types; the others draw from the mix without them)."""
        super().__init__()
        self.model = model
        self.arrivals = model.arrivals(rate_per_s)
        self.keys = keys
        self.seq = array("Q", bytes(8 * len(keys)))
        self.t0_ns = t0_ns
        self.in_group = in_group
        self.sizes = [t.size for t in model.types]

    def _ns(self, t: float) -> int:
        return self.t0_ns + int(t * 1e9)

    def _t(self, ns: int) -> float:
        return (ns - self.t0_ns) / 1e9

    def add(self, user: int, now_ns: int) -> None:
        if self.arrivals.rate <= 0:
            return
        u = keyed.message_draws(self.keys[user], self.seq[user])[0]
        first = self.arrivals.first(self._t(now_ns), u)
        if first != float("inf"):
            self._start(user, self._ns(first))
        else:  # no send ahead: an entry of its earlier session must not fire either
            self._generation[user] = self._generation.get(user, -1) + 1

    def draw(self, user: int, seq: int) -> tuple[int, int]:
        """(type index, size in bytes) of a user's seq-th message."""
        _gap, u_type, u_size = keyed.message_draws(self.keys[user], seq)
        groups = self.in_group
        cum = self.model.cum if groups is None or groups[user] else self.model.cum_peer
        kind = bisect.bisect_left(cum, u_type)
        return kind, int(self.sizes[kind].sample(u_size) + 0.5)

    def due(self, now_ns: int, limit: int = 1 << 30):
        """Yield (user, scheduled_ns, type index, size) for every send due by now_ns."""
        heap, generation, seq = self._heap, self._generation, self.seq
        arrivals, keys, t0 = self.arrivals, self.keys, self.t0_ns
        cum_all, cum_peer, groups, sizes = self.model.cum, self.model.cum_peer, self.in_group, self.sizes
        poisson, draws, log, bisect_left = arrivals.poisson, keyed.message_draws, math.log, bisect.bisect_left
        n = 0
        while heap and heap[0][0] <= now_ns and n < limit:
            due_ns, user, gen = heap[0]
            if generation.get(user) != gen:
                heapq.heappop(heap)
                continue
            k = seq[user] + 1
            seq[user] = k
            u_gap, u_type, u_size = draws(keys[user], k)  # the same draws as draw(user, k)
            nxt = arrivals.advance((due_ns - t0) / 1e9, -log(u_gap) if poisson else 1.0)
            if nxt == math.inf:
                heapq.heappop(heap)
            else:
                heapq.heapreplace(heap, (t0 + int(nxt * 1e9), user, gen))
            n += 1
            kind = bisect_left(cum_all if groups is None or groups[user] else cum_peer, u_type)
            yield user, due_ns, kind, int(sizes[kind].sample(u_size) + 0.5)
