"""`loadgen run` options -> a validated RunPlan (k6-style flags and environment variables)."""

from __future__ import annotations

import math
import os
import re
import socket
import stat
import sys
from dataclasses import dataclass, field

from loadgen.errors import UsageError
from loadgen.plan import criteria as crit
from loadgen.plan.addresses import ephemeral_port_count, parse_endpoint, parse_local_ips
from loadgen.plan.stages import Profile, Stage, parse_duration, parse_stage

SCENARIOS = ("connection", "throughput", "cluster")
ENV_KEYS = ("GATEWAY_HOST", "GATEWAY_PORT", "GATEWAY_HOSTS", "AUTH_TOKEN", "MESSAGE_SIZE")
MAX_VUS = 10_000_000
MAX_MESSAGE_SIZE = 1_048_576
MAX_CLOSE_QUIESCE_S = 60.0

# Scenario defaults from the spec: (vus, duration, rate msgs/s per user, default stages, message target)
DEFAULTS = {
    "connection": dict(vus=100_000, duration=None, rate=1 / 30, mode="echo",
                       stages=[Stage(900, 100_000), Stage(1800, 100_000), Stage(300, 0)]),
    "throughput": dict(vus=1000, duration=600.0, rate=10.0, mode="peer", stages=None),
    "cluster": dict(vus=1000, duration=3600.0, rate=1.0, mode="peer", stages=None),
}


@dataclass
class RunPlan:
    scenario: str
    profile: Profile
    rate: float  # messages per second per connected user
    mode: str  # 'echo' (to itself through the gateway) or 'peer' (to a partner connection)
    message_size: int
    endpoints: list[tuple[str, int]]
    token: str = field(repr=False)
    out_dir: str
    start_at: float | None
    workers: int
    agent_id: str
    local_ips: list[str] | None
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
    criteria: list = field(default_factory=list)
    quiet: bool = False
    closed_loop: bool = False  # echo, one in flight per connection: latency per round trip (bench/README.md)

    @property
    def offered_per_s(self) -> float:
        return self.profile.peak * self.rate


def _env(args, key: str, default=None):
    """-e KEY=VALUE wins over the process environment (as in k6)."""
    return args.env_overrides.get(key, os.environ.get(key, default))


def parse_env_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
            raise UsageError(f"-e {pair!r} must be KEY=VALUE")
        out[key] = value
    return out


def read_token_file(path: str) -> str:
    try:
        st = os.stat(path)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(f"token file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it")
        with open(path) as f:
            token = f.read().strip()
    except OSError as exc:
        raise UsageError(f"token file {path}: {exc.strerror}") from None
    if not token:
        raise UsageError(f"token file {path} is empty")
    return token


def _positive_int(text, what: str, maximum: int) -> int:
    try:
        value = int(str(text))
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a whole number") from None
    if value <= 0 or value > maximum:
        raise UsageError(f"{what} must be between 1 and {maximum:,} (got {value})")
    return value


