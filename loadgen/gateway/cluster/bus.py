"""Kafka between gateway nodes: one topic per node, a producer for sends, a consumer of our topic.

The node's topic is created at start with replication factor min(configured, live brokers). The
consumer starts at the end of the topic (a node only delivers to sessions it holds now). If Kafka is
down at start, or goes away later, the supervisor retries; sends fail fast (counted) meanwhile.

Sends are not a task each: `submit` queues the record (bounded: a full queue refuses at once) and one
drainer hands the queue to the producer, whose accumulator batches what arrives while the previous
batch is in flight; each record's callback runs when the brokers acked its batch, or with the reason
it failed (the backend timeout bounds the wait).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
import zlib

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

log = logging.getLogger("loadgen.gateway.cluster")
from loadgen.gateway.metrics import Histogram

# record kinds (header k): a message for a user, "drop your older session of this user", "your
# cached route to this user is stale" (sent back to the sender's node by a node that no longer has them),
# and a group message (key: the group; one record per node with members, fanned out there)
KIND_MSG, KIND_KICK, KIND_STALE, KIND_GROUP = b"m", b"k", b"s", b"g"
RETRY_S = 2.0
# Fewer, larger Kafka requests (each costs a write() and a request parse on both ends): the producer waits up
# to LINGER_MS to fill a batch, the broker holds a fetch until FETCH_MIN_BYTES arrived or FETCH_MAX_WAIT_MS
# passed. Together they add at most ~15 ms to a cross-node message.
LINGER_MS = 5
FETCH_MIN_BYTES, FETCH_MAX_WAIT_MS = 64 * 1024, 10


def topic_for(prefix: str, node_id: str) -> str:
    return prefix + re.sub(r"[^A-Za-z0-9._-]", "_", node_id)


class KafkaDown(Exception):
    pass


class Bus:
    def __init__(self, bootstrap: str, topic: str, partitions: int, replication: int, timeout_s: float,
                 on_message, on_error, max_pending: int = 10_000) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.replication = replication
        self.timeout_s = timeout_s
        self.on_message = on_message  # (kind, to_user, value, headers) for each consumed record
        self.on_error = on_error
        self.max_pending = max_pending
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.topic_rf: int | None = None
        self.partition_ids: list[int] = []
        self.consuming = asyncio.Event()
        self.produce_latency = Histogram()  # submit to broker ack (acks=all)
        self.consume_latency = Histogram()  # publish on the sender's node to consumed here
        self._queue: collections.deque = collections.deque()  # records not yet handed to the producer
        self._wake = asyncio.Event()
        self.unacked = 0  # handed to the producer, ack not yet in
        self._topic_partitions: dict[str, int] = {}

    @property
    def up(self) -> bool:
        return self.producer is not None and self.consuming.is_set()

    @property
    def pending(self) -> int:
        """Records submitted whose outcome is not known yet (queued + awaiting the brokers' ack)."""
        return len(self._queue) + self.unacked

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
        # a batch per partition is in flight at a time: a large batch keeps up with bursts (16 KiB = ~15 messages).
        # LINGER_MS: a request per few ms instead of one per record or two (measured in the lab: a write()
        # per produce request was the gateway's largest cost after the registry, and the brokers' too)
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=LINGER_MS,
                                    max_batch_size=1 << 20,
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
            fetch_min_bytes=FETCH_MIN_BYTES, fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            request_timeout_ms=max(int(self.timeout_s * 1000), 10_000))
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
                observe, on_message = self.consume_latency.observe, self.on_message
                for records in batches.values():
                    now = time.time_ns()
                    for rec in records:
                        headers = dict(rec.headers or ())
                        published = int(headers.get("pt", b"0") or 0)
                        if published:
                            observe(max(0, now - published) / 1e9)
                        on_message(headers.get("k", KIND_MSG), (rec.key or b"").decode(), rec.value, headers)
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

    def submit(self, topic: str, kind: bytes, to_user: str, value: bytes, headers: list, done) -> bool:
        """Queue a record for `topic`; done(None) once the brokers have it (acks=all), done(reason) when not.
        False (done not called): the queue is full, the caller counts the refusal."""
        if len(self._queue) + self.unacked >= self.max_pending:
            return False
        self._queue.append((topic, kind, to_user, value, headers, done, time.monotonic()))
        self._wake.set()
        return True

    async def publish(self, topic: str, kind: bytes, to_user: str, value: bytes, headers: list) -> None:
        """submit, awaited; raises KafkaDown when the record did not reach the brokers."""
        fut = asyncio.get_running_loop().create_future()
        if not self.submit(topic, kind, to_user, value, headers,
                           lambda error: fut.done() or fut.set_result(error)):
            raise KafkaDown("send queue full")
        error = await fut
        if error is not None:
            raise KafkaDown(error)

    async def drain(self) -> None:
        """Hand queued records to the producer, in order, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                topic, kind, to_user, value, headers, done, t0 = self._queue.popleft()
                producer = self.producer
                if producer is None:
                    done("producer not connected")
                    continue
                if time.monotonic() - t0 > self.timeout_s:  # queued behind a stalled accumulator: answer now
                    done("waited longer than the backend timeout for the producer")
                    continue
                try:
                    partition = self._topic_partitions.get(topic)
                    if partition is None:
                        partition = self._topic_partitions[topic] = len(
                            await asyncio.wait_for(producer.partitions_for(topic), self.timeout_s))
                    key = to_user.encode()
                    # our own partitioner: the same user always lands in the same partition, without
                    # aiokafka's murmur2 in Python for every record. No wait_for here (a task per record):
                    # send() waits only for room in the accumulator, bounded by request_timeout_ms.
                    fut = await producer.send(
                        topic, value, key=key, partition=zlib.crc32(key) % partition if partition > 1 else 0,
                        headers=[("k", kind), *headers, ("pt", str(time.time_ns()).encode())])
                except Exception as exc:  # noqa: BLE001 - answered and counted; the drainer must go on
                    self._topic_partitions.pop(topic, None)
                    done(repr(exc))
                    continue
                self._track(loop, fut, done, t0)

    def _track(self, loop, fut, done, t0: float) -> None:
        """done once: at the brokers' ack or failure, or after 1.5 x the backend timeout (the producer's
        own expiry, request_timeout_ms, normally fails the batch first; a late ack is then ignored: the
        record may still arrive, at least once, as after any producer timeout)."""
        self.unacked += 1
        answered = False

        def expire() -> None:
            nonlocal answered
            if not answered:
                answered = True
                self.unacked -= 1
                done("no broker ack within the backend timeout")

        timer = loop.call_later(self.timeout_s * 1.5, expire)

        def acked(f) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            timer.cancel()
            self.unacked -= 1
            exc = None if not f.cancelled() else "cancelled"
            exc = exc or f.exception()
            if exc is not None:
                done(repr(exc))
                return
            self.produce_latency.observe(time.monotonic() - t0)
            done(None)

        fut.add_done_callback(acked)

    async def close(self) -> None:
        if self.producer is not None:
            try:
                await asyncio.wait_for(self.producer.stop(), self.timeout_s)
            except (KafkaError, asyncio.TimeoutError, OSError):
                pass
            self.producer = None
