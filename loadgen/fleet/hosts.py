"""A host we can run commands on and copy files from: LocalHost (this machine) or SSHHost (Fabric).

Both offer the same operations, so starting, watching, collecting and probing is one code path whatever
the inventory says: `run` (a command, optionally fed text on its stdin), `stream` (a long-lived command whose
stdout is read as it comes: the watch stream, the collection tar), `get`, `put_text`. Every call has a timeout:
a hung host never blocks a run.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass


@dataclass
class Result:
    ok: bool
    stdout: str
    stderr: str = ""
    exit: int = 0


class Stream:
    """A running command's stdout as a binary file (`.stdout`); `close()` ends it (the remote command sees its
    pipe closed). With a timeout, a watchdog closes it after that long, so a read never blocks for ever."""

    def __init__(self, stdout, closer, timeout: float | None = None) -> None:
        self.stdout, self._closer = stdout, closer
        self._timer = None
        if timeout is not None:
            self._timer = threading.Timer(timeout, self.close)
            self._timer.daemon = True
            self._timer.start()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        try:
            self._closer()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Host:
    name: str
    address: str
    vars: dict

    def run(self, command: str, timeout: float = 30.0, input: str | None = None) -> Result:
        """Run a shell command; `input` is fed to its stdin (then EOF): secrets travel this way, never as an
        argument."""
        raise NotImplementedError

    def stream(self, command: str, timeout: float | None = None) -> Stream:
        """Start a command and return its stdout to read as it comes (stderr discarded)."""
        raise NotImplementedError

    def get(self, remote: str, local: str, timeout: float = 120.0) -> None:
        raise NotImplementedError

    def put_text(self, text: str, remote: str, mode: int = 0o644) -> None:
        """Write text to a file, creating its directory (plan files travel this way)."""
        raise NotImplementedError

    def put_secret(self, text: str, remote: str) -> None:
        """Write text to a mode-600 file (the token travels this way, never on a command line)."""
        self.put_text(text, remote, 0o600)

    def close(self) -> None:
        pass


class LocalHost(Host):
    def __init__(self, name: str, hostvars: dict) -> None:
        self.name, self.vars = name, hostvars
        self.address = hostvars.get("ansible_host", "127.0.0.1")

    def run(self, command: str, timeout: float = 30.0, input: str | None = None) -> Result:
        try:
            p = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=timeout,
                               **({"input": input} if input is not None else {"stdin": subprocess.DEVNULL}))
        except subprocess.TimeoutExpired:
            return Result(False, "", f"timed out after {timeout:g}s", -1)
        return Result(p.returncode == 0, p.stdout, p.stderr, p.returncode)

    def stream(self, command: str, timeout: float | None = None) -> Stream:
        # its own process group: closing kills the shell and its children (a `sleep` would hold the pipe open)
        proc = subprocess.Popen(["bash", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, start_new_session=True)

        def close() -> None:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the group of our own child, by its PID
                except ProcessLookupError:
                    pass
            proc.wait(10)

        return Stream(proc.stdout, close, timeout)

    def get(self, remote: str, local: str, timeout: float = 120.0) -> None:
        shutil.copyfile(remote, local)

    def put_text(self, text: str, remote: str, mode: int = 0o644) -> None:
        os.makedirs(os.path.dirname(remote), exist_ok=True)
        fd = os.open(remote, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)


def _ssh_option(hostvars: dict, name: str) -> str | None:
    """An -o Name=value from ansible_ssh_common_args / ansible_ssh_extra_args."""
    args = shlex.split(f"{hostvars.get('ansible_ssh_common_args', '')} {hostvars.get('ansible_ssh_extra_args', '')}")
    for i, arg in enumerate(args):
        text = args[i + 1] if arg == "-o" and i + 1 < len(args) else arg[2:] if arg.startswith("-o") else None
        if text and "=" in text:
            key, _, value = text.partition("=")
            if key.strip().lower() == name.lower():
                return value.strip()
    return None


class SSHHost(Host):
    def __init__(self, name: str, hostvars: dict, connect_timeout: float = 10.0) -> None:
        from fabric import Connection
        from paramiko import RejectPolicy

        self.name, self.vars = name, hostvars
        self.address = hostvars.get("ansible_host", name)
        kwargs = {"allow_agent": False, "look_for_keys": False}
        key = hostvars.get("ansible_ssh_private_key_file")
        if key:
            kwargs["key_filename"] = os.path.expanduser(key)
        else:
            kwargs.update(allow_agent=True, look_for_keys=True)
        self.conn = Connection(self.address, user=hostvars.get("ansible_user", "root"),
                               port=int(hostvars.get("ansible_port", 22)), connect_timeout=int(connect_timeout),
                               connect_kwargs=kwargs)
        # Host keys are checked: known_hosts of the user plus the inventory's UserKnownHostsFile.
        client = self.conn.client
        client.set_missing_host_key_policy(RejectPolicy())
        try:
            client.load_system_host_keys()
        except OSError:
            pass
        known = _ssh_option(hostvars, "UserKnownHostsFile")
        if known and os.path.exists(os.path.expanduser(known)):
            client.load_host_keys(os.path.expanduser(known))

    def run(self, command: str, timeout: float = 30.0, input: str | None = None) -> Result:
        try:
            if input is not None:
                return self._run_with_input(command, timeout, input)
            r = self.conn.run(command, hide=True, warn=True, timeout=timeout, in_stream=False)
        except Exception as exc:  # unreachable, auth, host key, timeout: a result, not a crash
            return Result(False, "", f"{type(exc).__name__}: {exc}".splitlines()[0], -1)
        return Result(r.ok, r.stdout, r.stderr, r.exited)

    def _run_with_input(self, command: str, timeout: float, input: str) -> Result:
        # a plain channel: Fabric's in_stream feeds stdin a character at a time (a plan takes minutes)
        self.conn.open()
        chan = self.conn.client.get_transport().open_session(timeout=timeout)
        try:
            chan.settimeout(timeout)
            chan.exec_command(command)
            chan.sendall(input.encode())
            chan.shutdown_write()
            out = chan.makefile("rb").read().decode(errors="replace")
            err = chan.makefile_stderr("rb").read().decode(errors="replace")
            code = chan.recv_exit_status()
        finally:
            chan.close()
        return Result(code == 0, out, err, code)

    def stream(self, command: str, timeout: float | None = None) -> Stream:
        # a channel on the host's one connection: no new SSH handshake per stream
        self.conn.open()
        chan = self.conn.client.get_transport().open_session(timeout=30)
        chan.exec_command(command)
        chan.shutdown_write()
        return Stream(chan.makefile("rb"), chan.close, timeout)

    def get(self, remote: str, local: str, timeout: float = 120.0) -> None:
        self.conn.get(remote, local)

    def put_text(self, text: str, remote: str, mode: int = 0o644) -> None:
        import io

        # the file exists with its mode before any byte is written
        self.conn.run(f"mkdir -p {shlex.quote(os.path.dirname(remote))} && install -m {mode:o} /dev/null {shlex.quote(remote)}",
                      hide=True, in_stream=False)
        self.conn.put(io.StringIO(text), remote)

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass


def is_local(hostvars: dict) -> bool:
    return hostvars.get("ansible_connection") == "local"


def open_hosts(inventory, names: list[str], connect_timeout: float = 10.0) -> dict[str, Host]:
    return {n: (LocalHost(n, inventory.hostvars[n]) if is_local(inventory.hostvars[n])
                else SSHHost(n, inventory.hostvars[n], connect_timeout)) for n in names}


MAX_WORKERS = 256  # one thread per host up to here: a fleet's round trips overlap, not queue


def parallel(hosts: dict[str, Host], fn, max_workers: int = MAX_WORKERS) -> dict:
    """fn(host) on every host at once; an exception becomes that host's result, never the run's end."""
    if not hosts:
        return {}
    with ThreadPoolExecutor(max_workers=min(max_workers, len(hosts))) as pool:
        futures = {name: pool.submit(fn, host) for name, host in hosts.items()}
        out = {}
        for name, fut in futures.items():
            try:
                out[name] = fut.result()
            except Exception as exc:
                out[name] = exc
        return out
