"""k6-style durations and stages ("1m30s", "1m:10000"), and the connection target over time."""

from __future__ import annotations

import re
from dataclasses import dataclass

from loadgen.errors import UsageError

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION_S = 7 * 24 * 3600.0


def parse_duration(text: str, what: str = "duration") -> float:
    """'90s', '1m30s', '1h', '500ms' or bare seconds '45' -> seconds."""
    s = str(text).strip()
    try:
        seconds = float(s)
    except ValueError:
        pos, seconds = 0, 0.0
        for m in _PART.finditer(s):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNIT_S[m.group(2)]
            pos = m.end()
        if pos != len(s) or not s:
            raise UsageError(f"{what} {text!r} is not a duration (examples: 30s, 1m30s, 2h)") from None
    if seconds < 0 or seconds != seconds or seconds > MAX_DURATION_S:
        raise UsageError(f"{what} {text!r} is out of range (0 to 7 days)")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = round(seconds, 3)
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    out = (f"{h:g}h" if h else "") + (f"{m:g}m" if m else "") + (f"{s:g}s" if s or not (h or m) else "")
    return out


@dataclass(frozen=True)
class Stage:
    duration_s: float
    target: int

    def __str__(self) -> str:
        return f"{format_duration(self.duration_s)}:{self.target}"


MAX_TARGET = 10_000_000


def parse_stage(text: str) -> Stage:
    duration, sep, target = str(text).partition(":")
    if not sep:
        raise UsageError(f"stage {text!r} must be DURATION:TARGET (example: 1m:10000)")
    try:
        count = int(target.strip())
    except ValueError:
        raise UsageError(f"stage {text!r}: target {target!r} is not a whole number") from None
    if count < 0 or count > MAX_TARGET:
        raise UsageError(f"stage {text!r}: target must be between 0 and {MAX_TARGET:,}")
    return Stage(parse_duration(duration, f"stage {text!r} duration"), count)


class Profile:
    """Connection target over time: linear ramps between stage targets, starting from 0 (as k6), or from
    `begin` for stages that continue a running load (a control message's, loadgen.plan.control)."""

    def __init__(self, stages: list[Stage], begin: int | None = None) -> None:
        if not stages:
            raise UsageError("a plan needs at least one stage")
        if sum(s.duration_s for s in stages) <= 0:
            raise UsageError("the stages add up to zero seconds")
        if begin is None and max(s.target for s in stages) <= 0:
            raise UsageError("every stage targets 0 connections: nothing to test")
        self.stages = list(stages)
        self.begin = begin or 0
        self.total_s = sum(s.duration_s for s in stages)
        self.peak = max([s.target for s in stages] + [self.begin])

    def _locate(self, t: float):
        start, begin_target = 0.0, self.begin
        for stage in self.stages:
            end = start + stage.duration_s
            if t < end:
                return start, stage, begin_target
            start, begin_target = end, stage.target
        return None, None, begin_target

    def target_at(self, t: float) -> int:
        start, stage, begin = self._locate(t)
        if stage is None:
            return 0 if t >= self.total_s else begin
        frac = (t - start) / stage.duration_s
        return int(round(begin + (stage.target - begin) * frac))

    def phase_at(self, t: float) -> str:
        """'ramp-up', 'hold', 'ramp-down' or 'done' for the stage covering t seconds."""
        start, stage, begin = self._locate(t)
        if stage is None:
            return "done"
        if stage.target > begin:
            return "ramp-up"
        if stage.target < begin:
            return "ramp-down"
        return "hold"

    def hold_s(self) -> float:
        """Longest time spent at the peak target (the spec's 'hold' phase)."""
        best, begin = 0.0, self.begin
        for stage in self.stages:
            if stage.target == begin == self.peak:
                best = max(best, stage.duration_s)
            begin = stage.target
        return best

    def share(self, index: int, parts: int) -> "Profile | None":
        """This part's slice of every target; None when the part gets no connections at all."""
        stages = share_stages(self.stages, index, parts)
        return Profile(stages) if any(s.target for s in stages) else None


def share_of(n: int, index: int, parts: int) -> int:
    """Part `index` of n split into `parts` as evenly as integers allow, larger parts first.
    The one share formula: generators' shares of the fleet, workers' shares of an agent."""
    return n // parts + (1 if index < n % parts else 0)


def share_stages(stages: list[Stage], index: int, parts: int) -> list[Stage]:
    return [Stage(s.duration_s, share_of(s.target, index, parts)) for s in stages]
