"""One agent's plan: typed, versioned, checked when built, JSON both ways (docs/data-format.md, "plan.json").

`loadgen run` builds it from k6-style flags (loadgen.plan.options) or reads it with `--plan FILE`;
`fab cluster-test` builds one per generator from the fleet plan (loadgen.plan.cluster) and copies it there.
Every rule on a plan's values lives in `RunPlan.__post_init__`, so a plan file is checked exactly as flags are.
No I/O here: the host's side (token, open-files limit, name resolution) is loadgen.agent.hostplan's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from loadgen.errors import UsageError
from loadgen.plan import criteria as crit
from loadgen.plan.abort import rules_from_json
from loadgen.plan.stages import Profile, Stage, parse_stage
from loadgen.protocols import profile as protocols

SCHEMA = "loadgen-plan/1"
SCENARIOS = ("connection", "throughput", "cluster")
MODES = ("echo", "peer")
MODE_OF = {"connection": "echo", "throughput": "peer", "cluster": "peer"}  # the spec's message target per scenario
MAX_RATE = 1000.0
MAX_MESSAGE_SIZE = 1_048_576
MAX_CLOSE_QUIESCE_S = 60.0
MAX_WORKERS = 1024
MAX_CONNECTING = 100_000


def check_range(value, what: str, low, high, unit: str = "") -> None:
    """The one form of a range rule's message: the option, the allowed range and what was given."""
    if not (low <= value <= high):  # also refuses NaN
        raise UsageError(f"{what} must be between {_num(low)} and {_num(high)}{unit} (got {_num(value)})")


def _num(x) -> str:
    whole = isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e15)
    return f"{int(x):,}" if whole else f"{x:g}"


def check_choice(value, what: str, choices) -> None:
    if value not in choices:
        raise UsageError(f"{what} {value!r} is not one of: {', '.join(choices)}")


class Load:
    """Figures derived from stages and rate, shared by an agent's plan and the fleet's: one formula each."""

    stages: list[Stage]
    rate: float

    @property
    def profile(self) -> Profile:
        return self._profile

    @property
    def peak_connections(self) -> int:
        return self._profile.peak

    @property
    def total_s(self) -> float:
        return self._profile.total_s

    @property
    def hold_s(self) -> float:
        return self._profile.hold_s()

    @property
    def offered_msgs_per_s(self) -> float:
        """Planned messages per second at the peak (open model: rate per connected user)."""
        return self._profile.peak * self.rate

    def _check_load(self) -> None:
        self._profile = Profile(self.stages)  # refuses empty, zero-length and all-zero stage lists
        check_range(self.rate, "--rate", 0, MAX_RATE, " messages/s per user")


def stages_to_json(stages: list[Stage]) -> list[str]:
    return [str(s) for s in stages]  # k6 syntax, e.g. "1m:10000": readable, and read back by parse_stage


def stages_from_json(items) -> list[Stage]:
    if not isinstance(items, list):
        raise UsageError("plan: 'stages' must be a list of DURATION:TARGET strings")
    return [parse_stage(s) for s in items]


