"""The controller's side of the control channel: change the load of running agents (loadgen.agent.control).

`Controller.send` builds one `loadgen-control/1` message (loadgen.plan.control.Control, checked once), gives
every generator its share of the fleet's stage targets (the plan's share formula, generator i of n as in
FleetPlan.share) and writes it as `control.json` into each agent's output directory through the Host each
generator is reached by (local or SSH: the same code path): a temporary file, then a rename, so an agent never
reads half a message. Agents act on it within about a second (their per-second control tick).

    ctl = Controller(hosts, generators, out_dir_of)
    ctl.send(stages=[Stage(5, 3000), Stage(30, 3000)])          # fleet totals, from now on
    ctl.send(rate=2.0)                                          # messages/s per user
    ctl.send(ramp_down_s=5, reason="message_p99_ms>1000 over 2m")   # ends the run early, reason recorded
"""

from __future__ import annotations

import json
import shlex
import threading

from loadgen.agent.control import FILE_NAME
from loadgen.fleet.hosts import Host, parallel
from loadgen.plan.control import Control
from loadgen.plan.stages import Stage


class Controller:
    def __init__(self, hosts: dict[str, Host], generators: list[str], out_dir_of) -> None:
        """generators: every generator of the plan in its order (shares as the plan's); out_dir_of(host): the
        agent's --out directory on that host."""
        self.hosts = hosts
        self.generators = list(generators)
        self.out_dir_of = out_dir_of
        self.seq = 0
        self.lock = threading.Lock()

    def send(self, *, stages: list[Stage] | None = None, rate: float | None = None, ramp_down_s: float | None = None,
             reason: str | None = None, to: list[str] | None = None) -> dict[str, bool | Exception]:
        """Write the next message to the agents of `to` (default: every generator reachable); returns
        {generator: True or the error}. Stage targets are fleet totals."""
        with self.lock:
            self.seq += 1
            control = Control(self.seq, stages, rate, ramp_down_s, reason)
        names = [g for g in (to or self.generators) if g in self.hosts]
        n = len(self.generators)

        def one(host: Host):
            share = control.share(self.generators.index(host.name), n)
            out = self.out_dir_of(host)
            tmp, final = f"{out}/.{FILE_NAME}.tmp", f"{out}/{FILE_NAME}"
            host.put_text(json.dumps(share.to_dict()), tmp)
            r = host.run(f"mv -f {shlex.quote(tmp)} {shlex.quote(final)}", timeout=15)
            if not r.ok:
                raise OSError(r.stderr.strip()[:200] or "mv failed")
            return True

        return parallel({g: self.hosts[g] for g in names}, one)
