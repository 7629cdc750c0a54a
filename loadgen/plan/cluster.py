"""A cluster test plan: the whole fleet's stages split into each generator's share."""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field

from loadgen.errors import UsageError
from loadgen.plan.options import SCENARIOS
from loadgen.plan.stages import Profile, Stage, parse_duration, parse_stage


@dataclass
class ClusterPlan:
    run_id: str
    scenario: str
    stages: list[str]  # fleet totals, k6 syntax
    rate: float
    message_size: int
    generators: list[str]
    gateways: list[str]
    endpoints: list[str]  # host:port of every gateway
    shares: dict[str, list[str]]  # generator -> its stages
    total_s: float
    peak_connections: int
    min_generators: int
    criteria: list[str] = field(default_factory=list)
    start_at: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def new_run_id(scenario: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{scenario}-{secrets.token_hex(2)}"


def split_stages(stages: list[Stage], parts: int) -> list[list[Stage]]:
    """Each generator's share of every stage target (as even as integers allow, larger shares first)."""
    return [[Stage(s.duration_s, s.target // parts + (1 if i < s.target % parts else 0)) for s in stages]
            for i in range(parts)]


def make_cluster_plan(*, scenario: str, generators: list[str], gateways: list[str], endpoints: list[str],
                      stage_texts: list[str] | None, connections: int | None, duration: str | None,
                      rate: float, message_size: int, min_generators: int | None = None,
                      criteria: list[str] | None = None) -> ClusterPlan:
    if scenario not in SCENARIOS:
        raise UsageError(f"unknown scenario {scenario!r}; choose one of: {', '.join(SCENARIOS)}")
    if not generators:
        raise UsageError("the inventory has no hosts in group 'generators'")
    if not endpoints:
        raise UsageError("the inventory has no hosts in group 'gateways'")
    if stage_texts and (connections or duration):
        raise UsageError("--stage conflicts with --connections/--duration")
    if stage_texts:
        stages = [parse_stage(s) for s in stage_texts]
    else:
        if not connections or connections <= 0:
            raise UsageError("give --connections N (total across generators) and --duration, or --stage")
        seconds = parse_duration(duration or "60s", "--duration")
        if seconds <= 0:
            raise UsageError("--duration must be longer than 0s")
        stages = [Stage(0, connections), Stage(seconds, connections)]
    profile = Profile(stages)
    if profile.peak < len(generators):
        raise UsageError(f"{profile.peak} connections cannot be shared by {len(generators)} generators")
    if rate < 0 or rate > 1000:
        raise UsageError("--rate must be between 0 and 1000 messages/s per user")
    shares = split_stages(stages, len(generators))
    need = len(generators) if min_generators is None else min_generators
    if not 1 <= need <= len(generators):
        raise UsageError(f"--min-generators must be between 1 and {len(generators)}")
    return ClusterPlan(
        run_id=new_run_id(scenario), scenario=scenario, stages=[str(s) for s in stages], rate=rate,
        message_size=message_size, generators=list(generators), gateways=list(gateways), endpoints=list(endpoints),
        shares={g: [str(s) for s in share] for g, share in zip(generators, shares)},
        total_s=profile.total_s, peak_connections=profile.peak, min_generators=need, criteria=list(criteria or []))
