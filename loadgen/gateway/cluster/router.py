"""ClusterRouter: local sessions in memory, user -> node in Redis, Kafka between nodes, etcd membership.

Same-node messages never touch a backend. A message to a user not connected here is looked up in
Redis and published to the owning node's topic; the sender's ack means "the owning node's topic has
it" (acks=all). Backend failures are counted in im_gateway_errors_total{kind=etcd|redis|kafka} and
only cross-node traffic suffers: local delivery, connects and disconnects never wait for a backend.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass

from loadgen.gateway.cluster import bus as kafka_bus
from loadgen.gateway.cluster.etcd import Membership
from loadgen.gateway.cluster.sessions import Registry, node_of
from loadgen.gateway.metrics import Histogram
from loadgen.gateway.registry import LocalRouter, Session

log = logging.getLogger("loadgen.gateway.cluster")
REFRESH_S = 1.0  # heartbeat refreshes are flushed to Redis in batches this often
# A registry miss is asked again after these pauses before the sender hears "unknown_recipient": the
# owning node registers a user right after the handshake, and a peer may already be sending to them.
MISS_RETRY_S = (0.05, 0.2)


@dataclass(frozen=True)
class ClusterSettings:
    etcd: list[str]
    redis_url: str
    kafka: str
    redis_password: str | None = None
    registry_ttl_s: float = 90.0
    lease_ttl_s: float = 10.0
    timeout_s: float = 5.0
    partitions: int = 1
    replication: int = 3
    topic_prefix: str = "im-gateway.node."
    max_conns: int = 10000
    advertise: str = ""  # this node's WebSocket endpoint, stored in etcd for operators


class ClusterRouter(LocalRouter):
    remote = True

    def __init__(self, node_id: str, settings: ClusterSettings, metrics) -> None:
        super().__init__()
        self.node_id = node_id
        self.s = settings
        self.metrics = metrics  # the gateway's GatewayMetrics: errors go to its errors table
        self.topic = kafka_bus.topic_for(settings.topic_prefix, node_id)
        self._seq = itertools.count(1)
        self._values: dict[str, str] = {}  # user -> this session's registry value "node#seq"
        self.membership = Membership(settings.etcd, node_id, {"ws": settings.advertise, "topic": self.topic},
                                     settings.lease_ttl_s, settings.timeout_s, lambda exc: self._error("etcd"))
        self.registry = Registry(settings.redis_url, settings.redis_password, settings.registry_ttl_s,
                                 settings.timeout_s, settings.max_conns, lambda exc: self._error("redis"))
        self.bus = kafka_bus.Bus(settings.kafka, self.topic, settings.partitions, settings.replication,
                                 settings.timeout_s, self._on_record, lambda exc: self._error("kafka"))
        self.deliveries = {"local": 0, "remote": 0}  # delivered to a session here, from this node / via Kafka
        self.forwarded = 0  # published to another node's topic (acked by the brokers)
        self.route_failed = 0
        self.produce_latency = Histogram()
        self.consume_latency = Histogram()
        self.route_latency = Histogram()  # sender node's frame arrival -> delivery write here (wall clock)
        self.lookup_latency = Histogram()
        self._tasks: list[asyncio.Task] = []
        self._inflight: set[asyncio.Task] = set()

    def _error(self, kind: str) -> None:
        self.metrics.count(self.metrics.errors, kind)

    # --- lifecycle ---------------------------------------------------------------------------------
    async def start(self, ready_timeout_s: float | None = None) -> None:
        """Start the backends' loops; wait (bounded) until our topic is consumed, never fail."""
        self._tasks = [asyncio.create_task(self.membership.run(), name="etcd"),
                       asyncio.create_task(self.registry.run(REFRESH_S, lambda: dict(self._values)), name="redis"),
                       asyncio.create_task(self.bus.run(), name="kafka")]
        try:
            await asyncio.wait_for(self.bus.consuming.wait(), ready_timeout_s or 3 * self.s.timeout_s)
        except asyncio.TimeoutError:
            log.warning("kafka not ready yet: serving local traffic, cross-node sends fail until it is")

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.membership.leave()  # other nodes stop routing here at once
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=self.s.timeout_s)
        await self.registry.close(dict(self._values))
        await self.bus.close()

    # --- sessions --------------------------------------------------------------------------------
    def register(self, session: Session) -> None:
        super().register(session)
        value = f"{self.node_id}#{next(self._seq)}"
        self._values[session.user] = value
        self._spawn(self._claim(session.user, value))

    async def _claim(self, user: str, value: str) -> None:
        old = await self.registry.register(user, value)
        if old is not None and node_of(old) != self.node_id:  # the user was connected elsewhere: tell that node
            await self._publish(node_of(old), kafka_bus.KIND_KICK, user, old.encode(), time.time_ns())

    def unregister(self, session: Session) -> None:
        if self._sessions.get(session.user) is session:
            del self._sessions[session.user]
            value = self._values.pop(session.user, None)
            if value is not None:
                self._spawn(self.registry.release(session.user, value))

    def heartbeat(self, session: Session) -> None:
        value = self._values.get(session.user)
        if value is not None and self._sessions.get(session.user) is session:
            self.registry.touch(session.user, value)

    def deliver(self, to_user: str, frame: bytes) -> bool:
        if super().deliver(to_user, frame):
            self.deliveries["local"] += 1
            return True
        return False

    # --- cross-node ------------------------------------------------------------------------------
    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def route(self, to_user: str, frame: bytes, done) -> None:
        """A user not connected here: find the owning node and hand it the frame. Calls done(None) once
        the owning node's topic has it, or done((kind, detail)) with why not."""
        self._spawn(self._route(to_user, frame, done, time.time_ns()))

    async def _route(self, to_user: str, frame: bytes, done, arrived_ns: int) -> None:
        try:
            value = await self.registry.lookup(to_user)
            for delay in MISS_RETRY_S:  # a user who connected a moment ago may not be registered yet
                if value:
                    break
                await asyncio.sleep(delay)
                value = await self.registry.lookup(to_user)
        except Exception:  # counted as kind=redis by the registry
            self.route_failed += 1
            done(("route_failed", "session registry unavailable"))
            return
        node = node_of(value) if value else None
        if node is None or node == self.node_id or not self.membership.maybe_alive(node):
            # nobody has the user, or the session here just ended, or its node left the cluster
            local = self._sessions.get(to_user)
            if local is not None:  # connected here meanwhile
                local.push(frame)
                self.deliveries["local"] += 1
                done(None)
            else:
                done(("unknown_recipient", f"user {to_user} is not connected"))
            return
        if await self._publish(node, kafka_bus.KIND_MSG, to_user, frame, arrived_ns):
            self.forwarded += 1
            done(None)
        else:
            self.route_failed += 1
            done(("route_failed", "cross-node bus (Kafka) unavailable"))

    async def _publish(self, node: str, kind: bytes, to_user: str, value: bytes, origin_ns: int) -> bool:
        try:
            await self.bus.publish(kafka_bus.topic_for(self.s.topic_prefix, node), kind, to_user, value, origin_ns)
            return True
        except kafka_bus.KafkaDown as exc:
            self._error("kafka")
            log.debug("kafka: publish to %s failed: %s", node, exc)
            return False

    def _on_record(self, kind: bytes, to_user: str, value: bytes, origin_ns: int) -> None:
        session = self._sessions.get(to_user)
        if kind == kafka_bus.KIND_KICK:  # the user connected to another node: drop our older session
            if session is not None and self._values.get(to_user) == value.decode():
                self.unregister(session)  # its entry belongs to the other node now: no delete
                session.replaced()
            return
        if session is None or not session.push(value):
            # Acked to the sender (the brokers had it), but the user left meanwhile (logged out, dropped, or
            # its session here is closing): undeliverable, counted so the operator sees it.
            self._error("remote_unknown_recipient")
            return
        self.deliveries["remote"] += 1
        m = self.metrics
        m.messages_sent += 1
        if origin_ns:
            seconds = max(0, time.time_ns() - origin_ns) / 1e9
            self.route_latency.observe(seconds)
            m.latency.observe(seconds)

    # --- metrics ---------------------------------------------------------------------------------
    def _drain(self) -> None:
        for src, hist in ((self.bus.produce_seconds, self.produce_latency),
                          (self.bus.consume_seconds, self.consume_latency),
                          (self.registry.lookup_seconds, self.lookup_latency)):
            for v in src:
                hist.observe(v)
            src.clear()

    def render_metrics(self) -> str:
        self._drain()
        node = f'node="{self.node_id}"'
        up = {"etcd": self.membership.up, "redis": self.registry.up, "kafka": self.bus.up}
        lines = ["# HELP im_gateway_deliveries_total Messages delivered to a session here, by route "
                 "(local: sender on this node; remote: from another node via Kafka).",
                 "# TYPE im_gateway_deliveries_total counter"]
        lines += [f'im_gateway_deliveries_total{{{node},route="{k}"}} {v}' for k, v in self.deliveries.items()]
        lines += ["# HELP im_gateway_forwarded_total Messages published to the owning node's Kafka topic.",
                  "# TYPE im_gateway_forwarded_total counter",
                  f"im_gateway_forwarded_total{{{node}}} {self.forwarded}",
                  "# HELP im_gateway_registry_operations_total Session registry (Redis) operations by result.",
                  "# TYPE im_gateway_registry_operations_total counter"]
        lines += [f'im_gateway_registry_operations_total{{{node},op="{op}",result="{res}"}} {n}'
                  for (op, res), n in sorted(self.registry.ops.items())]
        lines += ["# HELP im_gateway_registry_lookups_total Registry lookups for cross-node sends by result.",
                  "# TYPE im_gateway_registry_lookups_total counter"]
        lines += [f'im_gateway_registry_lookups_total{{{node},result="{res}"}} {self.registry.ops.get(("lookup", res), 0)}'
                  for res in ("hit", "miss", "error")]
        lines += ["# HELP im_gateway_cluster_nodes Live gateway nodes listed in etcd.",
                  "# TYPE im_gateway_cluster_nodes gauge",
                  f"im_gateway_cluster_nodes{{{node}}} {len(self.membership.nodes)}",
                  "# HELP im_gateway_backend_up 1 when the backend answered its last operation.",
                  "# TYPE im_gateway_backend_up gauge"]
        lines += [f'im_gateway_backend_up{{{node},backend="{k}"}} {int(bool(v))}' for k, v in up.items()]
        lines += ["# HELP im_gateway_kafka_topic_replication_factor Replication factor of this node's topic.",
                  "# TYPE im_gateway_kafka_topic_replication_factor gauge",
                  f'im_gateway_kafka_topic_replication_factor{{{node},topic="{self.topic}"}} {self.bus.topic_rf or 0}']
        for name, hist, help_ in (
                ("im_gateway_kafka_produce_latency_seconds", self.produce_latency, "Publish to broker ack (acks=all)."),
                ("im_gateway_kafka_consume_latency_seconds", self.consume_latency, "Publish to consumed here."),
                ("im_gateway_route_latency_seconds", self.route_latency,
                 "Cross-node: frame arrival on the sender's node to delivery write here (wall clocks)."),
                ("im_gateway_registry_lookup_latency_seconds", self.lookup_latency, "Redis lookup round trip.")):
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
            lines += hist.exposition(name)
        return "\n".join(lines) + "\n"
