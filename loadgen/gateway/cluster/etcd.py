"""etcd membership over the v3 JSON gateway (etcd >= 3.4: /v3/lease/grant, /v3/kv/put, ...).

The node's key lives under a lease: keepalives every third of the TTL keep it; a node that dies
(or loses etcd) disappears from every member's list within the TTL. Errors never escape: they are
counted and the loop tries again, re-granting the lease when etcd forgot it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time

import aiohttp

log = logging.getLogger("loadgen.gateway.cluster")
PREFIX = "/loadgen/gateways/"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def prefix_end(prefix: str) -> str:
    """etcd range_end for 'every key starting with prefix' (last byte + 1)."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


class EtcdError(Exception):
    pass


class Membership:
    def __init__(self, endpoints: list[str], node_id: str, info: dict, ttl_s: float, timeout_s: float,
                 on_error) -> None:
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.node_id = node_id
        self.info = info
        self.ttl = max(2, int(round(ttl_s)))
        self.timeout_s = timeout_s
        self.on_error = on_error  # called with an exception each time an operation fails
        self.lease: str | None = None
        self.nodes: dict[str, dict] = {}  # live members: node id -> info
        self.departed: set[str] = set()  # listed once, gone since (lease expired or revoked)
        self.last_ok = 0.0  # monotonic time of the last successful listing
        self.up = False
        self._session: aiohttp.ClientSession | None = None
        self._next = 0  # endpoint to try first

    # --- HTTP ------------------------------------------------------------------------------------
    async def _call(self, path: str, body: dict) -> dict:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        last: Exception | None = None
        for i in range(len(self.endpoints)):  # the next member when one is down
            ep = self.endpoints[(self._next + i) % len(self.endpoints)]
            try:
                async with self._session.post(ep + path, data=json.dumps(body)) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        raise EtcdError(f"{path}: HTTP {resp.status} {text[:200]}")
                    self._next = (self._next + i) % len(self.endpoints)
                    return json.loads(text)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, EtcdError) as exc:
                last = exc
        raise EtcdError(f"etcd unreachable ({', '.join(self.endpoints)}): {last!r}")

    # --- operations ------------------------------------------------------------------------------
    @property
    def key(self) -> str:
        return PREFIX + self.node_id

    async def join(self) -> None:
        grant = await self._call("/v3/lease/grant", {"TTL": self.ttl})
        lease = grant.get("ID")
        if not lease:
            raise EtcdError(f"lease grant refused: {grant}")
        await self._call("/v3/kv/put", {"key": _b64(self.key), "value": _b64(json.dumps(self.info)), "lease": lease})
        self.lease = lease
        log.info("etcd: %s joined under lease %s (TTL %ds)", self.node_id, lease, self.ttl)

    async def keepalive(self) -> bool:
        """False when etcd no longer knows the lease (expired during an outage): join again."""
        reply = await self._call("/v3/lease/keepalive", {"ID": self.lease})
        return int(reply.get("result", {}).get("TTL", 0) or 0) > 0

    async def list_nodes(self) -> dict[str, dict]:
        reply = await self._call("/v3/kv/range", {"key": _b64(PREFIX), "range_end": _b64(prefix_end(PREFIX))})
        nodes = {}
        for kv in reply.get("kvs", []):
            name = base64.b64decode(kv["key"]).decode()[len(PREFIX):]
            try:
                nodes[name] = json.loads(base64.b64decode(kv.get("value", "")) or b"{}")
            except ValueError:
                nodes[name] = {}
        return nodes

    async def step(self) -> None:
        if self.lease is None or not await self.keepalive():
            self.lease = None
            await self.join()
        nodes = await self.list_nodes()
        self.departed = (self.departed | (self.nodes.keys() - nodes.keys())) - nodes.keys()
        self.nodes = nodes
        self.last_ok = time.monotonic()

    async def run(self) -> None:
        """Keep the lease alive and the member list fresh until cancelled."""
        while True:
            try:
                await self.step()
                if not self.up:
                    log.info("etcd: up, %d live nodes", len(self.nodes))
                self.up = True
            except EtcdError as exc:
                if self.up or self.last_ok == 0.0:
                    log.warning("etcd: %s", exc)
                self.up = False
                self.on_error(exc)
            await asyncio.sleep(self.ttl / 3)

    def maybe_alive(self, node: str) -> bool:
        """False only for a node seen leaving the cluster (a node that joined after our last listing is
        alive; with etcd unreachable the last listing stands)."""
        return node not in self.departed

    async def leave(self) -> None:
        try:
            if self.lease is not None:
                await self._call("/v3/lease/revoke", {"ID": self.lease})  # the key goes with it
                self.lease = None
        except EtcdError as exc:
            log.warning("etcd: leave failed (the key expires with its lease): %s", exc)
        if self._session is not None:
            await self._session.close()
            self._session = None
