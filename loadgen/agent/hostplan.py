"""The agent's host side of a plan: read a plan file, the token, and fit the plan to this machine
(names resolve, open-files limit -> workers, ephemeral ports). loadgen.plan itself does no I/O."""

from __future__ import annotations

import json
import math
import os
import socket
import sys

from loadgen.errors import UsageError
from loadgen.host import ephemeral_port_count, fd_limit, read_token_file
from loadgen.plan.runplan import RunPlan

FD_RESERVE = 64  # files a worker needs besides its sockets (CSV, pipes, libraries)


def read_plan(path: str) -> RunPlan:
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as exc:
        raise UsageError(f"--plan {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"--plan {path} is not JSON: {exc}") from None
    return RunPlan.from_dict(data)


def token(token_file: str | None, env_token: str | None) -> str:
    value = read_token_file(token_file) if token_file else env_token
    if not value:
        raise UsageError("no auth token: set AUTH_TOKEN (environment or -e) or give --token-file (mode 600)")
    return value


def fit(plan: RunPlan, auth_token: str) -> RunPlan:
    """The plan as this host runs it: with the token, its name and a worker count that its limits allow."""
    for host, _ in plan.endpoints:
        try:
            socket.getaddrinfo(host, None)
        except socket.gaierror:
            raise UsageError(f"gateway host {host!r} does not resolve") from None
    peak = plan.peak_connections
    limit = fd_limit()
    per_worker_max = max(1, limit - FD_RESERVE)
    needed = math.ceil(peak / per_worker_max)
    workers = plan.workers or max(min(os.cpu_count() or 1, math.ceil(peak / 50) or 1), needed)
    if workers < needed:
        raise UsageError(
            f"{peak:,} connections need at least {needed} workers: each worker process may hold "
            f"{per_worker_max:,} sockets (live open-files limit {limit:,}); use --workers {needed} or more")
    ports = ephemeral_port_count()
    sources = len(plan.local_ips or [None])
    capacity = ports * sources * len(plan.endpoints)
    if peak > capacity:
        raise UsageError(
            f"{peak:,} connections exceed ephemeral ports x source IPs x gateway endpoints = "
            f"{ports:,} x {sources} x {len(plan.endpoints)} = {capacity:,}; add --local-ips or endpoints")
    per_pair = peak / (sources * len(plan.endpoints))
    if per_pair > ports / 2:  # measured: bench/README.md, 100,000-connection run
        print(f"loadgen: warning: {per_pair:,.0f} connections per source address and endpoint use over half of the "
              f"{ports:,} ephemeral ports: Linux's connect() searches its preferred half first and opening slows "
              f"down sharply; add --local-ips", file=sys.stderr)
    return plan.replace(token=auth_token, workers=workers, agent_id=plan.agent_id or socket.gethostname())
