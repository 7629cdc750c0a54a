"""A control message for a running agent (schema `loadgen-control/1`): parsed and checked once, no I/O.

The controller changes a running agent's load by writing `control.json` into the agent's output directory
(`--out`; under fab: the generator's `<workdir>/out/control.json`): loadgen.fleet.control writes it,
loadgen.agent.control reads it. One of two forms, `seq` counting up (an agent applies a message whose seq is
above the last one it applied, once):

    {"schema": "loadgen-control/1", "seq": 3, "stages": ["5s:200", "30s:200"], "rate": 2.0}
    {"schema": "loadgen-control/1", "seq": 4, "ramp_down": {"within_s": 5, "reason": "p99 > 1000 ms"}}

`stages` replace what is left of the agent's stages from the moment it applies them (the first one ramps from
the connections the agent holds then, not from 0); `rate` is the new messages/s per user; either or both. A
`ramp_down` closes every connection within `within_s` seconds and ends the run early, its reason recorded in
status.json and summary.json.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadgen.errors import UsageError
from loadgen.plan.runplan import MAX_RATE, check_range, stages_from_json, stages_to_json
from loadgen.plan.stages import Stage, share_stages

SCHEMA = "loadgen-control/1"
MAX_RAMP_DOWN_S = 3600.0
MAX_REASON = 300


@dataclass(frozen=True)
class Control:
    seq: int
    stages: list[Stage] | None = None
    rate: float | None = None
    ramp_down_s: float | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 1:
            raise UsageError(f"control: seq {self.seq!r} must be a whole number from 1")
        if self.ramp_down_s is not None:
            if self.stages is not None or self.rate is not None:
                raise UsageError("control: ramp_down goes alone (no stages or rate beside it)")
            check_range(self.ramp_down_s, "control: ramp_down.within_s", 0, MAX_RAMP_DOWN_S, "s")
            if not isinstance(self.reason, str) or not self.reason.strip() or len(self.reason) > MAX_REASON:
                raise UsageError(f"control: ramp_down.reason must be a text of 1-{MAX_REASON} characters")
        elif self.stages is None and self.rate is None:
            raise UsageError("control: give stages, rate or ramp_down")
        if self.stages is not None:
            if not self.stages or sum(s.duration_s for s in self.stages) <= 0:
                raise UsageError("control: stages must add up to more than 0s")
        if self.rate is not None:
            check_range(self.rate, "control: rate", 0, MAX_RATE, " messages/s per user")

    def share(self, index: int, parts: int) -> "Control":
        """Part `index` of `parts`: its share of every stage target (the plan's one share formula)."""
        if self.stages is None:
            return self
        return Control(self.seq, share_stages(self.stages, index, parts), self.rate, self.ramp_down_s, self.reason)

    def to_dict(self) -> dict:
        out: dict = {"schema": SCHEMA, "seq": self.seq}
        if self.ramp_down_s is not None:
            out["ramp_down"] = {"within_s": self.ramp_down_s, "reason": self.reason}
        if self.stages is not None:
            out["stages"] = stages_to_json(self.stages)
        if self.rate is not None:
            out["rate"] = self.rate
        return out

    @classmethod
    def from_dict(cls, data) -> "Control":
        if not isinstance(data, dict) or data.get("schema", SCHEMA) != SCHEMA:
            got = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise UsageError(f"control: schema {got!r} is not {SCHEMA!r}")
        unknown = sorted(set(data) - {"schema", "seq", "stages", "rate", "ramp_down"})
        if unknown:
            raise UsageError(f"control: unknown field(s) {', '.join(unknown)}")
        rate = data.get("rate")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))):
            raise UsageError(f"control: rate {rate!r} is not a number")
        stages = stages_from_json(data["stages"]) if "stages" in data else None
        ramp = data.get("ramp_down")
        within = reason = None
        if ramp is not None:
            if not isinstance(ramp, dict) or set(ramp) - {"within_s", "reason"}:
                raise UsageError("control: ramp_down must be {\"within_s\": seconds, \"reason\": text}")
            within, reason = ramp.get("within_s"), ramp.get("reason")
            if isinstance(within, bool) or not isinstance(within, (int, float)):
                raise UsageError(f"control: ramp_down.within_s {within!r} is not a number of seconds")
            within = float(within)
        return cls(data.get("seq"), stages, None if rate is None else float(rate), within, reason)
