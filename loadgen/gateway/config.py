"""config.yaml of the gateway (the spec's keys), validated with one-line errors."""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from loadgen.errors import UsageError
from loadgen.plan.stages import parse_duration


@dataclass(frozen=True)
class GatewayConfig:
    max_connections: int = 100_000
    read_buffer_size: int = 4096
    write_buffer_size: int = 4096
    handshake_timeout_s: float = 10.0
    read_timeout_s: float = 90.0  # no frame (or pong) for this long: the connection is half-open
    write_timeout_s: float = 10.0  # a peer that stops reading for this long is dropped
    max_message_size: int = 65536
    shutdown_grace_s: float = 2.0  # SIGTERM/SIGINT: wait this long for the clients' close replies, then cut
    max_frames_per_s: float = 200.0  # per connection; above the burst it is a flood
    flood_burst: float = 400.0
    max_bad_frames_per_min: int = 20
    group_max_per_user: int = 100  # groups one session may be a member of
    group_max_members: int = 10_000  # members of one group (cluster mode: on all live nodes together)
    max_idle_conns: int = 1000  # connection_pool: for the registry/router backends (cluster mode)
    max_open_conns: int = 10000
    # cluster: (docs/protocol.md "Cluster mode"); empty etcd/redis/kafka = single node, in-memory routing
    cluster_etcd: str = ""  # etcd v3 client URLs, comma-separated
    cluster_redis: str = ""  # redis://host:port/db (password: REDIS_PASSWORD or cluster.redis_password_file)
    cluster_kafka: str = ""  # bootstrap host:port list, comma-separated
    redis_password_file: str = ""
    registry_ttl_s: float = 90.0  # user -> node entries expire unless heartbeats (pings) refresh them
    lease_ttl_s: float = 10.0  # etcd membership lease; kept alive every third of it
    backend_timeout_s: float = 5.0  # bound on every Redis/etcd/Kafka operation
    kafka_partitions: int = 1  # partitions of each node's topic
    kafka_replication_factor: int = 3  # capped at the number of live brokers
    topic_prefix: str = "im-gateway.node."
    route_cache_ttl_s: float = 60.0  # recipient -> node routes are cached this long (stale ones are dropped sooner)
    route_backlog: int = 10000  # cross-node messages waiting for Redis or Kafka per stage; more are refused at once
    # testing: a known slowdown, so a baseline comparison can be shown to catch one (never for production)
    delivery_delay_s: float = 0.0  # every `send` is held this long before it is routed


_KEYS = {
    ("server", "max_connections"): ("max_connections", int),
    ("server", "read_buffer_size"): ("read_buffer_size", int),
    ("server", "write_buffer_size"): ("write_buffer_size", int),
    ("server", "max_message_size"): ("max_message_size", int),
    ("server", "shutdown_grace"): ("shutdown_grace_s", "duration"),
    ("websocket", "handshake_timeout"): ("handshake_timeout_s", "duration"),
    ("websocket", "read_timeout"): ("read_timeout_s", "duration"),
    ("websocket", "write_timeout"): ("write_timeout_s", "duration"),
    ("limits", "max_frames_per_s"): ("max_frames_per_s", float),
    ("limits", "flood_burst"): ("flood_burst", float),
    ("limits", "max_bad_frames_per_min"): ("max_bad_frames_per_min", int),
    ("groups", "max_per_user"): ("group_max_per_user", int),
    ("groups", "max_members"): ("group_max_members", int),
    ("connection_pool", "max_idle_conns"): ("max_idle_conns", int),
    ("connection_pool", "max_open_conns"): ("max_open_conns", int),
    ("cluster", "etcd"): ("cluster_etcd", "list"),
    ("cluster", "redis"): ("cluster_redis", str),
    ("cluster", "kafka"): ("cluster_kafka", "list"),
    ("cluster", "redis_password_file"): ("redis_password_file", str),
    ("cluster", "registry_ttl"): ("registry_ttl_s", "duration"),
    ("cluster", "lease_ttl"): ("lease_ttl_s", "duration"),
    ("cluster", "backend_timeout"): ("backend_timeout_s", "duration"),
    ("cluster", "kafka_partitions"): ("kafka_partitions", int),
    ("cluster", "kafka_replication_factor"): ("kafka_replication_factor", int),
    ("cluster", "topic_prefix"): ("topic_prefix", str),
    ("cluster", "route_cache_ttl"): ("route_cache_ttl_s", "duration"),
    ("cluster", "route_backlog"): ("route_backlog", int),
    ("testing", "delivery_delay"): ("delivery_delay_s", "duration"),
}


def load_config(path: str | None) -> GatewayConfig:
    if not path:
        return GatewayConfig()
    try:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
    except OSError as exc:
        raise UsageError(f"config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise UsageError(f"config {path}: top level must be a mapping")
    values = {}
    for section, body in doc.items():
        if not isinstance(body, dict):
            raise UsageError(f"config {path}: {section} must be a mapping")
        for key, raw in body.items():
            spec = _KEYS.get((section, key))
            if spec is None:
                raise UsageError(f"config {path}: unknown key {section}.{key}")
            name, kind = spec
            if kind in ("list", str):  # a YAML list or a comma-separated string
                items = raw if isinstance(raw, list) else [raw]
                if not all(isinstance(i, str) and i.strip() for i in items):
                    raise UsageError(f"config {path}: {section}.{key} = {raw!r} is not a non-empty string")
                values[name] = ",".join(i.strip() for i in items)
                continue
            try:
                value = parse_duration(raw, f"{section}.{key}") if kind == "duration" else kind(raw)
            except (TypeError, ValueError):
                label = "duration" if kind == "duration" else kind.__name__
                raise UsageError(f"config {path}: {section}.{key} = {raw!r} is not a {label}") from None
            if value <= 0:
                raise UsageError(f"config {path}: {section}.{key} must be positive")
            values[name] = value
    return GatewayConfig(**values)
