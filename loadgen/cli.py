"""`loadgen` command line: `run` (the agent), `gateway` (the reference IM gateway).

Every expected failure ends with one line on stderr and a defined exit code (loadgen.errors).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from loadgen import __version__
from loadgen.errors import EXIT_FAILURE, EXIT_USAGE, LoadgenError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise UsageError(message)


def _run_parser(sub) -> None:
    p = sub.add_parser("run", help="run a load scenario (connection, throughput, cluster)",
                       description="Run one agent: open connections per the plan, send on schedule, measure.")
    p.add_argument("scenario", nargs="?", help="connection | throughput | cluster (not with --plan)")
    p.add_argument("--plan", metavar="FILE", help="run this plan.json (as fab cluster-test writes it; "
                   "docs/data-format.md) instead of building one from the flags below")
    p.add_argument("--vus", help="connections (virtual users) held constant for --duration")
    p.add_argument("--duration", help="how long to hold --vus (e.g. 30s, 10m, 1h)")
    p.add_argument("--stage", action="append", metavar="DURATION:TARGET",
                   help="ramp to TARGET connections over DURATION; repeatable (k6 semantics)")
    p.add_argument("--rate", help="messages per second per connected user")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE",
                   help="GATEWAY_HOST, GATEWAY_PORT, GATEWAY_HOSTS, MESSAGE_SIZE (AUTH_TOKEN too, but it shows in ps)")
    p.add_argument("--gateways", metavar="HOST:PORT,...", help="gateway endpoints to spread connections over")
    p.add_argument("--out", help="output directory (default: ./loadgen-out/SCENARIO-TIME)")
    p.add_argument("--start-at", metavar="EPOCH_SECONDS", help="wait until then, then start (lockstep)")
    p.add_argument("--workers", help="worker processes, or 'auto' (default: one per core, more if fds require)")
    p.add_argument("--local-ips", help="source addresses: list, range a-b or CIDR")
    p.add_argument("--agent-id", help="name of this agent in results and user ids (default: hostname)")
    p.add_argument("--token-file", help="read AUTH_TOKEN from this file (mode 600)")
    p.add_argument("--heartbeat-interval", help="application ping per connection (default 30s)")
    p.add_argument("--connect-timeout", help="TCP + WebSocket handshake timeout (default 10s)")
    p.add_argument("--max-connecting", help="concurrent handshakes per worker (default 256)")
    p.add_argument("--criterion", action="append", metavar="NAME<VALUE",
                   help="override a success criterion (e.g. message_p99_ms<100, or NAME=off)")
    p.add_argument("--gateway-metrics", action="append", metavar="URL",
                   help="sample a gateway's /metrics every second (memory, CPU criteria)")
    p.add_argument("--heartbeat-file", help="controller heartbeat: stop the load when it goes stale")
    p.add_argument("--deadman-timeout", help="staleness that stops the load (default 60s)")
    p.add_argument("--reconnect", choices=("backoff", "none"),
                   help="after a drop: reconnect with full-jitter exponential backoff (default), or not at all")
    p.add_argument("--backoff-base", help="first reconnect backoff ceiling (default 0.5s)")
    p.add_argument("--backoff-cap", help="largest reconnect backoff (default 30s)")
    p.add_argument("--pairing", choices=("same-node", "cross-node"),
                   help="peer messages stay on one gateway node (default), or cross nodes (needs gateway cluster routing)")
    p.add_argument("--close-quiesce",
                   help="peer mode: a planned close (ramp-down, end) first stops the user's and its partner's "
                        "sends until every message to and from it has arrived or been answered, at most this "
                        "long (default 10s; 0: close at once)")
    p.add_argument("--traffic", metavar="NAME|FILE",
                   help="traffic model: constant, chat-mix, or a YAML file with a traffic: section (docs/traffic.md)")
    p.add_argument("--seed", help="seed of the traffic model's draws: the same seed, the same schedule (default 0)")
    p.add_argument("--metrics-port", help="serve live Prometheus metrics on this port during the run "
                   "(http://HOST:PORT/metrics; default 0: off; fab cluster-test: loadgen_metrics_port, 9464)")
    p.add_argument("--abort-on", action="append", metavar="EXPR",
                   help="stop the run early when a threshold over a sliding window is crossed, e.g. "
                        "'connect_success<0.9 over 60s' or 'message_p99_ms>1000 over 2m'; repeatable; exit 99")
    p.add_argument("--abort-grace", help="judge no --abort-on before this long after the start (default 30s)")
    p.add_argument("--junit", metavar="FILE", help="also write the criteria as JUnit XML (one testcase each)")
    p.add_argument("--quiet", action="store_true", help="no progress line and no summary on stdout")
    p.add_argument("--protocol", metavar="NAME|FILE",
                   help="protocol profile: reference (default), xmpp, mqtt, or a profile file (docs/protocols.md)")
    p.add_argument("--closed-loop", action="store_true",
                   help="echo as fast as replies come, one in flight per connection (k6-style benchmark; "
                        "latency is per round trip, coordinated omission is inherent); no --rate")


def _gateway_parser(sub) -> None:
    p = sub.add_parser("gateway", help="run the reference IM gateway",
                       description="The reference IM gateway (docs/protocol.md). Token from AUTH_TOKEN or --token-file.")
    p.add_argument("--host", default="127.0.0.1", help="WebSocket listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--metrics-host", default="127.0.0.1", help="metrics listen address (default 127.0.0.1)")
    p.add_argument("--metrics-port", type=int, default=9090)
    p.add_argument("--config", help="config.yaml (server.*, websocket.*, limits.*, connection_pool.*)")
    p.add_argument("--node-id", default=None, help="this node's name (default: hostname:port)")
    p.add_argument("--token-file", help="read the token from this file (mode 600)")
    p.add_argument("--heartbeat-file", help="controller heartbeat: stop when it goes stale (fab-started gateways)")
    p.add_argument("--deadman-timeout", default="60s", help="staleness that stops the gateway (default 60s)")
    p.add_argument("--etcd", metavar="URLS", help="cluster mode: etcd v3 client URLs (http://h:2379,...); also cluster.etcd")
    p.add_argument("--redis", metavar="URL", help="cluster mode: session registry redis://HOST:PORT[/DB] "
                   "(password: REDIS_PASSWORD or cluster.redis_password_file); also cluster.redis")
    p.add_argument("--kafka", metavar="BOOTSTRAP", help="cluster mode: Kafka bootstrap HOST:PORT,...; also cluster.kafka")
    p.add_argument("--processes", type=int, default=1,
                   help="processes sharing --port (SO_REUSEPORT); process i serves metrics on --metrics-port + i. "
                        "No routing between them: send reaches users on the same process only (default 1)")
    p.add_argument("--log-level", default="INFO")


def _cmd_run(args) -> int:
    import time

    from loadgen.agent import hostplan
    from loadgen.agent.runner import Agent
    from loadgen.plan.options import ENV_KEYS, PLAN_FLAGS, parse_env_overrides, plan_from_args

    from loadgen.results.junit import check_path, write_junit

    junit = check_path(args.junit) if args.junit else None
    env = {**{k: os.environ[k] for k in ENV_KEYS if k in os.environ}, **parse_env_overrides(args.env)}
    if any(e.startswith("AUTH_TOKEN=") for e in args.env):
        print("loadgen: warning: -e AUTH_TOKEN=... is visible in ps; prefer the environment or --token-file",
              file=sys.stderr)
    if args.plan:
        given = [f"--{k.replace('_', '-')}" for k in PLAN_FLAGS if getattr(args, k) not in (None, False, [])]
        given += [f"-e {e.partition('=')[0]}" for e in args.env if not e.startswith("AUTH_TOKEN=")]
        if args.scenario or given:
            raise UsageError(f"--plan FILE says the whole plan; it conflicts with "
                             f"{', '.join(([args.scenario] if args.scenario else []) + given)}")
        plan = hostplan.read_plan(args.plan).replace(out_dir=args.out or "", quiet=args.quiet)
    elif not args.scenario:
        raise UsageError("give a scenario (connection, throughput, cluster) or --plan FILE")
    else:
        plan = plan_from_args(args, env)
    if not plan.out_dir:
        plan = plan.replace(out_dir=os.path.join("loadgen-out", f"{plan.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"))
    needs_token = plan.protocol_profile.needs_token  # a profile without {token} needs none
    plan = hostplan.fit(plan, hostplan.token(args.token_file, env.get("AUTH_TOKEN")) if needs_token else "")
    code = Agent(plan).run()
    summary_path = os.path.join(plan.out_dir, "summary.json")
    if junit and os.path.exists(summary_path):
        import json

        with open(summary_path) as f:
            write_junit(json.load(f), junit, f"loadgen {plan.scenario}")
    return code


def _cmd_gateway(args) -> int:
    import asyncio
    import socket

    from loadgen.gateway.config import load_config
    from loadgen.gateway.server import serve
    from loadgen.host import fd_limit, read_token_file
    from loadgen.plan.stages import parse_duration

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    token = read_token_file(args.token_file) if args.token_file else os.environ.get("AUTH_TOKEN")
    if not token:
        raise UsageError("no token: set AUTH_TOKEN in the environment or give --token-file (mode 600)")
    for name, port in (("--port", args.port), ("--metrics-port", args.metrics_port)):
        if not 0 < port < 65536:
            raise UsageError(f"{name} must be 1-65535")
    if not 1 <= args.processes <= 256 or args.metrics_port + args.processes > 65536:
        raise UsageError("--processes must be 1-256, and --metrics-port + processes - 1 a valid port")
    config = load_config(args.config)
    fd_limit()
    node_id = args.node_id or f"{socket.gethostname()}:{args.port}"
    from loadgen.gateway.cluster import cluster_settings

    if args.redis and "@" in args.redis:
        print("loadgen: warning: a password in --redis is visible in ps; prefer REDIS_PASSWORD", file=sys.stderr)
    cluster = cluster_settings(config, etcd=args.etcd, redis=args.redis, kafka=args.kafka,
                               advertise=f"{args.host}:{args.port}")
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    deadman_s = parse_duration(args.deadman_timeout, "--deadman-timeout")

    def run_one(metrics_port: int, node: str) -> None:
        runner(serve(config, token, host=args.host, port=args.port, metrics_host=args.metrics_host,
                     metrics_port=metrics_port, node_id=node, heartbeat_file=args.heartbeat_file, cluster=cluster,
                     deadman_s=deadman_s))

    if args.processes > 1:
        from loadgen.gateway.server import serve_processes

        code = serve_processes(args.processes, run_one, args.metrics_port, node_id)
        if code:
            raise LoadgenError(f"a gateway process failed (exit {code}); see the log above")
        return 0
    try:
        run_one(args.metrics_port, node_id)
    except OSError as exc:
        raise LoadgenError(f"gateway cannot listen: {exc.strerror or exc}") from None
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="loadgen", description="Cluster-scale WebSocket IM gateway load testing.")
    parser.add_argument("--version", action="version", version=f"loadgen {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    _run_parser(sub)
    _gateway_parser(sub)
    try:
        args = parser.parse_args(argv)
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "gateway":
            return _cmd_gateway(args)
        parser.print_help()
        return EXIT_USAGE
    except LoadgenError as exc:
        print(f"loadgen: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("loadgen: interrupted", file=sys.stderr)
        return EXIT_FAILURE