def fd_limit() -> int:
    """The live open-files limit after raising soft to hard (what this process can really use)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


FD_RESERVE = 64  # files a worker needs besides its sockets (CSV, pipes, libraries)


def build_plan(args) -> RunPlan:
    if args.scenario not in SCENARIOS:
        raise UsageError(f"unknown scenario {args.scenario!r}; choose one of: {', '.join(SCENARIOS)}")
    args.env_overrides = parse_env_overrides(args.env)
    d = DEFAULTS[args.scenario]

    if args.stage and (args.vus is not None or args.duration is not None):
        raise UsageError("--stage conflicts with --vus/--duration: give stages, or vus and a duration")
    if args.stage:
        profile = Profile([parse_stage(s) for s in args.stage])
    elif args.vus is None and args.duration is None and d["stages"]:
        profile = Profile(d["stages"])
    else:
        vus = _positive_int(args.vus, "--vus", MAX_VUS) if args.vus is not None else d["vus"]
        duration = parse_duration(args.duration, "--duration") if args.duration is not None else (d["duration"] or 300.0)
        if duration <= 0:
            raise UsageError("--duration must be longer than 0s")
        profile = Profile([Stage(0, vus), Stage(duration, vus)])

    rate = d["rate"] if args.rate is None else args.rate
    if not 0 <= rate <= 1000:
        raise UsageError(f"--rate must be between 0 and 1000 messages/s per user (got {rate:g})")
    closed_loop = bool(getattr(args, "closed_loop", False))
    if closed_loop:
        if args.rate is not None:
            raise UsageError("--closed-loop sends the next echo when the reply arrives; it takes no --rate")
        rate = 0.0  # nothing is offered on a schedule: the gateway's pace sets the rate

    size_text = _env(args, "MESSAGE_SIZE", "1024")
    size = _positive_int(size_text, "MESSAGE_SIZE", MAX_MESSAGE_SIZE)

    default_port = _env(args, "GATEWAY_PORT", "8080")
    try:
        port = int(default_port)
    except ValueError:
        raise UsageError(f"GATEWAY_PORT {default_port!r} is not a number") from None
    hosts = args.gateways or _env(args, "GATEWAY_HOSTS")
    if hosts:
        endpoints = [parse_endpoint(h, port) for h in str(hosts).split(",") if h.strip()]
    else:
        endpoints = [parse_endpoint(f"{_env(args, 'GATEWAY_HOST', '127.0.0.1')}:{port}", port)]
    for host, _ in endpoints:
        try:
            socket.getaddrinfo(host, None)
        except socket.gaierror:
            raise UsageError(f"gateway host {host!r} does not resolve") from None

    if args.token_file:
        token = read_token_file(args.token_file)
    else:
        token = _env(args, "AUTH_TOKEN")
    if not token:
        raise UsageError("no auth token: set AUTH_TOKEN (environment or -e) or give --token-file (mode 600)")

    local_ips = parse_local_ips(args.local_ips) if args.local_ips else None

    limit = fd_limit()
    per_worker_max = max(1, limit - FD_RESERVE)
    needed = math.ceil(profile.peak / per_worker_max)
    if args.workers in (None, "auto"):
        workers = max(min(os.cpu_count() or 1, math.ceil(profile.peak / 50) or 1), needed)
    else:
        workers = _positive_int(args.workers, "--workers", 1024)
    if workers < needed:
        raise UsageError(
            f"{profile.peak:,} connections need at least {needed} workers: each worker process may hold "
            f"{per_worker_max:,} sockets (live open-files limit {limit:,}); use --workers {needed} or more")
    ports = ephemeral_port_count()
    capacity = ports * len(local_ips or [None]) * len(endpoints)
    if profile.peak > capacity:
        raise UsageError(
            f"{profile.peak:,} connections exceed ephemeral ports x source IPs x gateway endpoints = "
            f"{ports:,} x {len(local_ips or [None])} x {len(endpoints)} = {capacity:,}; add --local-ips or endpoints")
    per_pair = profile.peak / (len(local_ips or [None]) * len(endpoints))
    if per_pair > ports / 2:  # measured: bench/README.md, 100,000-connection run
        print(f"loadgen: warning: {per_pair:,.0f} connections per source address and endpoint use over half of the "
              f"{ports:,} ephemeral ports: Linux's connect() searches its preferred half first and opening slows "
              f"down sharply; add --local-ips", file=sys.stderr)

    start_at = None
    if args.start_at is not None:
        start_at = float(args.start_at)
    criteria = crit.apply_overrides(
        crit.default_criteria(args.scenario, hold_s=profile.hold_s(), offered_per_s=profile.peak * rate),
        args.criterion or [])
    heartbeat = parse_duration(args.heartbeat_interval, "--heartbeat-interval")
    if heartbeat <= 0:
        raise UsageError("--heartbeat-interval must be longer than 0s")
    close_quiesce = parse_duration(getattr(args, "close_quiesce", "10s"), "--close-quiesce")
    if close_quiesce > MAX_CLOSE_QUIESCE_S:
        raise UsageError(f"--close-quiesce must be at most {MAX_CLOSE_QUIESCE_S:g}s (got {close_quiesce:g}s)")
    return RunPlan(
        scenario=args.scenario,
        profile=profile,
        rate=rate,
        mode="echo" if closed_loop else d["mode"],
        message_size=size,
        endpoints=endpoints,
        token=token,
        out_dir=args.out,
        start_at=start_at,
        workers=workers,
        agent_id=args.agent_id or socket.gethostname(),
        local_ips=local_ips,
        heartbeat_s=heartbeat,
        connect_timeout_s=parse_duration(args.connect_timeout, "--connect-timeout"),
        max_connecting=_positive_int(args.max_connecting, "--max-connecting", 100_000),
        heartbeat_file=args.heartbeat_file,
        deadman_s=parse_duration(args.deadman_timeout, "--deadman-timeout"),
        gateway_metrics=list(args.gateway_metrics or []),
        criteria=criteria,
        pairing=args.pairing,
        reconnect=args.reconnect,
        backoff_base_s=parse_duration(args.backoff_base, "--backoff-base"),
        backoff_cap_s=parse_duration(args.backoff_cap, "--backoff-cap"),
        quiet=args.quiet,
        closed_loop=closed_loop,
        close_quiesce_s=close_quiesce,
    )
