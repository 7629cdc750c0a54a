"""`loadgen run`'s k6-style flags and environment variables -> a RunPlan (the same plan `--plan FILE` reads).

Text becomes typed values here (syntax errors name the option); the rules on those values are RunPlan's.
"""

from __future__ import annotations

import math
import re

from loadgen.errors import UsageError
from loadgen.plan.abort import parse_abort, parse_grace
from loadgen.plan.addresses import parse_endpoint, parse_local_ips
from loadgen.plan.runplan import MODE_OF, SCENARIOS, RunPlan, check_range, protocol_entry
from loadgen.plan.stages import MAX_TARGET, Stage, parse_duration, parse_stage

ENV_KEYS = ("GATEWAY_HOST", "GATEWAY_PORT", "GATEWAY_HOSTS", "AUTH_TOKEN", "MESSAGE_SIZE")

# Scenario defaults from the spec: vus, duration, rate (msgs/s per user), default stages
DEFAULTS = {
    "connection": dict(vus=100_000, duration=None, rate=1 / 30,
                       stages=[Stage(900, 100_000), Stage(1800, 100_000), Stage(300, 0)]),
    "throughput": dict(vus=1000, duration=600.0, rate=10.0, stages=None),
    "cluster": dict(vus=1000, duration=3600.0, rate=1.0, stages=None),
}

# Flags that shape the plan: with --plan FILE the file says all of it, so none of these may be given too.
PLAN_FLAGS = ("vus", "duration", "stage", "rate", "gateways", "start_at", "workers", "local_ips", "agent_id",
              "heartbeat_interval", "connect_timeout", "max_connecting", "criterion", "gateway_metrics",
              "heartbeat_file", "deadman_timeout", "reconnect", "backoff_base", "backoff_cap", "pairing",
              "close_quiesce", "closed_loop", "traffic", "seed", "protocol", "metrics_port",
              "abort_on", "abort_grace")


def parse_env_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
            raise UsageError(f"-e {pair!r} must be KEY=VALUE")
        out[key] = value
    return out


