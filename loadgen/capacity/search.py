"""Which load to try next, apart from I/O: climb until a step fails, then bisect between the last good and the
first bad load (a bounded number of extra steps). The knee is the highest load whose step passed."""

from __future__ import annotations

from loadgen.plan.capacity import CapacityPlan


class Search:
    def __init__(self, plan: CapacityPlan) -> None:
        self.plan = plan
        self.climb = plan.climb()
        self.tried: list[tuple[float, bool]] = []
        self.refined = 0

    @property
    def knee(self) -> float | None:
        """The highest load whose step passed below the lowest failing one."""
        bad = self.first_bad
        good = [load for load, ok in self.tried if ok and (bad is None or load < bad)]
        return max(good) if good else None

    @property
    def first_bad(self) -> float | None:
        bad = [load for load, ok in self.tried if not ok]
        return min(bad) if bad else None

    def record(self, load: float, passed: bool) -> None:
        self.tried.append((load, passed))

    def next_load(self) -> float | None:
        """The next step's load, or None when the search is over."""
        if not self.tried:
            return self.climb[0]
        bad = self.first_bad
        if bad is None:  # still climbing
            higher = [load for load in self.climb if load > self.tried[-1][0]]
            return higher[0] if higher else None
        if self.refined >= self.plan.refine:
            return None
        mid = self.plan.midpoint(self.knee or 0.0, bad)
        if mid is None or mid in [load for load, _ in self.tried]:
            return None
        self.refined += 1
        return mid

    def resolution(self) -> float | None:
        """How close the knee is to the first failing load (the search's precision)."""
        if self.first_bad is None:
            return None
        return self.first_bad - (self.knee or 0.0)
