"""When a user's messages are due: constant or Poisson arrivals at a mean rate, modulated by bursts and a spike.

Time is in seconds since the run's start. The rate at time t is rate x burst(t) x spike(t), piecewise constant;
the next send after t is where the integrated rate has grown by one gap (1 for constant arrivals, an exponential
draw for Poisson): time rescaling, so bursts compress gaps without changing how gaps are drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Burst:
    """x `multiplier` for `for_s` seconds every `every_s` seconds, the first at `start_s`."""
    every_s: float
    for_s: float
    multiplier: float
    start_s: float = 0.0

    def at(self, t: float) -> tuple[float, float]:
        """(multiplier at t, the next time it changes)."""
        if t < self.start_s:
            return 1.0, self.start_s
        k, into = divmod(t - self.start_s, self.every_s)
        begin = self.start_s + k * self.every_s
        if into < self.for_s:
            return self.multiplier, begin + self.for_s
        return 1.0, begin + self.every_s


@dataclass(frozen=True)
class Spike:
    """A one-off x `multiplier` for `for_s` seconds from `at_s`."""
    at_s: float
    for_s: float
    multiplier: float

    def at(self, t: float) -> tuple[float, float]:
        if t < self.at_s:
            return 1.0, self.at_s
        if t < self.at_s + self.for_s:
            return self.multiplier, self.at_s + self.for_s
        return 1.0, math.inf


class Arrivals:
    def __init__(self, rate: float, poisson: bool, burst: Burst | None = None, spike: Spike | None = None) -> None:
        self.rate, self.poisson = rate, poisson
        self.modulators = [m for m in (burst, spike) if m is not None]

    def multiplier(self, t: float) -> tuple[float, float]:
        """(rate multiplier at t, when it next changes)."""
        mult, change = 1.0, math.inf
        for m in self.modulators:
            x, nxt = m.at(t)
            mult *= x
            change = min(change, nxt)
        return mult, change

    def gap(self, u: float) -> float:
        """A gap in units of mean gaps, from a uniform draw u in (0, 1)."""
        return -math.log(u) if self.poisson else 1.0

    def first(self, t: float, u: float) -> float:
        """A user's first send after it connects at t: a random phase within one gap (constant arrivals), or one
        exponential gap (Poisson, memoryless)."""
        return self.advance(t, self.gap(u) if self.poisson else u)

    def advance(self, t: float, work: float) -> float:
        """The time after t by which the modulated rate has offered `work` messages."""
        if self.rate <= 0:
            return math.inf
        if not self.modulators:
            return t + work / self.rate
        remaining = work / self.rate
        for _ in range(10_000):  # bounded: a change point per window; far fewer in practice
            mult, change = self.multiplier(t)
            if mult > 0 and (change - t) * mult >= remaining:
                return t + remaining / mult
            if change == math.inf:
                return math.inf
            remaining -= (change - t) * mult
            t = change
        return t + remaining
