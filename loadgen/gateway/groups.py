"""Group membership on one node, apart from I/O: which local sessions are in which group, and the limits.

A membership belongs to a session, not to a user id: a user's newer connection joins with its own login and a
replaced session's memberships go with it. A session keeps its own groups in `session.groups` (None until its
first join: no cost for sessions that never join one).
"""

from __future__ import annotations

# error kinds of a refused join (docs/protocol.md, "Groups")
TOO_MANY_GROUPS, GROUP_FULL = "too_many_groups", "group_full"


class Groups:
    __slots__ = ("max_per_user", "max_members", "_members", "memberships", "messages", "deliveries")

    def __init__(self, max_per_user: int = 100, max_members: int = 10_000) -> None:
        self.max_per_user = max_per_user
        self.max_members = max_members
        self._members: dict[str, dict] = {}  # group -> {session: None}, in join order; no empty groups
        self.memberships = 0  # sessions x groups here (gauge im_gateway_group_members)
        self.messages = 0  # accepted gsends (im_gateway_group_messages_total)
        self.deliveries = {"local": 0, "remote": 0}  # gmsg frames written here, by route

    def __len__(self) -> int:
        """Groups with a member on this node."""
        return len(self._members)

    def names(self) -> list[str]:
        return list(self._members)

    def members(self, group: str) -> dict:
        return self._members.get(group) or {}

    def refusal(self, session, group: str, others: int = 0) -> tuple[str, str] | None:
        """Why `session` may not join `group` now ((kind, detail)), None when it may; `others`: members the
        group has elsewhere (other nodes)."""
        mine = session.groups
        if mine is not None and group in mine:
            return None
        if mine is not None and len(mine) >= self.max_per_user:
            return TOO_MANY_GROUPS, f"at most {self.max_per_user} groups per user (groups.max_per_user)"
        if len(self.members(group)) + others >= self.max_members:
            return GROUP_FULL, f"group {group} has {self.max_members} members (groups.max_members)"
        return None

    def join(self, session, group: str) -> bool:
        """Add the membership (the caller checked `refusal`); False when it existed already."""
        mine = session.groups
        if mine is None:
            session.groups = mine = set()
        elif group in mine:
            return False
        mine.add(group)
        members = self._members.get(group)
        if members is None:
            members = self._members[group] = {}
        members[session] = None
        self.memberships += 1
        return True

    def leave(self, session, group: str) -> bool:
        """False when the session was not a member."""
        mine = session.groups
        if not mine or group not in mine:
            return False
        mine.discard(group)
        members = self._members[group]
        del members[session]
        if not members:
            del self._members[group]
        self.memberships -= 1
        return True

    def leave_all(self, session) -> list[str]:
        """The session closes: every membership goes; returns the groups left."""
        mine = session.groups
        if not mine:
            return []
        left = list(mine)
        for group in left:
            self.leave(session, group)
        return left

    def fan_out(self, group: str, frame: bytes, skip_session=None, skip_user: str | None = None) -> int:
        """Write `frame` to every member here but the sender (a local session, or a user on another node);
        returns how many were written (a closing session's push is dropped and not counted)."""
        written = 0
        for session in list(self.members(group)):
            if session is not skip_session and session.user != skip_user and session.push(frame):
                written += 1
        return written

    def render(self, node: str) -> list[str]:
        return [
            "# HELP im_gateway_groups Groups with a member on this node.",
            "# TYPE im_gateway_groups gauge",
            f"im_gateway_groups{{{node}}} {len(self._members)}",
            "# HELP im_gateway_group_members Group memberships of sessions on this node.",
            "# TYPE im_gateway_group_members gauge",
            f"im_gateway_group_members{{{node}}} {self.memberships}",
            "# HELP im_gateway_group_messages_total Group messages accepted (gsend acked) on this node.",
            "# TYPE im_gateway_group_messages_total counter",
            f"im_gateway_group_messages_total{{{node}}} {self.messages}",
            "# HELP im_gateway_group_deliveries_total gmsg frames written here, by route (local: sender on this "
            "node; remote: via Kafka).",
            "# TYPE im_gateway_group_deliveries_total counter",
        ] + [f'im_gateway_group_deliveries_total{{{node},route="{k}"}} {v}' for k, v in self.deliveries.items()]
