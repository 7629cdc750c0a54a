"""The session registry in Redis: user -> "node#session" with a TTL (the spec's Registry TTL).

- connect: SET ... EX ttl GET (the old owner, if another node, is told to drop its session);
- heartbeat (application ping): refreshed in batches, only while this node still owns the entry;
- disconnect: deleted only if this session still owns it (a newer connection elsewhere is kept);
- lookups for cross-node sends: batched (one MGET for every user asked about meanwhile, one in
  flight at a time), the waiting bounded (a full backlog refuses at once), and when Redis fails or
  hangs everyone waiting hears it at once instead of each waiting out the timeout in turn.
Every operation is bounded by the backend timeout; a failure is counted and the affected users are
claimed again once Redis answers, so entries lost during an outage come back by themselves.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from loadgen.gateway.metrics import Histogram

log = logging.getLogger("loadgen.gateway.cluster")
KEY_PREFIX = "im:session:"

# Claim (or refresh) an entry unless another node owns it now.
CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""
# Delete an entry only if this session still owns it.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
BATCH = 500


def node_of(value: str) -> str:
    return value.rpartition("#")[0]


class Registry:
    def __init__(self, url: str, password: str | None, ttl_s: float, timeout_s: float, max_conns: int,
                 on_error, max_pending: int = 10_000) -> None:
        self.ttl = max(1, int(round(ttl_s)))
        self.timeout_s = timeout_s
        self.on_error = on_error
        pool = aioredis.BlockingConnectionPool.from_url(
            url, password=password, max_connections=max(4, min(max_conns, 256)), timeout=timeout_s,
            socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True)
        self.redis = aioredis.Redis(connection_pool=pool)
        self._claim = self.redis.register_script(CLAIM)
        self._release = self.redis.register_script(RELEASE)
        self.pending: dict[str, str] = {}  # user -> value to claim/refresh at the next flush
        self.up = False
        self.ops: dict[tuple[str, str], int] = {}  # (op, result) -> count
        self.lookup_latency = Histogram()  # one MGET round trip
        self.max_pending = max_pending
        self._waiting: dict[str, list] = {}  # user -> callbacks of the lookups waiting for the next MGET
        self._wake = asyncio.Event()

    def _count(self, op: str, result: str, n: int = 1) -> None:
        self.ops[(op, result)] = self.ops.get((op, result), 0) + n

    def _failed(self, op: str, exc: BaseException, n: int = 1) -> None:
        self._count(op, "error", n)
        if self.up:
            log.warning("redis: %s failed: %r", op, exc)
        self.up = False
        self.on_error(exc)

    async def _bounded(self, coro):
        return await asyncio.wait_for(coro, self.timeout_s)

    # --- operations ------------------------------------------------------------------------------
    async def register(self, user: str, value: str) -> str | None:
        """Own the user now; returns the previous owner's value when it was another session."""
        try:
            old = await self._bounded(self.redis.set(KEY_PREFIX + user, value, ex=self.ttl, get=True))
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._failed("register", exc)
            self.pending[user] = value  # claimed again when Redis answers
            return None
        self.up = True
        self._count("register", "ok")
        return old if old and old != value else None

    def touch(self, user: str, value: str) -> None:
        self.pending[user] = value

    async def release(self, user: str, value: str) -> None:
        self.pending.pop(user, None)
        try:
            await self._bounded(self._release(keys=[KEY_PREFIX + user], args=[value]))
            self._count("unregister", "ok")
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._failed("unregister", exc)  # the entry expires within the TTL

    @property
    def lookups_pending(self) -> int:
        return len(self._waiting)

    def lookup_soon(self, user: str, callback) -> bool:
        """Ask who owns `user` with the next batch: callback(value or None, None), or callback(None, exc)
        when Redis failed. False (callback not called): the backlog is full."""
        waiting = self._waiting.get(user)
        if waiting is not None:  # already asked: one key, every caller answered
            waiting.append(callback)
            return True
        if len(self._waiting) >= self.max_pending:
            return False
        self._waiting[user] = [callback]
        self._wake.set()
        return True

    async def lookups(self) -> None:
        """Answer waiting lookups with one MGET per batch until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                users = list(itertools.islice(self._waiting, BATCH))
                t0 = time.monotonic()
                try:
                    values = await self._bounded(self.redis.mget([KEY_PREFIX + u for u in users]))
                except (RedisError, OSError, asyncio.TimeoutError) as exc:
                    failed, self._waiting = self._waiting, {}  # all of them would wait for the same Redis
                    self._failed("lookup", exc, len(failed))
                    for callbacks in failed.values():
                        for cb in callbacks:
                            cb(None, exc)
                    break
                self.up = True
                self.lookup_latency.observe(time.monotonic() - t0)
                hits = 0
                for user, value in zip(users, values):
                    hits += bool(value)
                    for cb in self._waiting.pop(user, ()):
                        cb(value, None)
                self._count("lookup", "hit", hits)
                self._count("lookup", "miss", len(users) - hits)

    async def flush(self, batch: dict[str, str]) -> None:
        """Claim/refresh entries in pipelines; on failure they stay pending."""
        items = list(batch.items())
        for i in range(0, len(items), BATCH):
            chunk = items[i:i + BATCH]
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for user, value in chunk:
                        await self._claim(keys=[KEY_PREFIX + user], args=[value, self.ttl], client=pipe)
                    results = await self._bounded(pipe.execute())
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                self._failed("refresh", exc, len(items) - i)
                for user, value in items[i:]:
                    self.pending.setdefault(user, value)
                return
            self.up = True
            owned = sum(1 for r in results if r == 1)
            self._count("refresh", "ok", owned)
            self._count("refresh", "lost", len(results) - owned)  # owned elsewhere now

    async def _server_id(self) -> str:
        return (await self._bounded(self.redis.info("server"))).get("run_id", "")

    async def run(self, interval_s: float, local_values) -> None:
        """Flush pending claims every interval. After an outage, or when Redis restarted meanwhile (its
        run_id changed: the entries may be gone), re-claim every local session."""
        run_id = None
        while True:
            await asyncio.sleep(interval_s)
            try:
                current = await self._server_id()
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                self._failed("probe", exc)
                continue
            if not self.up or (run_id is not None and current != run_id):
                self.pending.update(local_values())
                log.info("redis: up (server %s), re-claiming %d sessions", current[:8], len(self.pending))
            self.up, run_id = True, current
            if self.pending:
                batch, self.pending = self.pending, {}
                await self.flush(batch)

    async def close(self, local: dict[str, str]) -> None:
        """Release every local entry (bounded), then close the pool."""
        items = list(local.items())
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for user, value in items:
                    await self._release(keys=[KEY_PREFIX + user], args=[value], client=pipe)
                if items:
                    await self._bounded(pipe.execute())
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            log.warning("redis: could not release %d sessions at stop (they expire within %ds): %r",
                        len(items), self.ttl, exc)
        try:
            await self._bounded(self.redis.aclose())
        except (RedisError, OSError, asyncio.TimeoutError):
            pass
