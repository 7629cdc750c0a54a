"""This host's side of a run: secrets read from files, the open-files limit, the ephemeral port range.

Kept out of loadgen/plan (pure data and rules): these read or change the machine they run on, so the
agent, the gateway and the controller call them on their own host.
"""

from __future__ import annotations

import os
import stat

from loadgen.errors import UsageError


def read_token_file(path: str) -> str:
    try:
        st = os.stat(path)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(f"token file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it")
        with open(path) as f:
            token = f.read().strip()
    except OSError as exc:
        raise UsageError(f"token file {path}: {exc.strerror}") from None
    if not token:
        raise UsageError(f"token file {path} is empty")
    return token


def fd_limit() -> int:
    """The live open-files limit after raising soft to hard (what this process can really use)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def ephemeral_port_count() -> int:
    """Live size of this host's ephemeral port range (what one source address can open per destination)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
        return high - low + 1
    except (OSError, ValueError):
        return 28232  # Linux default range 32768-60999
