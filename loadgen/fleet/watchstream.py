"""The controller's watch of running agents: one long-lived stream per generator host, no exec per poll.

Each generator host runs one bounded shell loop (loadgen.fleet.shell.watch_loop) that every second touches the
agent's deadman heartbeat file and prints one line: `ALIVE|GONE AGE STATUS` (the agent's process, the age of
its status.json by the host's own clock, status.json's content). A reader thread per host keeps the latest
line; `judge` turns it into the agent's state, apart from any I/O:

- GONE with status `done`: done; GONE otherwise: dead.
- ALIVE but status.json older than FROZEN_S (the agent rewrites it every second while it runs; SIGSTOP, a
  hung event loop): frozen. No status.json STARTUP_S after launch: frozen too.
- no line from the host for SILENT_S (the host froze, the network went): unresponsive.

The controller kills frozen and unresponsive agents and records them dead (the run is PARTIAL). When the
controller dies the stream's pipe closes, the loop ends, the heartbeat goes stale and the agent's deadman stops
the load. A stream that ends while the agent is still watched (its bound passed: a capacity search moved the
end) is opened again.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

FROZEN_S = 20.0  # status.json unchanged this long while the agent lives: frozen (20x its 1 s cadence: an agent
# writing its summary on a loaded machine goes a few seconds without a status; a false "frozen" would kill it)
SILENT_S = 15.0  # no line from a host's stream this long (it prints every second): unresponsive
STARTUP_S = 30.0  # no status.json at all this long after the stream opened: frozen (or never started)
REOPEN_S = 1.0  # pause before opening a host's stream again after it ended


@dataclass
class Beat:
    """One line of a watch stream."""

    alive: bool
    age_s: float | None  # None: no status.json yet
    status: dict = field(default_factory=dict)


def parse_line(line: str) -> Beat | None:
    """`ALIVE|GONE AGE STATUS` -> Beat; None for anything else (a line cut short by a closing stream)."""
    parts = line.strip().split(" ", 2)
    if len(parts) != 3 or parts[0] not in ("ALIVE", "GONE"):
        return None
    try:
        age = None if parts[1] == "-" else max(0.0, float(parts[1]))
    except ValueError:
        return None
    try:
        status = json.loads(parts[2])
    except ValueError:
        return None
    return Beat(parts[0] == "ALIVE", age, status if isinstance(status, dict) else {})


def judge(beat: Beat | None, now: float, last_line_at: float, opened_at: float) -> tuple[str, str | None]:
    """The agent's state from its stream's latest line: done | dead | frozen | unresponsive | starting | the
    agent's own state (waiting, running), with why for the bad ones."""
    silent = now - last_line_at
    if silent >= SILENT_S:
        return "unresponsive", f"unresponsive: no watch line from the host for {silent:.0f}s"
    if beat is None:
        return "starting", None
    state = beat.status.get("state")
    if not beat.alive:
        return ("done", None) if state == "done" else ("dead", f"agent process gone (last status: {state or 'none'})")
    if state == "done":  # summary written, the process is exiting
        return "done", None
    if beat.age_s is None:
        if now - opened_at >= STARTUP_S:
            return "frozen", f"frozen: no status.json {STARTUP_S:g}s after launch while its process lives"
        return "starting", None
    if beat.age_s >= FROZEN_S:
        return "frozen", f"frozen: status.json unchanged for {beat.age_s:.0f}s while its process lives"
    return state or "starting", None


class HostStream:
    """The watch stream of one host, read by its own thread; reopened when it ends until `close`."""

    def __init__(self, host, command_of) -> None:
        """command_of(): the watch_loop shell to (re)open (its bound computed at each opening)."""
        self.host, self.command_of = host, command_of
        self.lock = threading.Lock()
        self.beat: Beat | None = None
        self.opened_at = self.last_line_at = time.time()
        self.lines = self.opens = 0
        self.error: str | None = None
        self.closed = threading.Event()
        self.stream = None
        self.thread = threading.Thread(target=self._read, daemon=True, name=f"watch-{host.name}")
        self.thread.start()

    def _read(self) -> None:
        while not self.closed.is_set():
            try:
                stream = self.host.stream(self.command_of())
                with self.lock:
                    self.stream, self.opens = stream, self.opens + 1
                if self.closed.is_set():
                    stream.close()
                    return
                for raw in stream.stdout:
                    beat = parse_line(raw.decode(errors="replace"))
                    if beat is not None:
                        with self.lock:
                            self.beat, self.last_line_at, self.lines = beat, time.time(), self.lines + 1
                stream.close()
            except Exception as exc:  # unreachable, channel refused: the silence rule decides, we retry
                self.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            self.closed.wait(REOPEN_S)

    def latest(self) -> tuple[Beat | None, float, float]:
        with self.lock:
            return self.beat, self.last_line_at, self.opened_at

    def close(self) -> None:
        self.closed.set()
        with self.lock:
            stream = self.stream
        if stream is not None:
            stream.close()


class Watch:
    """Every generator's stream; `check` judges them all from memory (no round trip)."""

    def __init__(self) -> None:
        self.streams: dict[str, HostStream] = {}

    def open(self, host, command_of) -> None:
        self.streams[host.name] = HostStream(host, command_of)

    def check(self, names, now: float | None = None) -> dict[str, tuple[str, str | None, dict]]:
        """{name: (state, why, latest status)} for the streams of names."""
        now = time.time() if now is None else now
        out = {}
        for name in names:
            s = self.streams.get(name)
            if s is None:
                continue
            beat, last, opened = s.latest()
            state, why = judge(beat, now, last, opened)
            out[name] = (state, why, beat.status if beat else {})
        return out

    def close(self, names=None) -> None:
        for name in list(self.streams if names is None else names):
            s = self.streams.get(name)
            if s is not None:
                s.close()

    def lines(self) -> int:
        return sum(s.lines for s in self.streams.values())
