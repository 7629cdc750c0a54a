"""ClusterRouter: local sessions in memory, user -> node in Redis, Kafka between nodes, etcd membership.

Same-node messages never touch a backend. A message to a user not connected here goes to the owning
node's topic; the sender's ack means "the owning node's topic has it" (acks=all). The owner comes
from a local cache of recipient -> node, filled by batched Redis lookups: a cached route saves the
Redis round trip of every message. A stale entry loses nothing: the node that no longer has the
user looks them up again and forwards the message once to their new node (or counts it as
undeliverable) and tells the sender's node to drop the entry. Backend failures are counted in
im_gateway_errors_total{kind=etcd|redis|kafka} and only cross-node traffic suffers: local delivery,
connects and disconnects never wait for a backend. Waiting for a backend is bounded per node
(`route_backlog`): past it a send is refused at once (route_failed) instead of queueing without end.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass

from loadgen.gateway.cluster import bus as kafka_bus
from loadgen.gateway.cluster.etcd import Membership
from loadgen.gateway.cluster.groupdir import GroupDirectory
from loadgen.gateway.cluster.sessions import Registry, node_of
from loadgen.gateway.metrics import Histogram
from loadgen.gateway.groups import GROUP_FULL
from loadgen.gateway.registry import LocalRouter, Session

log = logging.getLogger("loadgen.gateway.cluster")
REFRESH_S = 1.0  # heartbeat refreshes are flushed to Redis in batches this often
CACHE_SWEEP_S = 10.0  # expired route-cache entries are removed this often
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
    route_cache_ttl_s: float = 60.0  # a cached recipient -> node route is asked again after this long
    route_backlog: int = 10000  # messages waiting for the registry or for Kafka; more are refused at once
    advertise: str = ""  # this node's WebSocket endpoint, stored in etcd for operators


class ClusterRouter(LocalRouter):
    remote = True

    def __init__(self, node_id: str, settings: ClusterSettings, metrics, groups=None) -> None:
        super().__init__(groups)
        self.node_id = node_id
        self.s = settings
        self.metrics = metrics  # the gateway's GatewayMetrics: errors go to its errors table
        self.topic = kafka_bus.topic_for(settings.topic_prefix, node_id)
        self._seq = itertools.count(1)
        self._values: dict[str, str] = {}  # user -> this session's registry value "node#seq"
        self.membership = Membership(settings.etcd, node_id, {"ws": settings.advertise, "topic": self.topic},
                                     settings.lease_ttl_s, settings.timeout_s, lambda exc: self._error("etcd"))
        self.registry = Registry(settings.redis_url, settings.redis_password, settings.registry_ttl_s,
                                 settings.timeout_s, settings.max_conns, lambda exc: self._error("redis"),
                                 settings.route_backlog)
        self.directory = GroupDirectory(self.registry.redis, node_id, settings.timeout_s,
                                        lambda group: len(self.groups.members(group)),
                                        lambda exc: self._error("redis"), settings.route_backlog)
        self.group_records = {"sent": 0, "received": 0}  # group messages between nodes: one record per node
        self.bus = kafka_bus.Bus(settings.kafka, self.topic, settings.partitions, settings.replication,
                                 settings.timeout_s, self._on_record, lambda exc: self._error("kafka"),
                                 settings.route_backlog)
        self.deliveries = {"local": 0, "remote": 0}  # delivered to a session here, from this node / via Kafka
        self.forwarded = 0  # published to another node's topic (acked by the brokers)
        self.redirected = 0  # consumed here for a user who moved, forwarded once to their new node
        self.route_failed = 0
        self.refused = {"lookup": 0, "produce": 0}  # route_backlog full: refused at once
        self.cache: dict[str, tuple[str, float]] = {}  # recipient -> (node, monotonic expiry)
        self.cache_counts = {"hit": 0, "miss": 0, "stale": 0}
        self._origin = [("n", node_id.encode())]  # header: the sender's node (told when a route is stale)
        self.route_latency = Histogram()  # sender node's frame arrival -> delivery write here (wall clock)
        self._tasks: list[asyncio.Task] = []
        self._inflight: set[asyncio.Task] = set()

    def _error(self, kind: str) -> None:
        self.metrics.count(self.metrics.errors, kind)

    # --- lifecycle ---------------------------------------------------------------------------------
    async def start(self, ready_timeout_s: float | None = None) -> None:
        """Start the backends' loops; wait (bounded) until our topic is consumed, never fail."""
        self._tasks = [asyncio.create_task(self.membership.run(), name="etcd"),
                       asyncio.create_task(self.registry.run(REFRESH_S, self._reclaim), name="redis"),
                       asyncio.create_task(self.directory.run(), name="redis-groups"),
                       asyncio.create_task(self.registry.lookups(), name="redis-lookups"),
                       asyncio.create_task(self.bus.run(), name="kafka"),
                       asyncio.create_task(self.bus.drain(), name="kafka-produce"),
                       asyncio.create_task(self._sweep_cache(), name="route-cache")]
        try:
            await asyncio.wait_for(self.bus.consuming.wait(), ready_timeout_s or 3 * self.s.timeout_s)
        except asyncio.TimeoutError:
            log.warning("kafka not ready yet: serving local traffic, cross-node sends fail until it is")

    async def stop(self) -> None:
        if self.bus.pending:  # sends already acked to nobody yet: let them finish (bounded)
            deadline = time.monotonic() + self.s.timeout_s
            while self.bus.pending and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.membership.leave()  # other nodes stop routing here at once
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=self.s.timeout_s)
        await self.directory.release()
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
            try:
                await self.bus.publish(self._topic_of(node_of(old)), kafka_bus.KIND_KICK, user, old.encode(),
                                       [("ts", str(time.time_ns()).encode())])
            except kafka_bus.KafkaDown as exc:
                self._error("kafka")
                log.debug("kafka: kick to %s failed: %s", node_of(old), exc)

    def unregister(self, session: Session) -> None:
        if session.groups:
            self.leave_groups(session)
        if self._sessions.get(session.user) is session:
            del self._sessions[session.user]
            value = self._values.pop(session.user, None)
            if value is not None:
                self._spawn(self.registry.release(session.user, value))

    def _reclaim(self) -> dict[str, str]:
        """Redis came back (or restarted: its entries may be gone): every local session and group count again."""
        self.directory.rewrite(self.groups.names())
        return dict(self._values)

    def heartbeat(self, session: Session) -> None:
        value = self._values.get(session.user)
        if value is not None and self._sessions.get(session.user) is session:
            self.registry.touch(session.user, value)

    def deliver(self, to_user: str, frame: bytes) -> bool:
        if super().deliver(to_user, frame):
            self.deliveries["local"] += 1
            return True
        return False

    # --- groups ----------------------------------------------------------------------------------
    def _remote_counts(self, counts: dict | None) -> dict[str, int]:
        """Members per other live node (fields of nodes not in the etcd listing are a dead node's)."""
        live = self.membership.nodes
        return {node: n for node, n in (counts or {}).items() if n > 0 and node != self.node_id and node in live}

    def join(self, session: Session, group: str, done) -> None:
        """Local at once (members here get messages from now on); the answer, with the members on every live
        node, once our count is in Redis. Over groups.max_members cluster-wide: undone, group_full."""
        refused = self.groups.refusal(session, group)
        if refused is not None:
            done(refused)
            return
        new = self.groups.join(session, group)
        self.directory.changed(group)

        def counted(counts, error) -> None:
            total = len(self.groups.members(group)) + sum(self._remote_counts(counts).values())
            if new and total > self.groups.max_members and group in (session.groups or ()):
                self.leave(session, group)
                done((GROUP_FULL, f"group {group} has {self.groups.max_members} members (groups.max_members)"))
            else:
                done(total)

        if not self.directory.read(group, counted):
            counted(None, None)

    def leave(self, session: Session, group: str) -> bool:
        if super().leave(session, group):
            self.directory.changed(group)
            return True
        return False

    def leave_groups(self, session: Session) -> None:
        for group in self.groups.leave_all(session):
            self.directory.changed(group)

    def leave_counted(self, group: str, done) -> None:
        """After the next pipeline, which carries the leave's count (a read shares it with pending writes): a
        group message any node accepts from then on no longer counts the member who left. A Redis failure
        answers too (the count is written again once Redis is back)."""
        if not self.directory.read(group, lambda counts, error: done()):
            done()

    def gsend(self, session: Session, group: str, frame: bytes, done) -> None:
        """Local members at once; then one record per other live node with members (never one per member),
        each fanned out there. done(n, written here) once the brokers answered for every record: n counts the
        members on the nodes whose record they acked."""
        arrived_ns = time.time_ns()
        groups = self.groups
        local = groups.fan_out(group, frame, skip_session=session)
        groups.deliveries["local"] += local

        def finish(n: int) -> None:
            groups.messages += 1
            done(n, local)

        def counted(counts, error) -> None:
            if error is not None:  # counted as kind=redis: only the members here were addressed
                self.route_failed += 1
                finish(local)
                return
            targets = self._remote_counts(counts)
            if not targets:
                finish(local)
                return
            state = {"n": local, "pending": len(targets)}

            def acked(members: int, error) -> None:
                if error is None:
                    state["n"] += members
                    self.group_records["sent"] += 1
                else:
                    self._error("kafka")
                    self.route_failed += 1
                state["pending"] -= 1
                if state["pending"] == 0:
                    finish(state["n"])

            headers = [("ts", str(arrived_ns).encode()), *self._origin, ("f", session.user.encode())]
            for node, members in targets.items():
                cb = (lambda members: lambda error: acked(members, error))(members)
                if not self.bus.submit(self._topic_of(node), kafka_bus.KIND_GROUP, group, frame,
                                       headers + [("c", str(members).encode())], cb):
                    self.refused["produce"] += 1
                    acked(members, "backlog full")

        if not self.directory.read(group, counted):
            self.refused["lookup"] += 1
            self.route_failed += 1
            finish(local)

    def _on_group_record(self, group: str, frame: bytes, headers: dict) -> None:
        """A group message from another node: every member here but the sender; members the sender's node
        counted here but who are gone now (left or closed meanwhile) are counted as errors."""
        self.group_records["received"] += 1
        written = self.groups.fan_out(group, frame, skip_user=headers.get("f", b"").decode())
        self.groups.deliveries["remote"] += written
        m = self.metrics
        m.messages_sent += written
        origin_ns = int(headers.get("ts", b"0") or 0)
        if origin_ns and written:
            seconds = max(0, time.time_ns() - origin_ns) / 1e9
            self.route_latency.observe(seconds)
            m.latency.observe(seconds)
        missing = int(headers.get("c", b"0") or 0) - written
        if missing > 0:
            m.count(m.errors, "remote_group_member_gone", missing)

    # --- cross-node ------------------------------------------------------------------------------
    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def _topic_of(self, node: str) -> str:
        return kafka_bus.topic_for(self.s.topic_prefix, node)

    def _cached(self, user: str) -> str | None:
        entry = self.cache.get(user)
        if entry is None:
            return None
        node, expires = entry
        if expires < time.monotonic() or not self.membership.maybe_alive(node):
            del self.cache[user]
            return None
        return node

    async def _sweep_cache(self) -> None:
        while True:
            await asyncio.sleep(CACHE_SWEEP_S)
            now = time.monotonic()
            for user in [u for u, (_, expires) in self.cache.items() if expires < now]:
                del self.cache[user]

    def route(self, to_user: str, frame: bytes, done) -> None:
        """A user not connected here: find the owning node and hand it the frame. Calls done(None) once
        the owning node's topic has it, or done((kind, detail)) with why not."""
        arrived_ns = time.time_ns()
        node = self._cached(to_user)
        if node is not None:
            self.cache_counts["hit"] += 1
            self._forward(node, to_user, frame, arrived_ns, done)
            return
        self.cache_counts["miss"] += 1
        self._lookup(to_user, frame, done, arrived_ns, 0)

    def _lookup(self, to_user: str, frame: bytes, done, arrived_ns: int, attempt: int) -> None:
        def answered(value, error) -> None:
            if error is not None:  # counted as kind=redis by the registry
                self.route_failed += 1
                done(("route_failed", "session registry unavailable"))
                return
            node = node_of(value) if value else None
            if node is None and attempt < len(MISS_RETRY_S):  # a user who connected a moment ago
                asyncio.get_running_loop().call_later(MISS_RETRY_S[attempt], self._lookup, to_user, frame, done,
                                                      arrived_ns, attempt + 1)
                return
            if node is None or node == self.node_id or not self.membership.maybe_alive(node):
                # nobody has the user, or the session here just ended, or its node left the cluster
                local = self._sessions.get(to_user)
                if local is not None and local.push(frame):  # connected here meanwhile
                    self.deliveries["local"] += 1
                    done(None)
                else:
                    done(("unknown_recipient", f"user {to_user} is not connected"))
                return
            self.cache[to_user] = (node, time.monotonic() + self.s.route_cache_ttl_s)
            self._forward(node, to_user, frame, arrived_ns, done)

        if not self.registry.lookup_soon(to_user, answered):
            self.refused["lookup"] += 1
            self.route_failed += 1
            done(("route_failed", "session registry backlog full"))

    def _forward(self, node: str, to_user: str, frame: bytes, arrived_ns: int, done) -> None:
        def acked(error) -> None:
            if error is None:
                self.forwarded += 1
                done(None)
                return
            self._error("kafka")
            log.debug("kafka: publish to %s failed: %s", node, error)
            self.route_failed += 1
            done(("route_failed", "cross-node bus (Kafka) unavailable"))

        headers = [("ts", str(arrived_ns).encode()), *self._origin]
        if not self.bus.submit(self._topic_of(node), kafka_bus.KIND_MSG, to_user, frame, headers, acked):
            self.refused["produce"] += 1
            self.route_failed += 1
            done(("route_failed", "cross-node bus (Kafka) backlog full"))

    def _on_record(self, kind: bytes, to_user: str, value: bytes, headers: dict) -> None:
        session = self._sessions.get(to_user)
        if kind == kafka_bus.KIND_MSG:
            if session is not None and session.push(value):
                self._delivered(headers)
            else:
                self._misrouted(to_user, value, headers)
        elif kind == kafka_bus.KIND_GROUP:
            self._on_group_record(to_user, value, headers)
        elif kind == kafka_bus.KIND_KICK:  # the user connected to another node: drop our older session
            if session is not None and self._values.get(to_user) == value.decode():
                self.unregister(session)  # its entry belongs to the other node now: no delete
                session.replaced()
        elif kind == kafka_bus.KIND_STALE:  # our cached route to the user pointed at a node that lost them
            if self.cache.pop(to_user, None) is not None:
                self.cache_counts["stale"] += 1

    def _delivered(self, headers: dict) -> None:
        self.deliveries["remote"] += 1
        m = self.metrics
        m.messages_sent += 1
        origin_ns = int(headers.get("ts", b"0") or 0)
        if origin_ns:
            seconds = max(0, time.time_ns() - origin_ns) / 1e9
            self.route_latency.observe(seconds)
            m.latency.observe(seconds)

    def _misrouted(self, to_user: str, value: bytes, headers: dict) -> None:
        """A message for a user not (or no longer) connected here. The sender already has its ack: find
        the user's node now and forward it there once, else count it as undeliverable; and tell the
        sender's node that its route is stale."""
        origin = headers.get("n", b"").decode()
        if origin and origin != self.node_id:
            self.bus.submit(self._topic_of(origin), kafka_bus.KIND_STALE, to_user, b"", [], lambda error: None)
        if headers.get("h"):  # forwarded once already: no second hop
            self._error("remote_unknown_recipient")
            return

        def answered(owner, error) -> None:
            node = node_of(owner) if owner else None
            session = self._sessions.get(to_user)
            if session is not None and session.push(value):  # reconnected here meanwhile
                self._delivered(headers)
            elif error is None and node and node != self.node_id and self.membership.maybe_alive(node):
                fwd = [(k, v) for k, v in headers.items() if k in ("ts", "n")] + [("h", b"1")]
                if not self.bus.submit(self._topic_of(node), kafka_bus.KIND_MSG, to_user, value, fwd, redirected):
                    self._error("remote_unknown_recipient")
            else:
                # Acked to the sender (the brokers had it), but the user left (logged out, dropped, or its
                # session here is closing): undeliverable, counted so the operator sees it.
                self._error("remote_unknown_recipient")

        def redirected(error) -> None:
            if error is None:
                self.redirected += 1
            else:
                self._error("remote_unknown_recipient")

        if not self.registry.lookup_soon(to_user, answered):
            self._error("remote_unknown_recipient")

    # --- metrics ---------------------------------------------------------------------------------
    def render_metrics(self) -> str:
        node = f'node="{self.node_id}"'
        lines: list[str] = []

        def family(name: str, kind: str, help_: str, samples) -> None:
            """A metric family: samples are (extra labels, value)."""
            lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])
            lines.extend(f"{name}{{{node}{labels}}} {value}" for labels, value in samples)

        def by(label: str, table: dict):
            return [(f',{label}="{k}"', v) for k, v in table.items()]

        up = {"etcd": self.membership.up, "redis": self.registry.up, "kafka": self.bus.up}
        family("im_gateway_deliveries_total", "counter", "Messages delivered to a session here, by route "
               "(local: sender on this node; remote: from another node via Kafka).", by("route", self.deliveries))
        family("im_gateway_forwarded_total", "counter", "Messages published to the owning node's Kafka topic.",
               [("", self.forwarded)])
        family("im_gateway_redirected_total", "counter", "Messages consumed here for a user who moved, forwarded "
               "once to their new node.", [("", self.redirected)])
        family("im_gateway_group_records_total", "counter", "Group messages between nodes: records published to "
               "another node (sent, acked by the brokers) and consumed here (received); one per node with members "
               "per message.", by("direction", self.group_records))
        family("im_gateway_route_cache_total", "counter", "Cross-node sends by route cache result (stale: dropped "
               "because the node it named no longer had the user).", by("result", self.cache_counts))
        family("im_gateway_route_pending", "gauge", "Cross-node messages waiting for a backend now, by stage.",
               by("stage", {"lookup": self.registry.lookups_pending + self.directory.reads_pending,
                            "produce": self.bus.pending}))
        family("im_gateway_route_refused_total", "counter", "Cross-node sends refused at once because "
               "route_backlog messages already waited for that stage.", by("stage", self.refused))
        family("im_gateway_registry_operations_total", "counter", "Session registry (Redis) operations by result.",
               [(f',op="{op}",result="{res}"', n) for (op, res), n in sorted(self.registry.ops.items())])
        family("im_gateway_registry_lookups_total", "counter", "Registry lookups for cross-node sends by result.",
               by("result", {res: self.registry.ops.get(("lookup", res), 0) for res in ("hit", "miss", "error")}))
        family("im_gateway_cluster_nodes", "gauge", "Live gateway nodes listed in etcd.",
               [("", len(self.membership.nodes))])
        family("im_gateway_backend_up", "gauge", "1 when the backend answered its last operation.",
               by("backend", {k: int(bool(v)) for k, v in up.items()}))
        family("im_gateway_kafka_topic_replication_factor", "gauge", "Replication factor of this node's topic.",
               [(f',topic="{self.topic}"', self.bus.topic_rf or 0)])
        for name, hist, help_ in (
                ("im_gateway_kafka_produce_latency_seconds", self.bus.produce_latency,
                 "Publish to broker ack (acks=all)."),
                ("im_gateway_kafka_consume_latency_seconds", self.bus.consume_latency, "Publish to consumed here."),
                ("im_gateway_route_latency_seconds", self.route_latency,
                 "Cross-node: frame arrival on the sender's node to delivery write here (wall clocks)."),
                ("im_gateway_registry_lookup_latency_seconds", self.registry.lookup_latency,
                 "Redis lookup round trip (one MGET for a batch of users).")):
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
            lines += hist.exposition(name)
        return "\n".join(lines) + "\n"