@dataclass
class RunPlan(Load):
    scenario: str
    stages: list[Stage]  # this agent's connection targets (for a generator: its share of the fleet's)
    rate: float  # messages per second per connected user
    mode: str  # 'echo' (to itself through the gateway) or 'peer' (to a partner connection)
    message_size: int
    endpoints: list[tuple[str, int]]
    criteria: list[crit.Criterion]
    workers: int | None = None  # None: one per core, more when the open-files limit requires (decided on the host)
    agent_id: str | None = None  # None: the host name
    local_ips: list[str] | None = None
    start_at: float | None = None
    reconnect: str = "backoff"  # 'backoff': dropped connections return after a jittered backoff; 'none'
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    pairing: str = "same-node"  # 'cross-node' needs a gateway cluster that routes between nodes
    path: str = "/ws"
    heartbeat_s: float = 30.0
    connect_timeout_s: float = 10.0
    max_connecting: int = 256
    drain_s: float = 3.0
    close_quiesce_s: float = 10.0  # peer mode: a planned close waits at most this long for the pair's in-flight messages
    heartbeat_file: str | None = None
    deadman_s: float = 60.0
    gateway_metrics: list[str] = field(default_factory=list)
    run_id: str | None = None  # the fleet's run id (fab cluster-test): a label of the live metrics
    metrics_port: int = 0  # serve live Prometheus metrics on this port during the run; 0: off
    abort_on: list[str] = field(default_factory=list)  # --abort-on thresholds (loadgen.plan.abort), this agent's own
    abort_grace_s: float = 30.0  # no --abort-on is judged before this long after the start
    closed_loop: bool = False  # echo, one in flight per connection: latency per round trip (bench/README.md)
    traffic: dict | None = None  # the traffic model (loadgen.traffic.model, docs/traffic.md); None: constant
    seed: int = 0  # keys every draw of the traffic model: the same seed gives the same schedule
    # the protocol profile the agents speak, whole ({name, digest, profile}: docs/protocols.md); None: reference
    protocol: dict | None = None
    # Where this run happens, not what it is: never written to plan.json (the token travels only by
    # environment or mode-600 file).
    token: str = field(default="", repr=False, compare=False, metadata={"local": True})
    out_dir: str = field(default="", compare=False, metadata={"local": True})
    quiet: bool = field(default=False, compare=False, metadata={"local": True})

    def __post_init__(self) -> None:
        check_choice(self.scenario, "scenario", SCENARIOS)
        self._protocol = protocol_of(self.protocol)
        self._check_load()
        check_choice(self.mode, "mode", MODES)
        if self.closed_loop and (self.rate or self.mode != "echo"):
            raise UsageError("--closed-loop sends the next echo when the reply arrives; it takes no --rate")
        check_range(self.message_size, "message size", 1, MAX_MESSAGE_SIZE, " bytes")
        if not self.endpoints:
            raise UsageError("a plan needs at least one gateway endpoint")
        for host, port in self.endpoints:
            if not host or not 0 < port < 65536:
                raise UsageError(f"gateway endpoint {host}:{port} must be HOST:PORT with a port 1-65535")
        if self.workers is not None:
            check_range(self.workers, "--workers", 1, MAX_WORKERS)
        if self.local_ips is not None and not self.local_ips:
            raise UsageError("--local-ips names no address")
        check_choice(self.reconnect, "--reconnect", ("backoff", "none"))
        check_choice(self.pairing, "--pairing", ("same-node", "cross-node"))
        if self.heartbeat_s <= 0:
            raise UsageError("--heartbeat-interval must be longer than 0s")
        if self.connect_timeout_s <= 0:
            raise UsageError("--connect-timeout must be longer than 0s")
        check_range(self.max_connecting, "--max-connecting", 1, MAX_CONNECTING)
        check_range(self.metrics_port, "--metrics-port", 0, 65535)
        self.abort_rules = rules_from_json(self.abort_on)
        check_range(self.abort_grace_s, "--abort-grace", 0, 86400, "s")
        check_range(self.close_quiesce_s, "--close-quiesce", 0, MAX_CLOSE_QUIESCE_S, "s")
        if self.deadman_s <= 0:
            raise UsageError("--deadman-timeout must be longer than 0s")
        if self.backoff_base_s > self.backoff_cap_s:
            raise UsageError("--backoff-base must not be larger than --backoff-cap")
        check_range(self.seed, "--seed", 0, 2**63 - 1)
        self._check_traffic()

    def _check_traffic(self) -> None:
        """The model is parsed and checked here, once; plan.json carries its canonical dict."""
        from loadgen.traffic.model import TrafficModel

        self._traffic_model = None
        typed = [(c.name, crit.split_type(c.name)[1]) for c in self.criteria if crit.split_type(c.name)[1]]
        if self.traffic is None:
            if typed:
                raise UsageError(f"criterion {typed[0][0]} names a message type, but the plan has no traffic model "
                                 "(--traffic)")
            return
        model = TrafficModel.from_dict(self.traffic, self.traffic.get("name", "traffic")
                                       if isinstance(self.traffic, dict) else "traffic")
        if self.mode != "peer" or self.closed_loop:
            raise UsageError(f"--traffic {model.name}: a traffic model sends to partners and groups; "
                             "it needs the throughput or cluster scenario")
        # A protocol profile frames what the model sends; until a profile can express typed traffic, only the
        # reference protocol on its built-in path carries a traffic model (issue 15: refused at plan time).
        if not self.builtin_protocol:
            raise UsageError(f"--traffic {model.name}: protocol {self._protocol.name!r} cannot express typed "
                             "messages yet; use --traffic constant")
        for name, kind in typed:
            if kind not in model.names:
                raise UsageError(f"criterion {name}: traffic {model.name} has no type {kind!r} "
                                 f"(types: {', '.join(model.names)})")
        self.traffic = model.to_dict()
        self._traffic_model = model

    @property
    def traffic_model(self):
        """The parsed traffic model, or None (today's constant behaviour)."""
        return self._traffic_model

    @property
    def protocol_profile(self) -> protocols.Profile:
        """The compiled profile (checked once, when the plan was built or read)."""
        return self._protocol

    @property
    def builtin_protocol(self) -> bool:
        """The shipped reference profile unchanged: the agent's built-in path (frames.py, the C closed loop)."""
        return self._protocol.digest == reference_digest()

    def with_criteria(self, overrides: list[str]) -> "RunPlan":
        """The spec's criteria for this scenario at this plan's scale, with --criterion overrides applied."""
        return self.replace(criteria=crit.for_load(self.scenario, hold_s=self.hold_s,
                                                   offered_per_s=self.offered_msgs_per_s, overrides=overrides))

    def replace(self, **changes) -> "RunPlan":
        """A copy with some fields changed, checked again."""
        return dataclasses.replace(self, **changes)

    # --- JSON -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {"schema": SCHEMA}
        for f in dataclasses.fields(self):
            if f.metadata.get("local"):
                continue
            value = getattr(self, f.name)
            if f.name == "stages":
                value = stages_to_json(value)
            elif f.name == "endpoints":
                value = [f"{h}:{p}" for h, p in value]
            elif f.name == "criteria":
                value = [{"name": c.name, "op": c.op, "target": c.target} for c in value]
            out[f.name] = value
        # derived, for readers of the file (the report reads them, never recomputes them)
        out.update(peak_connections=self.peak_connections, total_s=self.total_s, hold_s=self.hold_s,
                   offered_msgs_per_s=self.offered_msgs_per_s)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "RunPlan":
        from loadgen.plan.addresses import parse_endpoint

        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            got = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise UsageError(f"plan: schema {got!r} is not {SCHEMA!r}")
        names = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("local")}
        derived = {"schema", "peak_connections", "total_s", "hold_s", "offered_msgs_per_s"}
        unknown = sorted(set(data) - names - derived)
        if unknown:
            raise UsageError(f"plan: unknown field(s) {', '.join(unknown)}")
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name in names and f.name not in data
                         and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        if missing:
            raise UsageError(f"plan: missing field(s) {', '.join(missing)}")
        kwargs = {k: v for k, v in data.items() if k in names}
        for f in dataclasses.fields(cls):
            if f.name in kwargs and not _json_type_ok(f.type, kwargs[f.name]):
                raise UsageError(f"plan: {f.name} {kwargs[f.name]!r} is not {f.type}")
        kwargs["stages"] = stages_from_json(data["stages"])
        kwargs["endpoints"] = [parse_endpoint(e, 0) for e in data["endpoints"]]
        kwargs["criteria"] = criteria_from_json(data["criteria"])
        return cls(**kwargs)


