"""Open-model send schedule, apart from I/O.

Each active user sends at a fixed rate on its own phase. A send's scheduled time is fixed when the
schedule is made, not when the event loop gets round to it: latency is measured from the scheduled
time, so a late loop or a slow gateway shows up as latency instead of silently lowering the offered
load (no coordinated omission).
"""

from __future__ import annotations

import heapq
import random


class LazyHeap:
    """Due times of many users in one heap of (due_ns, user, generation).

    Removing a user is lazy: its heap entry is skipped when popped (generation check), so add and
    remove are O(log n) and idle users cost one tuple each. The subclasses say when each user is due.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int]] = []  # (due_ns, user, generation)
        self._generation: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._generation)

    def __contains__(self, user: int) -> bool:
        return user in self._generation

    def _start(self, user: int, first_ns: int) -> None:
        """(Re)start `user`'s sends at first_ns; an entry of its earlier generation is skipped when popped."""
        gen = self._generation.get(user, -1) + 1
        self._generation[user] = gen
        heapq.heappush(self._heap, (first_ns, user, gen))

    def remove(self, user: int) -> None:
        self._generation.pop(user, None)

    def next_due_ns(self) -> int | None:
        heap = self._heap
        while heap and self._generation.get(heap[0][1]) != heap[0][2]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None


class OpenSchedule(LazyHeap):
    """Due times for many users at `rate` sends per second each."""

    def __init__(self, rate_per_s: float, rng: random.Random | None = None) -> None:
        super().__init__()
        self.period_ns = int(1e9 / rate_per_s) if rate_per_s > 0 else 0
        self._rng = rng or random.Random()

    def add(self, user: int, now_ns: int) -> None:
        """Start sending for `user`: first send at a random phase within one period."""
        if not self.period_ns:
            return
        self._start(user, now_ns + int(self._rng.random() * self.period_ns))

    def set_rate(self, rate_per_s: float, users, now_ns: int) -> None:
        """A new rate from now on (a control message). Users already scheduled keep their next due time and
        send at the new period after it; from or to rate 0 the schedule is rebuilt for `users` (the users
        that are to send)."""
        was = self.period_ns
        self.period_ns = int(1e9 / rate_per_s) if rate_per_s > 0 else 0
        if not self.period_ns:
            self._heap.clear()
            self._generation.clear()
        elif not was:
            for user in users:
                self.add(user, now_ns)

    def due(self, now_ns: int, limit: int = 1 << 30):
        """Yield (user, scheduled_ns) for every send due by now_ns, each at its own scheduled time."""
        heap, generation, period = self._heap, self._generation, self.period_ns
        n = 0
        while heap and heap[0][0] <= now_ns and n < limit:
            due_ns, user, gen = heap[0]
            if generation.get(user) != gen:
                heapq.heappop(heap)
                continue
            heapq.heapreplace(heap, (due_ns + period, user, gen))
            n += 1
            yield user, due_ns
