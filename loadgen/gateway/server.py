"""The reference gateway's I/O: picows WebSocket sessions, the metrics HTTP endpoint, timeouts."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import signal
import sys
import time
from urllib.parse import parse_qs, urlsplit

from picows import (WSCloseCode, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, WSUpgradeResponse,
                    WSUpgradeResponseWithListener, ws_create_server)

from loadgen import deadman
from loadgen.gateway import protocol
from loadgen.gateway.config import GatewayConfig
from loadgen.gateway.groups import Groups
from loadgen.gateway.metrics import GatewayMetrics
from loadgen.gateway.registry import LocalRouter, Router
from loadgen.gateway.session import CONTINUE, DISCONNECT, SessionLogic

log = logging.getLogger("loadgen.gateway")
CLOSE_REPLACED = 4000  # application close code: a newer connection of the same user took over
CLOSE_GRACE_S = 1.0
SHUTDOWN_REASON = b"gateway shutting down"  # with close code 1001 (GOING_AWAY) on SIGTERM/SIGINT
# One logger adapter shared by every connection: handed a logging.Logger, picows makes a child Logger per
# connection (~1 KB each, never freed before the connection).
PICOWS_LOG = logging.LoggerAdapter(logging.getLogger("picows.server"), {})

class Gateway:
    def __init__(self, config: GatewayConfig, token: str, node_id: str, router: Router | None = None) -> None:
        self.config = config
        self._token = token.encode()
        self.node_id = node_id
        self.groups = Groups(config.group_max_per_user, config.group_max_members)
        self.router = router or LocalRouter(self.groups)
        self.metrics = GatewayMetrics(node_id, self.groups)
        self.paused: dict[GatewaySession, float] = {}  # sessions whose peer stopped reading, since when
        self.sessions: set[GatewaySession] = set()  # open sessions, for the half-open sweep
        self.stopping = False  # a graceful stop is under way: no new sessions
        self.drained: asyncio.Event | None = None  # set by the stop when the last session has gone

    # --- handshake ---------------------------------------------------------------------------------
    def _reject(self, status: int, result: str, reason: str):
        self.metrics.count(self.metrics.connections, result)
        return WSUpgradeResponseWithListener(
            WSUpgradeResponse.create_error_response(status, reason.encode() + b"\n"), None)

    def _authorized(self, header: str) -> bool:
        """`Bearer <token>`; the scheme is case-insensitive (RFC 9110 11.1), the token compared in constant time."""
        scheme, _, credentials = header.strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self._token)

    def listener_factory(self, request: WSUpgradeRequest):
        if not self._authorized(request.headers.get("Authorization", "")):
            return self._reject(401, "rejected_auth", "missing or wrong bearer token")
        parts = urlsplit(request.path.decode("latin-1"))
        if parts.path != "/ws":
            return self._reject(404, "rejected_path", "unknown path; connect to /ws?user=ID")
        query = parse_qs(parts.query)
        user = query.get("user", [""])[0]
        if not protocol.valid_user_id(user):
            return self._reject(400, "rejected_bad_request", "user must be 1-128 of [A-Za-z0-9_.:-]")
        groups = protocol.login_groups(query.get("groups", [""])[0])
        if groups is None:
            return self._reject(400, "rejected_bad_request", "groups must be comma-separated ids of [A-Za-z0-9_.:-]")
        if len(groups) > self.config.group_max_per_user:
            return self._reject(400, "rejected_bad_request",
                                f"at most {self.config.group_max_per_user} groups (groups.max_per_user)")
        if self.stopping:  # a handshake that was under way when the listener closed
            return self._reject(503, "rejected_shutdown", "gateway shutting down")
        if self.metrics.active >= self.config.max_connections:
            return self._reject(503, "rejected_full", "server.max_connections reached")
        return GatewaySession(self, user, groups)

    # --- periodic checks -----------------------------------------------------------------------------
    async def sweep_stalled_writers(self) -> None:
        """Every second: drop sessions whose peer stopped reading for longer than websocket.write_timeout,
        and run the half-open check (sweep_idle)."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            self.sweep_idle(now)
            for session, since in list(self.paused.items()):
                if now - since > self.config.write_timeout_s:
                    self.paused.pop(session, None)
                    session.abort("write_timeout", WSCloseCode.POLICY_VIOLATION)


    def sweep_idle(self, now: float) -> None:
        """Half-open peers: ping a session idle for read_timeout/2, drop it when the next read_timeout/2
        brings no frame (a pong counts). One sweep for all sessions instead of picows' auto-ping task per
        connection (~2 KB each); the same timeouts, to within the one-second sweep."""
        half = self.config.read_timeout_s / 2
        for session in list(self.sessions):
            transport = session.transport
            if transport is None or transport.is_disconnected:
                continue
            action = session.idle_check(now, half)
            if action == "drop":
                transport.disconnect()
            elif action == "ping":
                transport.send_ping()

    async def shutdown(self, grace_s: float, cut: asyncio.Event) -> tuple[int, int]:
        """Graceful stop (the listener is already closed): send every session a close frame 1001
        (GOING_AWAY), wait up to grace_s (or until `cut` is set: a second signal) for the peers' close
        replies, then drop whoever is left. Returns (sessions closed, sessions cut after the grace)."""
        self.stopping = True
        self.drained = asyncio.Event()
        closing = list(self.sessions)
        for session in closing:
            session.going_away()
        if self.sessions:
            waits = [asyncio.ensure_future(self.drained.wait()), asyncio.ensure_future(cut.wait())]
            await asyncio.wait(waits, timeout=grace_s, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        left = list(self.sessions)
        for session in left:
            if session.closing == "shutdown":
                session.closing = "shutdown_timeout"
            if session.transport is not None and not session.transport.is_disconnected:
                session.transport.disconnect(graceful=False)  # no flush: the peer may not be reading
        if left:  # let the disconnect callbacks run (metrics, router)
            await asyncio.sleep(0)
        return len(closing), len(left)


class GatewaySession(SessionLogic, WSListener):
    """picows' listener for one client: the I/O around SessionLogic (loadgen/gateway/session.py)."""

    __slots__ = ("gw", "user", "transport", "guard", "closing", "last_rx", "ping_at", "groups", "login_groups")

    def __init__(self, gw: Gateway, user: str, login_groups: list[str] = ()) -> None:
        super().__init__()
        self.transport: WSTransport | None = None
        self.init_state(gw, user, time.monotonic())
        self.login_groups = login_groups  # `groups=` of the connect URL, joined once connected

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.gw.sessions.add(self)
        # the handshake's headers were read by listener_factory and are not needed again: ~2 KB per session
        if transport.request is not None:
            transport.request.headers = None
        if transport.response is not None:
            transport.response.headers = None
        m = self.gw.metrics
        m.active += 1
        m.count(m.connections, "accepted")
        self.gw.router.register(self)
        if self.login_groups:
            self.join_at_login(self.login_groups)
            self.login_groups = ()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        m = self.gw.metrics
        m.active -= 1
        m.count(m.disconnections, self.closing or "client")
        self.gw.sessions.discard(self)
        self.gw.paused.pop(self, None)
        self.gw.router.unregister(self)
        if self.gw.drained is not None and not self.gw.sessions:
            self.gw.drained.set()

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        action = self.take_frame(frame, time.monotonic())
        if action == CONTINUE:
            return
        if action != DISCONNECT:  # REPLY_CLOSE: the client closes
            transport.send_close(WSCloseCode.OK)
        transport.disconnect()

    # --- the effects SessionLogic asks for; push is also the Session protocol the router uses ------
    def push(self, frame: bytes) -> bool:
        """Write a frame to the client; False when it was dropped because the session is on its way out."""
        # nothing after our close frame (RFC 6455 5.5.1): a delivery racing a close is dropped
        if self.closing is None and self.transport is not None and not self.transport.is_disconnected:
            self.transport.send(WSMsgType.TEXT, frame)
            return True
        return False

    def later(self, delay_s: float, fn, *args) -> None:
        asyncio.get_running_loop().call_later(delay_s, fn, *args)

    def abort(self, reason: str, code, count: bool = True) -> None:
        """Close only this offender: count why, say why in the close frame, drop the socket."""
        if not self.begin_close(reason):
            return
        if count:
            self.gw.metrics.count(self.gw.metrics.errors, reason)
        transport = self.transport
        if transport is not None and not transport.is_disconnected:
            try:
                transport.send_close(code, reason.encode())
            except Exception:  # the socket may already be gone; closing is all that matters
                pass
            # Let the close frame reach the peer before the socket goes (an immediate close with unread
            # input sends RST and the peer never learns why); a peer that never answers is cut anyway.
            asyncio.get_running_loop().call_later(CLOSE_GRACE_S, transport.disconnect)

    def going_away(self) -> None:
        """Graceful stop: close frame 1001; the peer's close reply ends the session (take_frame), and
        Gateway.shutdown cuts it after the grace otherwise."""
        if not self.begin_close("shutdown"):  # already on its way out (abuse, replaced, half-open)
            return
        transport = self.transport
        if transport is not None and not transport.is_disconnected:
            try:
                transport.send_close(WSCloseCode.GOING_AWAY, SHUTDOWN_REASON)
            except Exception:  # the socket may already be gone; the cut after the grace covers it
                pass

    def replaced(self) -> None:
        # counted once, as the disconnection's reason, when the socket goes (on_ws_disconnected)
        self.abort("replaced", CLOSE_REPLACED, count=False)

    def pause_writing(self) -> None:
        self.gw.paused[self] = time.monotonic()

    def resume_writing(self) -> None:
        self.gw.paused.pop(self, None)


async def _serve_metrics(gw: Gateway, host: str, port: int):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            path = line.split(b" ")[1] if line.count(b" ") >= 2 else b""
            if path == b"/metrics":
                status, body, ctype = "200 OK", (gw.metrics.render() + gw.router.render_metrics()).encode(), "text/plain; version=0.0.4"
            elif path == b"/healthz":
                status, body, ctype = "200 OK", b"ok\n", "text/plain"
            else:
                status, body, ctype = "404 Not Found", b"try /metrics\n", "text/plain"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


async def _watch_deadman(path: str, timeout_s: float, stop: asyncio.Event) -> None:
    while not deadman.expired(path, timeout_s):
        await asyncio.sleep(1.0)
    log.warning("controller heartbeat %s older than %gs: stopping", path, timeout_s)
    stop.set()


async def serve(config: GatewayConfig, token: str, *, host: str, port: int, metrics_host: str,
                metrics_port: int, node_id: str, ready=None, heartbeat_file: str | None = None,
                deadman_s: float = 60.0, cluster=None) -> None:
    gw = Gateway(config, token, node_id)
    if cluster is not None:  # loadgen.gateway.cluster.ClusterSettings: etcd + Redis + Kafka routing
        from loadgen.gateway.cluster import ClusterRouter

        gw.router = ClusterRouter(node_id, cluster, gw.metrics, gw.groups)
    await gw.router.start()  # before listening: cross-node messages for our users are consumed from now on
    if not log.isEnabledFor(logging.DEBUG):  # picows logs two INFO lines per connection: DEBUG only
        logging.getLogger("picows").setLevel(logging.WARNING)
    server = await ws_create_server(
        gw.listener_factory, host, port,
        websocket_handshake_timeout=config.handshake_timeout_s,
        enable_auto_ping=False,  # half-open peers: Gateway.sweep_idle (no task per connection)
        max_frame_size=config.max_message_size * 2,
        read_buffer_init_size=config.read_buffer_size,
        backlog=65535,
        reuse_port=True,  # several processes may share the port (serve_processes)
        logger_name=PICOWS_LOG,
        use_aiofastnet=False,  # +5 KB per connection on uvloop (bench/README.md)
    )
    metrics_server = await _serve_metrics(gw, metrics_host, metrics_port)
    sweeper = asyncio.create_task(gw.sweep_stalled_writers())
    stop = asyncio.Event()
    cut = asyncio.Event()  # a second signal during the graceful stop: stop waiting for the clients
    abandon = asyncio.Event()  # a signal while leaving the cluster: exit without finishing that
    leaving = False
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            cut.set()
        if leaving:
            abandon.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        # a child of serve_processes ignores SIGINT (Ctrl-C reaches the whole process group; the parent
        # forwards one SIGTERM): handling it too would count as the second signal
        if sig != signal.SIGINT or signal.getsignal(sig) != signal.SIG_IGN:
            loop.add_signal_handler(sig, on_signal)
    watchdog = asyncio.create_task(_watch_deadman(heartbeat_file, deadman_s, stop)) if heartbeat_file else None
    log.info("gateway %s listening on ws://%s:%d/ws, metrics on http://%s:%d/metrics",
             node_id, host, port, metrics_host, metrics_port)
    if ready is not None:
        ready()
    await stop.wait()
    # Graceful stop: no new connections, close frames to every session and a bounded wait for the replies,
    # then leave the cluster (etcd lease, Redis entries, Kafka), then exit.
    server.close()
    sweeper.cancel()
    if watchdog is not None:
        watchdog.cancel()
    log.info("gateway %s stopping: closing %d sessions (grace %gs)", node_id, len(gw.sessions),
             config.shutdown_grace_s)
    closed, left = await gw.shutdown(config.shutdown_grace_s, cut)
    if left:
        log.info("gateway %s: %d of %d sessions did not answer the close frame%s: dropped", node_id, left,
                 closed, " (second signal)" if cut.is_set() else f" within {config.shutdown_grace_s:g}s")
    leaving = True
    if not await _unless(gw.router.stop(), abandon):  # cluster mode: etcd lease, Redis entries, Kafka
        log.warning("gateway %s: signal while leaving the cluster: exiting now (etcd lease and registry "
                    "entries expire by their TTLs)", node_id)
    metrics_server.close()
    log.info("gateway %s stopped", node_id)


async def _unless(coro, abandon: asyncio.Event) -> bool:
    """Run coro to its end unless `abandon` is set first (then cancel it); True when it finished."""
    task = asyncio.ensure_future(coro)
    waiter = asyncio.ensure_future(abandon.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False


def serve_processes(processes: int, run_one, metrics_port: int, node_id: str) -> int:
    """Run `processes` gateway processes on one port (SO_REUSEPORT: the kernel spreads connections).

    Process i serves /metrics on metrics_port + i as node `node_id/i`. There is no routing between the
    processes: a `send` reaches only users connected to the same process (echo, ping and connection
    load are unaffected). SIGTERM/SIGINT stop them all (each child gets one SIGTERM and stops gracefully;
    a second signal is forwarded too and cuts their grace); if one dies, the others are stopped too.
    Returns the exit code (0, or the first failed process's code).
    """
    children: dict[int, int] = {}
    for i in range(processes):
        pid = os.fork()
        if pid == 0:  # child: its own event loop, metrics port and node id
            code = 0
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; SIGTERM stops us
                run_one(metrics_port + i, f"{node_id}/{i}")
            except OSError as exc:
                log.error("gateway process %d cannot listen: %s", i, exc.strerror or exc)
                code = 1
            except BaseException:  # noqa: BLE001 - report, never fall back into the parent's code
                log.exception("gateway process %d failed", i)
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = i
    stopping = False

    def stop_all(*_):
        nonlocal stopping
        stopping = True
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    old = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGTERM, signal.SIGINT)}
    code = 0
    try:
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if pid not in children:
                continue
            children.pop(pid)
            rc = os.waitstatus_to_exitcode(status)
            if rc != 0 and not stopping:
                log.error("gateway process exited with %d: stopping the others", rc)
                code = code or (rc if rc > 0 else 1)
                stop_all()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return code
