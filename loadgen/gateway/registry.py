"""Who is connected where: the seam between a single in-memory node and a cluster.

The server asks its Router to deliver a frame to a user id. LocalRouter knows only this node's
sessions; the cluster router (loadgen.gateway.cluster: Redis registry + Kafka between nodes + etcd
membership) implements the same interface and routes users not connected here (`remote`).
"""

from __future__ import annotations

from typing import Protocol

from loadgen.gateway.groups import Groups


class Session(Protocol):
    user: str
    groups: set[str] | None  # the groups it is a member of (loadgen.gateway.groups)

    def push(self, frame: bytes) -> bool:
        """False: dropped, the session is closing (the gateway's close frame is out, or the socket is gone)."""
        ...

    def replaced(self) -> None: ...


class Router(Protocol):
    def register(self, session: Session) -> None: ...

    def unregister(self, session: Session) -> None: ...

    def deliver(self, to_user: str, frame: bytes) -> bool:
        """True when delivered to a session on this node; False: not connected here."""
        ...

    # groups (docs/protocol.md, "Groups"); `groups` holds the memberships of this node's sessions
    groups: Groups

    def join(self, session: Session, group: str, done) -> None:
        """Make the session a member; done(members in the group) or done((kind, detail)) when refused."""
        ...

    def leave(self, session: Session, group: str) -> bool:
        """False when the session was not a member."""
        ...

    def leave_groups(self, session: Session) -> None:
        """The session is closing: it leaves every group now (unregister does too)."""
        ...

    def leave_counted(self, group: str, done) -> None:
        """done() once a leave of `group` here is what every node sees (cluster mode: its count is in Redis)."""
        ...

    def gsend(self, session: Session, group: str, frame: bytes, done) -> None:
        """Write the frame to every other member; done(n: the members it was addressed to, of which written here)."""
        ...

    def __len__(self) -> int: ...

    # cluster mode; LocalRouter's versions do nothing
    remote: bool  # True: users not connected here may be on another node (call route)

    def route(self, to_user: str, frame: bytes, done) -> None:
        """Hand the frame to the user's node; later calls done(None), or done((kind, detail)) when not."""
        ...

    def heartbeat(self, session: Session) -> None:
        """The session sent an application ping (refreshes its registry TTL)."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def render_metrics(self) -> str:
        """Extra Prometheus lines (routing, backends)."""
        ...


class LocalRouter:
    """Single-node registry in memory; a user's newest connection replaces the older one."""

    remote = False

    def __init__(self, groups: Groups | None = None) -> None:
        self._sessions: dict[str, Session] = {}
        self.replacements = 0
        self.groups = groups if groups is not None else Groups()

    def __len__(self) -> int:
        return len(self._sessions)

    def register(self, session: Session) -> None:
        old = self._sessions.get(session.user)
        self._sessions[session.user] = session
        if old is not None and old is not session:
            self.replacements += 1
            old.replaced()

    def unregister(self, session: Session) -> None:
        if session.groups:
            self.leave_groups(session)
        if self._sessions.get(session.user) is session:
            del self._sessions[session.user]

    def deliver(self, to_user: str, frame: bytes) -> bool:
        """True when the frame was written to the user's session here; False when the user is not here or
        its session is closing (the sender then hears why, rather than an ack for a dropped frame)."""
        session = self._sessions.get(to_user)
        return session is not None and session.push(frame)

    def route(self, to_user: str, frame: bytes, done) -> None:
        done(("unknown_recipient", f"user {to_user} is not connected"))

    def join(self, session: Session, group: str, done) -> None:
        refused = self.groups.refusal(session, group)
        if refused is None:
            self.groups.join(session, group)
        done(refused or len(self.groups.members(group)))

    def leave(self, session: Session, group: str) -> bool:
        return self.groups.leave(session, group)

    def leave_groups(self, session: Session) -> None:
        self.groups.leave_all(session)

    def leave_counted(self, group: str, done) -> None:
        done()

    def gsend(self, session: Session, group: str, frame: bytes, done) -> None:
        groups = self.groups
        n = groups.fan_out(group, frame, skip_session=session)
        groups.deliveries["local"] += n
        groups.messages += 1
        done(n, n)

    def heartbeat(self, session: Session) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def render_metrics(self) -> str:
        return ""
