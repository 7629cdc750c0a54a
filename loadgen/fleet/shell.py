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


def dispatch(wd: str, command: str, name: str, token: bool) -> str:
    """Shell: one round trip that receives its inputs on stdin and starts `command` detached (see `detached`).

    stdin: with `token`, the token on the first line (written to a mode-600 `token` by shell builtins: it is
    never an argument of any process), then the plan's text to EOF (`plan.json`)."""
    q = shlex.quote(wd)
    secret = "IFS= read -r T && (umask 077 && printf '%s' \"$T\" > token) && unset T && " if token else ""
    return f"mkdir -p {q} && cd {q} && {secret}cat > plan.json && " + detached(wd, command, name, before="touch heartbeat")


def watch_loop(wd: str, touch: list[str], bound_s: float) -> str:
    """Shell: the watch stream of one agent, for at most bound_s. Every second: touch the heartbeat files (the
    deadman's: when the controller goes, the pipe closes, printf fails and the loop ends, so the touching
    stops), then print one line `ALIVE|GONE AGE STATUS`: the agent's liveness (PID in agent.pid), the age in
    seconds of out/status.json by this host's clock (`-` when absent) and its content (`{}` when absent)."""
    files = " ".join(shlex.quote(p) for p in touch)
    return (f"cd {shlex.quote(wd)} || exit 1; end=$(( $(date +%s) + {int(bound_s)} )); "
            f"while now=$(date +%s); [ $now -lt $end ]; do touch {files} 2>/dev/null; "
            f"if kill -0 $(cat agent.pid 2>/dev/null) 2>/dev/null; then a=ALIVE; else a=GONE; fi; "
            f"m=$(stat -c %Y out/status.json 2>/dev/null) && age=$(( now - m )) || age=-; "
            f"s=$(cat out/status.json 2>/dev/null); [ -n \"$s\" ] || s='{{}}'; "
            f"printf '%s %s %s\\n' $a $age \"$s\" || exit 0; sleep 1; done")


def kill_now(pidfile: str) -> str:
    """Shell: SIGKILL the PID in pidfile and every process of its session (a frozen agent: SIGTERM would wait
    for a SIGCONT that never comes). Exits 0 either way."""
    return (f"P=$(cat {shlex.quote(pidfile)} 2>/dev/null) && kill -KILL $P 2>/dev/null; "
            f"pkill -KILL -s $P 2>/dev/null; exit 0")


def tar_outputs(wd: str) -> str:
    """Shell: the agent's outputs and log as a gzipped tar on stdout (no file left on the host)."""
    return f"cd {shlex.quote(wd)} && tar cz out agent.log 2>/dev/null"
