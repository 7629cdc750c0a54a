"""The controller's heartbeat: touches every deadman file it is responsible for, every couple of seconds.

It runs in its own thread from the moment the first process is started, so slow steps of the
controller (preflight of a big fleet, probes, collecting) never look like a dead controller, while a
killed controller stops touching at once and everything it started stops by itself.
"""

from __future__ import annotations

import shlex
import threading

from loadgen.fleet.hosts import parallel

INTERVAL_S = 2.0


class Heartbeat(threading.Thread):
    def __init__(self, hosts: dict) -> None:
        super().__init__(daemon=True, name="controller-heartbeat")
        self.hosts = hosts
        self.files: dict[str, list[str]] = {}
        self.lock = threading.Lock()
        self.halt = threading.Event()

    def add(self, host: str, path: str) -> None:
        with self.lock:
            self.files.setdefault(host, []).append(path)
        if not self.is_alive() and not self.halt.is_set():
            self.start()

    def beat(self) -> None:
        with self.lock:
            todo = {h: list(paths) for h, paths in self.files.items()}

        def one(host):
            return host.run("touch " + " ".join(shlex.quote(p) for p in todo[host.name]), timeout=10)

        parallel({h: self.hosts[h] for h in todo if h in self.hosts}, one)

    def run(self) -> None:
        while not self.halt.wait(INTERVAL_S):
            self.beat()

    def stop(self) -> None:
        self.halt.set()
