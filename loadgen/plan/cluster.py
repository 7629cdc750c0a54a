"""A cluster test's plan: the fleet's stages (totals), checked once, and each generator's RunPlan (its share).

`fab cluster-test` builds it before touching any host, writes it as the run directory's plan.json and
sends each generator its RunPlan as a file; the report reads plan.json back with `FleetPlan.from_dict`.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from loadgen.errors import UsageError
from loadgen.plan import criteria as crit
from loadgen.plan.abort import DEFAULT_GRACE_S, rules_from_json
from loadgen.plan.addresses import parse_endpoint
from loadgen.plan.runplan import (MODE_OF, SCENARIOS, Load, RunPlan, check_choice, protocol_of, stages_from_json,
                                  stages_to_json)
from loadgen.plan.stages import Stage, share_stages

SCHEMA = "loadgen-fleet-plan/1"
MIN_DEADMAN_S = 3.0  # the controller touches the heartbeats every 2 s
# written by to_dict for readers (derived) or by the controller beside the plan: not read back
_NOT_READ = {"schema", "shares", "total_s", "peak_connections", "hold_s", "offered_msgs_per_s", "inventory", "groups"}


@dataclass
class FleetPlan(Load):
    run_id: str
    scenario: str
    stages: list[Stage]  # fleet totals, split across generators
    rate: float  # messages per second per connected user
    message_size: int
    generators: list[str]
    gateways: list[str]
    endpoints: list[str]  # host:port of every gateway
    min_generators: int
    criteria: list[str] = field(default_factory=list)  # --criterion overrides of the spec's defaults at fleet scale
    deadman_s: float = 60.0
    start_at: float | None = None
    traffic: dict | None = None  # the traffic model (docs/traffic.md), as RunPlan carries it; None: constant
    seed: int = 0
    protocol: dict | None = None  # the protocol profile entry every agent plan carries (None: reference)
    abort_on: list[str] = field(default_factory=list)  # --abort-on, judged by the controller on the fleet's data
    abort_grace_s: float = DEFAULT_GRACE_S

    def __post_init__(self) -> None:
        check_choice(self.scenario, "--scenario", SCENARIOS)
        protocol_of(self.protocol)  # checked here, before any host is touched
        if not self.generators:
            raise UsageError("the inventory has no hosts in group 'generators'")
        if not self.endpoints:
            raise UsageError("the inventory has no hosts in group 'gateways'")
        self._check_load()
        if self.peak_connections < len(self.generators):
            raise UsageError(f"{self.peak_connections} connections cannot be shared by {len(self.generators)} generators")
        if not 1 <= self.min_generators <= len(self.generators):
            raise UsageError(f"--min-generators must be between 1 and {len(self.generators)} (got {self.min_generators})")
        if self.deadman_s < MIN_DEADMAN_S:
            raise UsageError(f"--deadman-timeout must be at least {MIN_DEADMAN_S:g}s (the controller polls every 2 s)")
        self.fleet_criteria()  # a typo in a criterion is refused here, before any host is touched
        if self.traffic is not None:  # checked once here too: a bad model is refused before any host is touched
            from loadgen.traffic.model import TrafficModel

            self.traffic = TrafficModel.from_dict(self.traffic, self.traffic.get("name", "traffic")
                                                  if isinstance(self.traffic, dict) else "traffic").to_dict()
        self.abort_rules = rules_from_json(self.abort_on)
        if not 0 <= self.abort_grace_s <= 86400:
            raise UsageError("--abort-grace must be between 0s and 24h")

    def fleet_criteria(self) -> list[crit.Criterion]:
        """The spec's defaults for the whole fleet's load, with the operator's overrides."""
        return crit.for_load(self.scenario, hold_s=self.hold_s, offered_per_s=self.offered_msgs_per_s,
                             overrides=self.criteria)

    def share(self, generator: str) -> list[Stage]:
        return share_stages(self.stages, self.generators.index(generator), len(self.generators))

    def agent_plan(self, generator: str, *, local_ips: list[str] | None = None, workers: int | None = None,
                   pairing: str = "same-node", metrics_port: int = 0) -> RunPlan:
        """This generator's RunPlan: its share of every stage target, its own criteria at its own scale."""
        return RunPlan(
            scenario=self.scenario, stages=self.share(generator), rate=self.rate,
            mode=MODE_OF[self.scenario], message_size=self.message_size,
            endpoints=[parse_endpoint(e, 0) for e in self.endpoints], criteria=[], workers=workers,
            agent_id=generator, local_ips=local_ips, start_at=self.start_at, pairing=pairing,
            heartbeat_file="heartbeat", deadman_s=self.deadman_s, quiet=True, traffic=self.traffic, seed=self.seed,
            protocol=self.protocol,
            run_id=self.run_id, metrics_port=metrics_port,
        ).with_criteria(self.criteria)

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "run_id": self.run_id, "scenario": self.scenario,
                "stages": stages_to_json(self.stages), "rate": self.rate, "message_size": self.message_size,
                "generators": list(self.generators), "gateways": list(self.gateways),
                "endpoints": list(self.endpoints),
                "shares": {g: stages_to_json(self.share(g)) for g in self.generators},
                "total_s": self.total_s, "peak_connections": self.peak_connections, "hold_s": self.hold_s,
                "offered_msgs_per_s": self.offered_msgs_per_s, "min_generators": self.min_generators,
                "criteria": list(self.criteria), "deadman_s": self.deadman_s, "start_at": self.start_at,
                "traffic": self.traffic, "seed": self.seed, "protocol": self.protocol,
                "abort_on": list(self.abort_on), "abort_grace_s": self.abort_grace_s}

    @classmethod
    def from_dict(cls, data: dict) -> "FleetPlan":
        """plan.json of a run directory; one without "schema" was written before plans had one (same fields)."""
        if not isinstance(data, dict) or data.get("schema", SCHEMA) != SCHEMA:
            got = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise UsageError(f"plan.json: schema {got!r} is not {SCHEMA!r}")
        kwargs = {k: v for k, v in data.items() if k not in _NOT_READ}
        kwargs["stages"] = stages_from_json(data.get("stages"))
        try:
            return cls(**kwargs)
        except TypeError as exc:  # a missing or unknown field
            raise UsageError(f"plan.json: {exc}") from None


def new_run_id(scenario: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{scenario}-{secrets.token_hex(2)}"
