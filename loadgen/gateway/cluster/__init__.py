"""Cluster mode of the reference gateway (docs/protocol.md, "Cluster mode").

etcd (membership under a lease) + Redis (user -> node session registry with TTL) + Kafka (a topic
per node). `cluster_settings` turns config.yaml's `cluster:` section and the command line into
settings, or None for a single in-memory node.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from loadgen.errors import UsageError
from loadgen.gateway.cluster.router import ClusterRouter, ClusterSettings

__all__ = ["ClusterRouter", "ClusterSettings", "cluster_settings"]


def _urls(text: str, what: str, scheme: str | None) -> list[str]:
    items = [i.strip() for i in text.split(",") if i.strip()]
    if not items:
        raise UsageError(f"{what}: no address given")
    for item in items:
        if scheme:
            parts = urlsplit(item)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise UsageError(f"{what}: {item!r} is not an http://HOST:PORT URL")
        else:
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit():
                raise UsageError(f"{what}: {item!r} is not HOST:PORT")
    return items


def cluster_settings(config, *, etcd: str | None = None, redis: str | None = None, kafka: str | None = None,
                     advertise: str = "") -> ClusterSettings | None:
    """Command-line values override config.yaml's; all three backends or none (single node)."""
    etcd = etcd or config.cluster_etcd
    redis = redis or config.cluster_redis
    kafka = kafka or config.cluster_kafka
    given = {"--etcd": etcd, "--redis": redis, "--kafka": kafka}
    if not any(given.values()):
        return None
    missing = [k for k, v in given.items() if not v]
    if missing:
        raise UsageError(f"cluster mode needs --etcd, --redis and --kafka (or cluster.* in config.yaml); "
                         f"missing {', '.join(missing)}")
    parts = urlsplit(redis)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise UsageError(f"--redis {redis!r} is not a redis://HOST:PORT[/DB] URL")
    password = parts.password or os.environ.get("REDIS_PASSWORD") or None
    if config.redis_password_file:
        from loadgen.host import read_token_file

        password = read_token_file(config.redis_password_file)
    return ClusterSettings(
        etcd=_urls(etcd, "--etcd", "http"), redis_url=redis, kafka=",".join(_urls(kafka, "--kafka", None)),
        redis_password=password, registry_ttl_s=config.registry_ttl_s, lease_ttl_s=config.lease_ttl_s,
        timeout_s=config.backend_timeout_s, partitions=config.kafka_partitions,
        replication=config.kafka_replication_factor, topic_prefix=config.topic_prefix,
        max_conns=config.max_open_conns, route_cache_ttl_s=config.route_cache_ttl_s,
        route_backlog=config.route_backlog, advertise=advertise)
