"""Who is connected where: the seam between a single in-memory node and a cluster.

The server asks its Router to deliver a frame to a user id. LocalRouter knows only this node's
sessions; a cluster router (Redis registry + Kafka between nodes) implements the same interface.
"""

from __future__ import annotations

from typing import Protocol


class Session(Protocol):
    user: str

    def push(self, frame: bytes) -> None: ...

    def replaced(self) -> None: ...


class Router(Protocol):
    def register(self, session: Session) -> None: ...

    def unregister(self, session: Session) -> None: ...

    def deliver(self, to_user: str, frame: bytes) -> bool:
        """True when delivered (or handed to the owning node); False: unknown recipient."""
        ...

    def __len__(self) -> int: ...


class LocalRouter:
    """Single-node registry in memory; a user's newest connection replaces the older one."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self.replacements = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def register(self, session: Session) -> None:
        old = self._sessions.get(session.user)
        self._sessions[session.user] = session
        if old is not None and old is not session:
            self.replacements += 1
            old.replaced()

    def unregister(self, session: Session) -> None:
        if self._sessions.get(session.user) is session:
            del self._sessions[session.user]

    def deliver(self, to_user: str, frame: bytes) -> bool:
        session = self._sessions.get(to_user)
        if session is None:
            return False
        session.push(frame)
        return True
