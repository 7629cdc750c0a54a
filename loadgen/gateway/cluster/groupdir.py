"""Which nodes have members of a group, in Redis: a hash `im:group:<group>` of node id -> its member count.

Each node writes only its own field, as an absolute count (HSET; HDEL at zero), so a write can be repeated
after a failure or a Redis restart without drifting. Writes and reads go out together, one pipeline at a time:
a join's write and the read that answers it (`joined` with the members on every node) share a pipeline, so the
answer includes it; a group message reads the counts that decide which nodes get a record and what its ack's
`n` says. Readers ignore fields of nodes that are not in the live etcd listing (a dead node's counts).
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

log = logging.getLogger("loadgen.gateway.cluster")
KEY_PREFIX = "im:group:"
BATCH = 500
RETRY_S = 1.0


class GroupDirectory:
    def __init__(self, redis, node_id: str, timeout_s: float, local_count, on_error, max_pending: int) -> None:
        self.redis = redis
        self.node_id = node_id
        self.timeout_s = timeout_s
        self.local_count = local_count  # group -> members on this node now
        self.on_error = on_error
        self.max_pending = max_pending
        self.dirty: set[str] = set()  # groups whose count here changed since the last write
        self.written: set[str] = set()  # groups where our field exists (released at stop)
        self._reads: dict[str, list] = {}  # group -> callbacks waiting for its counts (for the next pipeline)
        self._reading = 0  # reads in the pipeline under way
        self._wake = asyncio.Event()

    @property
    def reads_pending(self) -> int:
        return len(self._reads) + self._reading

    def changed(self, group: str) -> None:
        self.dirty.add(group)
        self._wake.set()

    def rewrite(self, groups) -> None:
        """Write every given group again (Redis restarted, its hashes may be gone)."""
        self.dirty.update(groups)
        self._wake.set()

    def read(self, group: str, callback) -> bool:
        """callback({node: count}, None) after the next pipeline (which includes pending writes), or
        callback(None, exc). False (callback not called): too many reads wait already."""
        waiting = self._reads.get(group)
        if waiting is not None:
            waiting.append(callback)
            return True
        if len(self._reads) >= self.max_pending:
            return False
        self._reads[group] = [callback]
        self._wake.set()
        return True

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.dirty or self._reads:
                writes = [self.dirty.pop() for _ in range(min(BATCH, len(self.dirty)))]
                # taken now: a read asked for while this pipeline is under way waits for the next one, which
                # carries the writes made meanwhile (a join's or leave's answer must include its own write)
                reads = {g: self._reads.pop(g) for g in list(self._reads)[:BATCH]}
                self._reading = len(reads)
                counts = {g: self.local_count(g) for g in writes}
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for group, n in counts.items():
                            if n:
                                pipe.hset(KEY_PREFIX + group, self.node_id, n)
                            else:
                                pipe.hdel(KEY_PREFIX + group, self.node_id)
                        for group in reads:
                            pipe.hgetall(KEY_PREFIX + group)
                        results = await asyncio.wait_for(pipe.execute(), self.timeout_s)
                except (RedisError, OSError, asyncio.TimeoutError) as exc:
                    self._reading = 0
                    self.on_error(exc)
                    self.dirty.update(writes)  # written again once Redis answers
                    for callbacks in reads.values():
                        for cb in callbacks:
                            cb(None, exc)
                    await asyncio.sleep(RETRY_S)
                    continue
                for group, n in counts.items():
                    (self.written.add if n else self.written.discard)(group)
                self._reading = 0
                for (group, callbacks), fields in zip(reads.items(), results[len(counts):]):
                    found = {node: int(v) for node, v in fields.items()}
                    for cb in callbacks:
                        cb(found, None)

    async def release(self) -> None:
        """At stop: remove our field from every group (bounded); a node that dies leaves them to the
        readers' live-node check."""
        groups = list(self.written)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for group in groups:
                    pipe.hdel(KEY_PREFIX + group, self.node_id)
                if groups:
                    await asyncio.wait_for(pipe.execute(), self.timeout_s)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            log.warning("redis: could not release %d group counts at stop: %r", len(groups), exc)
