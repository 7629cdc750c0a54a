"""Per-connection abuse limits, apart from I/O: floods and repeated bad frames close the offender."""

from __future__ import annotations


class AbuseGuard:
    """Token bucket for frames per second, plus a budget of bad frames per minute.

    `allow_frame(now)` is False when the connection exceeds its burst; `bad_frame(now)` is
    False once the connection has sent too many bad frames recently. Either means: close it.
    """

    __slots__ = ("rate", "burst", "tokens", "last", "bad_limit", "bad_window_start", "bad_count")

    def __init__(self, rate: float, burst: float, bad_limit: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = 0.0
        self.bad_limit = bad_limit
        self.bad_window_start = 0.0
        self.bad_count = 0

    def allow_frame(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def bad_frame(self, now: float) -> bool:
        if now - self.bad_window_start > 60.0:
            self.bad_window_start = now
            self.bad_count = 0
        self.bad_count += 1
        return self.bad_count <= self.bad_limit
