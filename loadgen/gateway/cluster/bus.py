"""Kafka between gateway nodes: one topic per node, a producer for sends, a consumer of our topic.

The node's topic is created at start with replication factor min(configured, live brokers). The
consumer starts at the end of the topic (a node only delivers to sessions it holds now). If Kafka is
down at start, or goes away later, the supervisor retries; sends fail fast (counted) meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

log = logging.getLogger("loadgen.gateway.cluster")
KIND_MSG, KIND_KICK = b"m", b"k"
RETRY_S = 2.0


def topic_for(prefix: str, node_id: str) -> str:
    return prefix + re.sub(r"[^A-Za-z0-9._-]", "_", node_id)


class KafkaDown(Exception):
    pass


class Bus:
    def __init__(self, bootstrap: str, topic: str, partitions: int, replication: int, timeout_s: float,
                 on_message, on_error) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.replication = replication
        self.timeout_s = timeout_s
        self.on_message = on_message  # (kind, to_user, value, origin_ns) for each consumed record
        self.on_error = on_error
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.topic_rf: int | None = None
        self.partition_ids: list[int] = []
        self.consuming = asyncio.Event()
        self.produce_seconds: list[float] = []
        self.consume_seconds: list[float] = []

    @property
    def up(self) -> bool:
        return self.producer is not None and self.consuming.is_set()

    async def _ensure_topic(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=int(self.timeout_s * 1000))
        await asyncio.wait_for(admin.start(), self.timeout_s)
        try:
            brokers = (await asyncio.wait_for(admin.describe_cluster(), self.timeout_s))["brokers"]
            rf = max(1, min(self.replication, len(brokers)))
            try:
                reply = await asyncio.wait_for(admin.create_topics([NewTopic(self.topic, self.partitions, rf)]),
                                               self.timeout_s)
                code = reply.topic_errors[0][1]
            except TopicAlreadyExistsError:
                code = TopicAlreadyExistsError.errno
            if code == 0:
                log.info("kafka: created topic %s (%d partitions, replication factor %d of %d brokers)",
                         self.topic, self.partitions, rf, len(brokers))
            elif code != TopicAlreadyExistsError.errno:
                raise KafkaDown(f"cannot create topic {self.topic}: {reply.topic_errors[0]}")
            described = await asyncio.wait_for(admin.describe_topics([self.topic]), self.timeout_s)
            parts = described[0].get("partitions") or []
            if not parts:
                raise KafkaDown(f"topic {self.topic} has no partitions yet")
            self.partition_ids = sorted(p["partition"] for p in parts)
            self.topic_rf = len(parts[0]["replicas"])
        finally:
            await admin.close()

    async def _start_producer(self) -> None:
        # a batch per partition is in flight at a time: a large batch keeps up with bursts (16 KiB = ~15 messages)
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=0, max_batch_size=1 << 20,
                                    request_timeout_ms=int(self.timeout_s * 1000), retry_backoff_ms=100)
        try:
            await asyncio.wait_for(producer.start(), self.timeout_s)
        except BaseException:
            await producer.stop()
            raise
        self.producer = producer

    async def _consume(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, auto_offset_reset="latest", enable_auto_commit=False,
            fetch_max_wait_ms=100, request_timeout_ms=max(int(self.timeout_s * 1000), 10_000))
        try:
            await asyncio.wait_for(consumer.start(), self.timeout_s)
            tps = [TopicPartition(self.topic, p) for p in self.partition_ids]
            consumer.assign(tps)  # no consumer group: this node alone reads its topic
            # position at the end now, so that nothing sent after start is skipped
            await asyncio.wait_for(consumer.seek_to_end(*tps), self.timeout_s)
            for tp in tps:
                await asyncio.wait_for(consumer.position(tp), self.timeout_s)
        except BaseException:
            await consumer.stop()
            raise
        self.consumer = consumer
        self.consuming.set()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
                for records in batches.values():
                    now = time.time_ns()
                    for rec in records:
                        headers = dict(rec.headers or ())
                        published = int(headers.get("pt", b"0") or 0)
                        if published:
                            self.consume_seconds.append(max(0, now - published) / 1e9)
                        origin = int(headers.get("ts", b"0") or 0)
                        self.on_message(headers.get("k", KIND_MSG), (rec.key or b"").decode(), rec.value, origin)
        finally:
            self.consuming.clear()
            self.consumer = None
            await consumer.stop()

    async def run(self) -> None:
        """Supervisor: topic, producer, consumer; retried until they work, restarted if they fail."""
        while True:
            try:
                if self.topic_rf is None:
                    await self._ensure_topic()
                if self.producer is None:
                    await self._start_producer()
                log.info("kafka: producing, consuming %s", self.topic)
                await self._consume()
            except asyncio.CancelledError:
                raise
            except (KafkaError, KafkaDown, asyncio.TimeoutError, OSError, KeyError, IndexError) as exc:
                log.warning("kafka: %r; retrying in %gs", exc, RETRY_S)
                self.on_error(exc)
                await asyncio.sleep(RETRY_S)

    async def publish(self, topic: str, kind: bytes, to_user: str, value: bytes, origin_ns: int) -> None:
        """Hand a record to the brokers (acks=all); raises KafkaDown when that fails within the timeout.

        origin_ns: wall-clock arrival of the message at the sender's node (header ts); pt: publish time.
        """
        producer = self.producer
        if producer is None:
            raise KafkaDown("producer not connected")
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(producer.send_and_wait(
                topic, value, key=to_user.encode(), headers=[("k", kind), ("ts", str(origin_ns).encode()), ("pt", str(time.time_ns()).encode())]),
                self.timeout_s * 1.5)  # the producer's own expiry (request_timeout_ms) fails the batch first
        except (KafkaError, asyncio.TimeoutError, OSError) as exc:
            raise KafkaDown(repr(exc)) from exc
        self.produce_seconds.append(time.monotonic() - t0)

    async def close(self) -> None:
        if self.producer is not None:
            try:
                await asyncio.wait_for(self.producer.stop(), self.timeout_s)
            except (KafkaError, asyncio.TimeoutError, OSError):
                pass
            self.producer = None