_JSON_TYPES = {"float": (int, float), "int": (int,), "str": (str,), "bool": (bool,), "dict": (dict,)}
_REFERENCE: list = []


def reference_digest() -> str:
    if not _REFERENCE:
        _REFERENCE.append(protocols.load("reference"))
    return _REFERENCE[0].digest


def protocol_entry(name_or_path: str) -> dict:
    """--protocol NAME|FILE -> the plan's protocol entry: the whole profile, its name and digest."""
    raw = protocols.read(name_or_path)
    compiled = protocols.compile_profile(raw)
    return {"name": compiled.name, "digest": compiled.digest, "profile": raw}


def protocol_of(entry) -> protocols.Profile:
    """A plan's protocol entry -> the compiled profile, its digest checked (None: the shipped reference)."""
    if entry is None:
        reference_digest()
        return _REFERENCE[0]
    if not isinstance(entry, dict) or set(entry) != {"name", "digest", "profile"}:
        raise UsageError("plan: protocol must be {name, digest, profile}")
    compiled = protocols.compile_profile(entry["profile"], entry["digest"])
    if compiled.name != entry["name"]:
        raise UsageError(f"plan: protocol name {entry['name']!r} is not the profile's name {compiled.name!r}")
    return compiled


def _json_type_ok(annotation: str, value) -> bool:
    """Scalars only: lists are read by their own readers (stages, endpoints, criteria)."""
    kinds = [k.strip() for k in str(annotation).split("|")]
    if value is None:
        return "None" in kinds
    if any(k.startswith("list") for k in kinds):
        return isinstance(value, list)
    scalar = [k for k in kinds if k in _JSON_TYPES]
    if isinstance(value, bool) and "bool" not in scalar:
        return False
    return any(isinstance(value, _JSON_TYPES[k]) for k in scalar)


def criteria_from_json(items) -> list[crit.Criterion]:
    out = []
    for item in items if isinstance(items, list) else [items]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or crit.label_of(item["name"]) is None \
                or item.get("op") not in ("<", ">") or not isinstance(item.get("target"), (int, float)):
            raise UsageError(f"plan: criterion {item!r} must be {{'name': one of {', '.join(crit.LABELS)}, "
                             "'op': '<' or '>', 'target': a number}")
        out.append(crit.Criterion(item["name"], item["op"], float(item["target"]), crit.label_of(item["name"])))
    return out
