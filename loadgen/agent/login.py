"""A protocol profile's login steps on one connection, after the WebSocket upgrade (docs/protocols.md).

Frames that arrive during the login are buffered by the connection (conn.login_frames) and consumed in order:
an expect step discards what does not match it (a server's greetings, stream features it asks nothing of),
so a matching frame that came early, in the same read as an earlier one, is never lost.
"""

from __future__ import annotations

import asyncio

from loadgen.protocols.match import Fields
from loadgen.protocols.profile import Expect


class LoginFailed(Exception):
    pass


async def run_login(conn, profile, values: dict, msg_type) -> None:
    """Run the steps; captures go into values. Raises LoginFailed (timeout, no capture, disconnected)."""
    loop = asyncio.get_running_loop()
    transport = conn.transport
    frames = conn.login_frames
    try:
        for step in profile.login:
            if not isinstance(step, Expect):
                transport.send(msg_type, step.render(values))
                continue
            deadline = loop.time() + step.timeout_s
            while True:
                matched = None
                while frames:
                    payload = frames.popleft()
                    fields = Fields(payload, profile.decode)
                    if step.match.matches(payload, fields):
                        matched = payload, fields
                        break
                if matched is not None:
                    for name, extract in step.captures:
                        value = extract.value(*matched)
                        if value is None:
                            raise LoginFailed(f"{name} not in the frame")
                        values[name] = value if isinstance(value, bytes) else str(value).encode()
                    break
                if transport.is_disconnected:
                    raise LoginFailed("disconnected")
                conn.login_wake = loop.create_future()
                try:
                    async with asyncio.timeout_at(deadline):
                        await conn.login_wake
                except TimeoutError:
                    raise LoginFailed("timeout") from None
    finally:
        conn.login_wake = None
        conn.login_frames = None  # from now on frames go to the profile's inbound rules
