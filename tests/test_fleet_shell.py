"""The controller's shell snippets (loadgen.fleet.shell), run by a real shell on this machine."""

from __future__ import annotations

import os
import subprocess

from loadgen.fleet.shell import detached, terminate


def sh(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child of our shell's setsid may linger as a zombie until init reaps it
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


def test_detached_then_terminate_stops_by_pid(tmp_path):
    assert sh(detached(str(tmp_path), "sleep 60", "proc")).returncode == 0
    pid = int((tmp_path / "proc.pid").read_text())
    assert alive(pid)
    assert sh(terminate(str(tmp_path / "proc.pid"), 5.0)).returncode == 0
    assert not alive(pid)


def test_terminate_kills_what_ignores_sigterm(tmp_path):
    stubborn = "bash -c 'trap \"\" TERM; while true; do sleep 0.2; done'"
    assert sh(detached(str(tmp_path), stubborn, "proc")).returncode == 0
    pid = int((tmp_path / "proc.pid").read_text())
    assert sh(terminate(str(tmp_path / "proc.pid"), 0.5, session=True)).returncode == 0
    assert not alive(pid)


def test_terminate_without_a_pidfile_is_a_no_op(tmp_path):
    assert sh(terminate(str(tmp_path / "missing.pid"), 0.5)).returncode == 0
