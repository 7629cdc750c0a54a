"""The shell the controller runs on fleet hosts, in one place: start detached, wait, stop, collect."""

from __future__ import annotations

import shlex
import sys


def loadgen_command(host) -> str:
    """How `loadgen` is invoked on a host: loadgen_agent_bin, this interpreter for local hosts, else `loadgen`."""
    explicit = host.vars.get("loadgen_agent_bin")
    if explicit:
        return shlex.quote(explicit)
    if host.vars.get("ansible_connection") == "local":
        return f"{shlex.quote(sys.executable)} -m loadgen"
    return "loadgen"


def detached(wd: str, command: str, name: str, before: str = "true") -> str:
    """Shell that starts `command` in its own session, surviving the SSH session, with NAME.pid = its PID.

    The braces keep `$!` the PID of the program itself (no subshell in between), so it can be
    stopped by PID later.
    """
    q = shlex.quote(wd)
    return (f"cd {q} && {before} && {{ setsid nohup {command} > {name}.log 2>&1 < /dev/null & "
            f"echo $! > {q}/{name}.pid; }}")


def terminate(pidfile: str, wait_s: float, session: bool = False) -> str:
    """Shell: SIGTERM the PID in pidfile, up to wait_s for it to exit, then SIGKILL it (with session: also every
    process left in its session, e.g. forked workers). Exits 0 either way."""
    kill_session = " pkill -KILL -s $P 2>/dev/null;" if session else ""
    return (f"P=$(cat {shlex.quote(pidfile)} 2>/dev/null) && kill -TERM $P 2>/dev/null; "
            f"for i in $(seq {int(wait_s * 10)}); do kill -0 $P 2>/dev/null || exit 0; sleep 0.1; done; "
            f"kill -KILL $P 2>/dev/null;{kill_session} exit 0")


def wait_listening(addr: str, port: int, pidfile: str, logfile: str, wait_s: float = 10.0) -> str:
    """Shell: exit 0 once addr:port accepts a TCP connection; exit 1 with the log's tail when the process in
    pidfile died or wait_s passed."""
    return (f"for i in $(seq {int(wait_s * 10)}); do (exec 3<>/dev/tcp/{addr}/{port}) 2>/dev/null && exit 0; "
            f"kill -0 $(cat {shlex.quote(pidfile)}) 2>/dev/null || break; sleep 0.1; done; "
            f"tail -3 {shlex.quote(logfile)}; exit 1")


def status_and_liveness(wd: str) -> str:
    """Shell: the agent's status.json (or {}), a newline, then ALIVE or GONE for the PID in agent.pid."""
    return (f"cd {shlex.quote(wd)} && (cat out/status.json 2>/dev/null || echo '{{}}') && echo && "
            f"(kill -0 $(cat agent.pid) 2>/dev/null && echo ALIVE || echo GONE)")


def pack_outputs(wd: str) -> str:
    """Shell: the agent's outputs and log as collect.tgz in its work dir."""
    return f"cd {shlex.quote(wd)} && tar czf collect.tgz out agent.log 2>/dev/null; ls collect.tgz"
