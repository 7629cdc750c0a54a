"""Deadman switch: a process started by the controller stops when the controller's heartbeat goes stale.

The controller (`fab cluster-test`) touches a heartbeat file on every host every second or two (an agent's
through its watch stream, loadgen.fleet.watchstream; a gateway's from a heartbeat thread). If the
controller dies (SIGKILL, lost network), nothing touches it any more and the agents and the
gateways it started stop by themselves: no orphaned load, ever.
"""

from __future__ import annotations

import os
import time


def heartbeat_age(path: str) -> float:
    try:
        return time.time() - os.stat(path).st_mtime
    except OSError:
        return float("inf")


def expired(path: str | None, timeout_s: float) -> bool:
    return bool(path) and heartbeat_age(path) > timeout_s