def parse_int(text, what: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a whole number") from None


def parse_number(text, what: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"{what} {text!r} is not a finite number")
    return value


def hold_stages(vus_text, duration_text, what: str = "--vus") -> list[Stage]:
    """--vus N --duration D as stages: N connections at once, held for D (as k6)."""
    vus = parse_int(vus_text, what)
    check_range(vus, what, 1, MAX_TARGET)
    duration = parse_duration(duration_text, "--duration")
    if duration <= 0:
        raise UsageError("--duration must be longer than 0s")
    return [Stage(0, vus), Stage(duration, vus)]


def choose_stages(stage_texts: list[str], vus, duration, *, default_stages, default_vus, default_duration,
                  vus_name: str = "--vus") -> list[Stage]:
    """--stage ..., or --vus N --duration D, or the defaults (stages first): the same choice for fab and loadgen run."""
    if stage_texts and (vus is not None or duration is not None):
        raise UsageError("--stage conflicts with --vus/--duration: give stages, or vus and a duration")
    if stage_texts:
        return [parse_stage(s) for s in stage_texts]
    if vus is None and duration is None and default_stages:
        return [s if isinstance(s, Stage) else parse_stage(s) for s in default_stages]
    return hold_stages(default_vus if vus is None else vus, default_duration if duration is None else duration,
                       vus_name)


def traffic_arg(name_or_file, scenario: str, protocol: dict | None = None) -> dict | None:
    """--traffic NAME|FILE as the plan's traffic dict; 'constant' is today's behaviour: None. Without --traffic, the
    scenario's default model; with a protocol profile other than the reference one (protocol: its plan entry),
    constant: such a profile cannot express typed messages yet (RunPlan refuses a model given with one)."""
    from loadgen.plan.runplan import reference_digest
    from loadgen.traffic.model import load

    if name_or_file is None:
        builtin = protocol is None or protocol.get("digest") == reference_digest()
        name_or_file = DEFAULT_TRAFFIC.get(scenario, "constant") if builtin else "constant"
    if name_or_file == "constant":
        return None
    return load(name_or_file).to_dict()


# The traffic model of each scenario when --traffic is not given (docs/traffic.md): the cluster test is the realistic
# one; the connection and throughput scenarios measure capacity with the spec's fixed messages.
DEFAULT_TRAFFIC = {"connection": "constant", "throughput": "constant", "cluster": "chat-mix"}


def plan_from_args(args, env: dict) -> RunPlan:
    """args: `loadgen run`'s parsed flags; env: ENV_KEYS from the environment with -e overrides applied."""
    if args.scenario not in SCENARIOS:
        raise UsageError(f"unknown scenario {args.scenario!r}; choose one of: {', '.join(SCENARIOS)}")
    d = DEFAULTS[args.scenario]

    stages = choose_stages(args.stage, args.vus, args.duration, default_stages=d["stages"], default_vus=d["vus"],
                           default_duration=d["duration"] or 300.0)

    closed_loop = bool(args.closed_loop)
    if args.rate is not None:
        rate = parse_number(args.rate, "--rate")  # with --closed-loop, RunPlan refuses any rate but 0
    else:  # closed loop: nothing is offered on a schedule, the gateway's pace sets the rate
        rate = 0.0 if closed_loop else d["rate"]

    port = parse_int(env.get("GATEWAY_PORT", "8080"), "GATEWAY_PORT")
    hosts = args.gateways or env.get("GATEWAY_HOSTS")
    if hosts:
        endpoints = [parse_endpoint(h, port) for h in str(hosts).split(",") if h.strip()]
    else:
        endpoints = [parse_endpoint(f"{env.get('GATEWAY_HOST', '127.0.0.1')}:{port}", port)]

    # flags left out keep RunPlan's defaults: the defaults are written once, there
    given = {}
    for flag, name in (("heartbeat_interval", "heartbeat_s"), ("connect_timeout", "connect_timeout_s"),
                       ("deadman_timeout", "deadman_s"), ("backoff_base", "backoff_base_s"),
                       ("backoff_cap", "backoff_cap_s"), ("close_quiesce", "close_quiesce_s")):
        if getattr(args, flag) is not None:
            given[name] = parse_duration(getattr(args, flag), "--" + flag.replace("_", "-"))
    if args.abort_on:
        given["abort_on"] = [parse_abort(e).text for e in args.abort_on]
    if args.abort_grace is not None:
        given["abort_grace_s"] = parse_grace(args.abort_grace)
    if args.metrics_port is not None:
        given["metrics_port"] = parse_int(args.metrics_port, "--metrics-port")
    if args.max_connecting is not None:
        given["max_connecting"] = parse_int(args.max_connecting, "--max-connecting")
    protocol = protocol_entry(args.protocol) if getattr(args, "protocol", None) else None
    traffic = traffic_arg(getattr(args, "traffic", None), args.scenario, protocol)
    if traffic is not None:
        given["traffic"] = traffic
    if getattr(args, "seed", None) is not None:
        given["seed"] = parse_int(args.seed, "--seed")
    for name in ("pairing", "reconnect"):
        if getattr(args, name) is not None:
            given[name] = getattr(args, name)
    return RunPlan(
        scenario=args.scenario,
        stages=stages,
        rate=rate,
        mode="echo" if closed_loop else MODE_OF[args.scenario],
        message_size=parse_int(env.get("MESSAGE_SIZE", "1024"), "MESSAGE_SIZE"),
        endpoints=endpoints,
        criteria=[],
        workers=None if args.workers in (None, "auto") else parse_int(args.workers, "--workers"),
        agent_id=args.agent_id,
        local_ips=parse_local_ips(args.local_ips) if args.local_ips else None,
        start_at=None if args.start_at is None else parse_number(args.start_at, "--start-at"),
        heartbeat_file=args.heartbeat_file,
        gateway_metrics=list(args.gateway_metrics or []),
        closed_loop=closed_loop,
        protocol=protocol,
        out_dir=args.out,
        quiet=args.quiet,
        **given,
    ).with_criteria(args.criterion or [])
