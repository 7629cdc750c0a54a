"""A capacity search's plan (`fab capacity`): what is stepped, from where, how far, how each step is judged.
Parsed and checked once, before any host is touched; no I/O. loadgen.capacity runs it.

The load is stepped in one of two dimensions:
  connections: connections per gateway node (the fleet holds load x nodes), each user at `rate` msgs/s;
  rate:        messages/s of the whole fleet at a fixed connection count `vus` (per user: load / vus).
Steps go up by `step` (or times `factor`) from `start` until a step fails or `max` passed; then at most `refine`
bisection steps between the last good and the first bad load; then the ramp-down.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loadgen.errors import UsageError
from loadgen.plan import criteria as crit
from loadgen.plan.runplan import MAX_RATE, check_choice, check_range

SCHEMA = "loadgen-capacity/1"
DIMENSIONS = ("connections", "rate")
UNITS = {"connections": "connections per gateway node", "rate": "msgs/s (fleet)"}
MAX_STEPS = 40  # climbing steps; a search is bounded in steps, and every step in time
MAX_REFINE = 8


@dataclass
class CapacityPlan:
    dimension: str
    start: float
    step: float | None  # added per step; None: multiplied by factor
    factor: float | None
    max: float
    hold_s: float  # each step's hold (judged on its own window)
    ramp_s: float  # each step's ramp from the previous load
    refine: int  # bisection steps after the first failing step
    rate: float  # connections dimension: msgs/s per user
    vus: int  # rate dimension: connections of the whole fleet
    gateways: int  # gateway nodes (connections dimension: the fleet holds load x gateways)
    criteria: list[str] = field(default_factory=list)  # --criterion overrides of the step defaults
    settle_s: float = 1.0  # the first second of a hold is not judged (connections still settling)

    def __post_init__(self) -> None:
        check_choice(self.dimension, "--dimension", DIMENSIONS)
        if (self.step is None) == (self.factor is None):
            raise UsageError("give --step or --factor, not both")
        low = 1 if self.dimension == "connections" else 0.1
        check_range(self.start, "--start", low, 10_000_000)
        check_range(self.max, "--max", self.start, 10_000_000)
        if self.step is not None:
            check_range(self.step, "--step", low, 10_000_000)
        else:
            check_range(self.factor, "--factor", 1.05, 10)
        if self.dimension == "connections":
            for name in ("start", "max", "step"):
                v = getattr(self, name)
                if v is not None and v != int(v):
                    raise UsageError(f"--{name} {v:g} must be a whole number of connections per node")
        check_range(self.hold_s, "--hold", 2, 3600, "s")
        check_range(self.ramp_s, "--ramp", 0, 3600, "s")
        check_range(self.refine, "--refine", 0, MAX_REFINE)
        check_range(self.rate, "--rate", 0, MAX_RATE, " messages/s per user")
        check_range(self.vus, "--vus", 1, 10_000_000)
        if self.dimension == "rate" and self.max / self.vus > MAX_RATE:
            raise UsageError(f"--max {self.max:g} msgs/s over --vus {self.vus:,} is over {MAX_RATE:g} msgs/s per user")
        if len(self.climb()) > MAX_STEPS:
            raise UsageError(f"--start {self.start:g} to --max {self.max:g} takes {len(self.climb())} steps "
                             f"(at most {MAX_STEPS}): use a larger --step or --factor")
        self.step_criteria(self.start)  # a typo in a criterion is refused here

    def climb(self) -> list[float]:
        """The loads of the climbing steps, start to max (max itself the last)."""
        loads, load = [], self.start
        while load < self.max and len(loads) <= MAX_STEPS:
            loads.append(self._round(load))
            load = load + self.step if self.step is not None else load * self.factor
        loads.append(self._round(self.max))
        return sorted(set(loads))

    def _round(self, load: float) -> float:
        return float(int(load)) if self.dimension == "connections" else round(load, 2)

    def midpoint(self, good: float, bad: float) -> float | None:
        """The bisection step between a passing and a failing load; None when no load lies between."""
        mid = self._round((good + bad) / 2)
        return mid if good < mid < bad else None

    def fleet_connections(self, load: float) -> int:
        return int(load) * self.gateways if self.dimension == "connections" else self.vus

    def rate_per_user(self, load: float) -> float:
        return self.rate if self.dimension == "connections" else load / self.vus

    def offered_per_s(self, load: float) -> float:
        return self.fleet_connections(load) * self.rate_per_user(load)

    def step_criteria(self, load: float) -> list[crit.Criterion]:
        """A step passes when every one holds over its own window: the cluster scenario's defaults tightened for
        a search (a knee is where quality starts to drop), throughput at 95 % of this step's offered load."""
        def c(name, op, target):
            return crit.Criterion(name, op, float(target), crit.LABELS[name])

        defaults = [c("connection_success_rate", ">", 0.99), c("connect_p95_ms", "<", 5000)]
        if self.offered_per_s(load) > 0:  # without messages there is nothing to measure them by
            defaults += [c("message_p99_ms", "<", 200), c("message_success_rate", ">", 0.99),
                         c("throughput_per_s", ">", 0.95 * self.offered_per_s(load))]
        return crit.apply_overrides(defaults, self.criteria)

    def step_budget_s(self) -> float:
        """At most how long one step takes, waiting for its last rows included."""
        return self.ramp_s + self.hold_s + 10

    def total_budget_s(self) -> float:
        return (len(self.climb()) + self.refine) * self.step_budget_s()

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "dimension": self.dimension, "unit": UNITS[self.dimension], "start": self.start,
                "step": self.step, "factor": self.factor, "max": self.max, "hold_s": self.hold_s,
                "ramp_s": self.ramp_s, "refine": self.refine, "rate": self.rate, "vus": self.vus,
                "gateways": self.gateways, "criteria": list(self.criteria), "settle_s": self.settle_s}
