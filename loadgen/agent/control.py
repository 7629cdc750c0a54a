"""The agent's side of the control channel: a controller changes a running agent's load through a file.

The controller (loadgen.fleet.control for fab; a person or a script works too) writes `control.json` into the
agent's output directory (`--out`), atomically (write a temporary file, then rename). The format is
`loadgen-control/1`, parsed and checked once by loadgen.plan.control.Control:

    {"schema": "loadgen-control/1", "seq": 2, "stages": ["5s:300", "1m:300"], "rate": 1.5}
    {"schema": "loadgen-control/1", "seq": 3, "ramp_down": {"within_s": 5, "reason": "connect_success<0.9 over 60s"}}

The agent process looks at the file once per second on its control tick (a stat: mtime, size, inode; the file
is read only when they change) and applies a message whose seq is above the last one applied, once. It splits
the message's stages across its running workers with the plan's share formula (`Control.share`) and hands each
its share: worker 0 by a direct call, forked workers over a pipe from the agent process (the "inbox" beside the
pipe their rows come back on), so the whole agent follows within about a second. A worker's new stages start
from the target it holds at that moment; a new rate applies to every user's next send; `ramp_down` closes
every connection within `within_s` seconds, after which the agent drains and ends as after its last stage,
with status.json and summary.json saying `ramp_down` (reason, seq, time) and `stopped_by` "ramp_down: REASON"
(the run is then PARTIAL, as any run stopped early).

Under a traffic model (`--traffic`) a worker holds at most the plan's peak and keeps the model's rates: its
users, groups and arrival processes are drawn for the plan.

A file that cannot be read or parsed does not stop the run: the error is kept in status.json
(`control_error`) and the file is read again when it changes. After a ramp_down, later messages are ignored.
"""

from __future__ import annotations

import json
import os

from loadgen.errors import UsageError
from loadgen.plan.control import Control

FILE_NAME = "control.json"


class ControlFile:
    """Polls one control file; `poll()` returns a new Control at most once per seq."""

    def __init__(self, out_dir: str) -> None:
        self.path = os.path.join(out_dir, FILE_NAME)
        self.seen = None  # (mtime_ns, size, inode) of the version last read
        self.seq = 0  # the last seq applied
        self.error: str | None = None

    def poll(self) -> Control | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key == self.seen:
            return None
        self.seen = key
        try:
            with open(self.path) as f:
                data = json.load(f)
            control = Control.from_dict(data)
        except OSError as exc:
            self.error = f"{FILE_NAME}: {exc.strerror or exc}"
            self.seen = None  # try again on the next tick
            return None
        except ValueError as exc:
            self.error = f"{FILE_NAME} is not JSON: {exc}"
            return None
        except UsageError as exc:
            self.error = f"{FILE_NAME}: {exc}"
            return None
        if control.seq <= self.seq:
            return None  # applied already (the same message written again, or an older one)
        self.error = None
        self.seq = control.seq
        return control


def shares(control: Control, workers: list[int]) -> dict[int, Control]:
    """Each running worker's share of the message, by worker index."""
    return {index: control.share(k, len(workers)) for k, index in enumerate(sorted(workers))}


def describe(control: Control, at: float) -> dict:
    """The applied message as the agent records it in summary.json ("controls")."""
    return {"at": round(at, 3), **{k: v for k, v in control.to_dict().items() if k != "schema"}}
