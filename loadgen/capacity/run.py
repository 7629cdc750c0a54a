"""`fab capacity`: the search on a fleet. It is a cluster test (loadgen.fleet.clustertest: the same start,
probes, collection and report) whose drive() steps the agents' load through the control channel instead of
only watching them.

Every step is bounded in time (ramp + hold, then at most 10 s for its last rows); Ctrl-C or a dead agent ends the
search with what it found so far (PARTIAL); the agents then ramp down and the run is collected as usual.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field

from loadgen.capacity.cause import name_cause, resources
from loadgen.capacity.judge import Window, expected_workers, step_figures
from loadgen.capacity.rows import RowTail
from loadgen.capacity.search import Search
from loadgen.errors import UsageError
from loadgen.fleet import probes
from loadgen.fleet.clustertest import ClusterTest, Options, generator_vars, log, stop_reason, workdir
from loadgen.fleet.hosts import parallel
from loadgen.plan.capacity import UNITS, CapacityPlan
from loadgen.plan.options import parse_int, parse_number
from loadgen.plan.stages import Stage, format_duration, parse_duration

CONTROL_DELAY_S = 1.5  # a control message is acted on within about a second (the agents' control tick)
ROWS_WAIT_S = 10.0  # a step's last rows: at most this long after its end
SAMPLE_WAIT_S = 3.0  # a gateway's first CPU sample after a step's end: at most this long beyond two intervals
RAMP_DOWN_S = 5.0
FILE_NAME = "capacity.json"


@dataclass
class CapacityOptions:
    """`fab capacity` options as given (text); parsed once in CapacityTest.__init__."""

    inventory: str = "inventory/local"
    dimension: str = "connections"
    start: str | None = None
    step: str | None = None
    factor: str | None = None
    hold: str = "60s"
    ramp: str = "10s"
    max: str | None = None
    refine: str = "2"
    rate: str | None = None
    vus: str | None = None
    message_size: str | None = None
    criteria: list[str] = field(default_factory=list)
    token_file: str | None = None
    deadman_timeout: str = "60s"
    probe_interval: str = "1"
    reports_dir: str = "reports"


def _capacity_plan(o: CapacityOptions, gateways: int, inv_rate, inv_vus) -> CapacityPlan:
    conns = o.dimension == "connections"
    start = parse_number(o.start if o.start is not None else (500 if conns else 100), "--start")
    step = parse_number(o.step, "--step") if o.step is not None else None
    factor = parse_number(o.factor, "--factor") if o.factor is not None else None
    if step is None and factor is None:
        step = start
    return CapacityPlan(
        dimension=o.dimension, start=start, step=step, factor=factor,
        max=parse_number(o.max, "--max") if o.max is not None else start * 10,
        hold_s=parse_duration(o.hold, "--hold"), ramp_s=parse_duration(o.ramp, "--ramp"),
        refine=parse_int(o.refine, "--refine"),
        rate=parse_number(o.rate if o.rate is not None else (inv_rate if inv_rate is not None else 0.2), "--rate"),
        vus=parse_int(o.vus if o.vus is not None else (inv_vus if inv_vus is not None else 1000), "--vus"),
        gateways=gateways, criteria=list(o.criteria))


def _counters(text: str) -> dict:
    """The gateway's /metrics counters a cause is named from: rejected_full handshakes, errors by kind."""
    out = {"rejected_full": 0, "errors": {}}
    for line in text.splitlines():
        m = re.match(r'im_gateway_connections_total\{[^}]*result="rejected_full"[^}]*\}\s+([0-9.e+]+)', line)
        if m:
            out["rejected_full"] += int(float(m.group(1)))
        m = re.match(r'im_gateway_errors_total\{[^}]*kind="([^"]+)"[^}]*\}\s+([0-9.e+]+)', line)
        if m:
            out["errors"][m.group(1)] = out["errors"].get(m.group(1), 0) + int(float(m.group(2)))
    return out


class _Tee:
    """samples.csv's writer that also keeps the rows for the steps' resources."""

    def __init__(self, writer, keep: list) -> None:
        self.writer, self.keep = writer, keep

    def writerow(self, row) -> None:
        self.writer.writerow(row)
        if row[0] != "ts":
            self.keep.append((float(row[0]), row[1], row[2], row[3], float(row[4])))


class AgentGone(Exception):
    pass


class CapacityTest(ClusterTest):
    def __init__(self, o: CapacityOptions) -> None:
        from loadgen.fleet.inventory import load_inventory

        inv = load_inventory(o.inventory)
        gv = generator_vars(inv)
        self.cap = cap = _capacity_plan(o, max(1, len(inv.group("gateways"))), gv.get("loadgen_rate"),
                                        gv.get("loadgen_vus"))
        first = cap.climb()[0]
        budget = cap.total_budget_s() + 60
        stages = [f"{format_duration(cap.ramp_s)}:{cap.fleet_connections(first)}",
                  f"{format_duration(budget)}:{cap.fleet_connections(first)}"]
        super().__init__(Options(inventory=o.inventory, scenario="cluster", stages=stages,
                                 rate=str(cap.rate_per_user(first)), message_size=o.message_size,
                                 probe_interval=o.probe_interval, deadman_timeout=o.deadman_timeout,
                                 reports_dir=o.reports_dir, token_file=o.token_file,
                                 # constant traffic: a step's load is exactly its connections x rate (a traffic
                                 # model's users and arrivals are drawn for the plan, so steps could not change them)
                                 traffic="constant"))
        self.search = Search(cap)
        self.steps: list[dict] = []
        self.partial: str | None = None
        self.sample_rows: list[tuple] = []
        self.workers_of: dict[str, int] = {}
        self.workers_seen: set = set()
        self.counters: dict | None = None  # the gateways' /metrics counters at the last step's end

    # --- the search -------------------------------------------------------------------------------------
    def gateway_counters(self) -> dict:
        def one(host):
            r = host.run(probes._http_get(probes._metrics_url(host)), timeout=10)
            return _counters(r.stdout) if r.ok else None

        return {n: c for n, c in parallel(self._subset(self.gateways), one).items() if isinstance(c, dict)}

    def _check_agents(self) -> None:
        for name, status in self.poll().items():
            if status.get("workers_alive"):
                self.workers_of[name] = max(self.workers_of.get(name, 0), status["workers_alive"])
        gone = [n for n, s in self.agent_state.items() if s in ("dead", "unreachable", "done")]
        if gone:
            raise AgentGone(f"agent(s) {', '.join(sorted(gone))} ended during the search")

    def _sample_loop(self, stop: threading.Event) -> None:
        """Probe samples every probe interval in their own thread: a poll, a /metrics read or a step's last rows
        taking seconds on a loaded machine never leave a hold without its hosts' CPU figures."""
        while not stop.is_set():
            began = time.time()
            try:
                self.sample()
            except Exception as exc:  # one failed round is a gap in the samples, not the end of them
                log(f"probe sample failed: {exc}")
            stop.wait(max(0.0, self.probe_interval - (time.time() - began)))

    def _samples_after(self, end: float) -> None:
        """Wait (at most two probe intervals + SAMPLE_WAIT_S) until every gateway has a CPU sample after the step's
        end: a rate sample covers the time since the previous one, so that sample covers the hold's last part."""
        deadline = time.time() + 2 * self.probe_interval + SAMPLE_WAIT_S
        want = set(self.gateways)
        while time.time() < deadline:
            seen = {h for ts, h, _r, m, _v in self.sample_rows[-2000:] if ts > end and m == "gateway_cpu_percent"}
            if want <= seen:
                return
            time.sleep(0.2)

    def _wait_until(self, t: float) -> None:
        while True:
            now = time.time()
            if now >= t:
                return
            self._check_agents()
            time.sleep(max(0.0, min(2.0, t - time.time())))

    def _rows_until(self, tails: dict, rows: list, end: float) -> None:
        """Read the agents' new rows until each has one past the step's end (at most ROWS_WAIT_S)."""
        deadline = time.time() + ROWS_WAIT_S
        while True:
            for name, tail in tails.items():
                rows.extend(tail.read())
            latest = {}
            for r in rows[-2000:]:
                latest[r["agent"]] = max(latest.get(r["agent"], 0.0), r["ts"])
            if all(latest.get(n, 0.0) >= end for n in tails) or time.time() > deadline:
                return
            time.sleep(0.5)

    def _step(self, index: int, load: float, tails: dict, rows: list) -> dict:
        cap = self.cap
        conns, rate = cap.fleet_connections(load), cap.rate_per_user(load)
        before = self.counters if self.counters is not None else self.gateway_counters()  # the last step's end
        if index == 0:
            start, delay = self.plan.start_at, 0.0
        else:
            start, delay = time.time(), CONTROL_DELAY_S
            left = cap.total_budget_s() + 60
            self.control(stages=[Stage(cap.ramp_s, conns), Stage(left, conns)], rate=rate)
        win = Window(start, start + delay + cap.ramp_s + cap.settle_s, start + delay + cap.ramp_s + cap.hold_s)
        phase = "climb" if self.search.first_bad is None else "refine"
        log(f"step {index + 1} ({phase}): {load:g} {UNITS[cap.dimension]} = {conns:,} connections x "
            f"{rate:.4g} msg/s, hold {cap.hold_s:g}s")
        self._wait_until(win.end)
        self.counters = after = self.gateway_counters()
        self._rows_until(tails, rows, win.end)
        self._samples_after(win.end)
        self.workers_seen = expected_workers(self.workers_seen, rows, self.workers_of)
        fig = step_figures(rows, win, cap.step_criteria(load), cap.offered_per_s(load), conns, self.workers_seen)
        res = resources(self.sample_rows, win.hold, win.end)
        deltas = {n: {"rejected_full": after[n]["rejected_full"] - before[n]["rejected_full"],
                      "errors": {k: v - before[n]["errors"].get(k, 0) for k, v in after[n]["errors"].items()}}
                  for n in after if n in before}
        step = {"index": index + 1, "phase": phase, "load": load, "fleet_connections": conns, "rate_per_user": rate,
                "offered_per_s": cap.offered_per_s(load), **fig, "resources": res, "gateway_deltas": deltas}
        if not fig["passed"]:
            step["cause"] = name_cause(fig, res, deltas, self.workers_of, self.gateways, self.live_generators)
        return step

    def drive(self) -> None:
        self.samples = _Tee(self.samples, self.sample_rows)
        tails = {g: RowTail(self.hosts[g], f"{workdir(self.hosts[g], self.plan.run_id)}/out/timeseries.csv")
                 for g in self.agent_state if self.agent_state[g] != "unreachable"}
        rows: list[dict] = []
        stop_sampling = threading.Event()
        sampling = threading.Thread(target=self._sample_loop, args=(stop_sampling,), daemon=True, name="probe-samples")
        sampling.start()
        try:
            load = self.search.next_load()
            while load is not None:
                step = self._step(len(self.steps), load, tails, rows)
                self.steps.append(step)
                self.search.record(load, step["passed"])
                fails = [f"{r['name']}={r['actual']}" for r in step["criteria"] if r["passed"] is not True]
                log(f"step {step['index']}: {'PASS' if step['passed'] else 'FAIL ' + ', '.join(fails)}"
                    + (f" -> {step['cause']['text']}" if step.get("cause") else ""))
                del rows[:-20000]  # the next step reads only its own window
                load = self.search.next_load()
        except KeyboardInterrupt as exc:
            self.partial = stop_reason(exc)
            log(f"{self.partial}: the search ends with what it found; ramping down")
        except AgentGone as exc:
            self.partial = str(exc)
            log(f"{exc}: the search ends with what it found; ramping down")
        finally:
            stop_sampling.set()
            sampling.join(30)
            self.write_result()
        running = [n for n, s in self.agent_state.items() if s not in ("done", "dead", "unreachable")]
        if running:
            self.control(stages=[Stage(RAMP_DOWN_S, 0)])
            self.watch()

    # --- the result ------------------------------------------------------------------------------------
    def result(self) -> dict:
        cap, search = self.cap, self.search
        knee, bad = search.knee, search.first_bad
        bad_step = next((s for s in self.steps if s["load"] == bad and not s["passed"]), None)
        knee_step = next((s for s in self.steps if s["load"] == knee and s["passed"]), None)
        cause = bad_step.get("cause") if bad_step else None
        # A step the generators could not drive makes every later finding theirs too: a starved generator can fail
        # the next (lower) step without a sign of its own, and the knee would then be reported as the gateway's.
        starved = next((s["cause"] for s in self.steps if not s["passed"] and s.get("cause")
                        and not s["cause"]["gateway_capacity"]), None)
        if starved is not None and (cause is None or cause["gateway_capacity"]):
            cause = starved
        partial = [self.partial] if self.partial else []
        if cause and not cause["gateway_capacity"]:
            partial.append(f"the generators were the limit: {cause['text']}")
        if bad is None and not self.partial:
            summary_text = f"no step failed up to --max {cap.max:g}: the knee is above it"
        elif knee is None:
            summary_text = f"the first step ({bad:g}) failed already" if bad is not None else "no step was judged"
        else:
            summary_text = f"knee {knee:g} {UNITS[cap.dimension]}"
        return {
            "schema": "loadgen-capacity-result/1", "plan": cap.to_dict(), "dimension": cap.dimension,
            "unit": UNITS[cap.dimension], "knee": knee, "first_bad": bad, "resolution": search.resolution(),
            "knee_figures": _brief(knee_step) if knee_step else None,
            "failing": [r for r in bad_step["criteria"] if r["passed"] is not True] if bad_step else [],
            "cause": cause, "gateway_capacity": None if cause is None else cause["gateway_capacity"],
            "status": "PARTIAL" if partial else "PASS", "partial_reasons": partial, "text": summary_text,
            "steps": self.steps,
        }

    def write_result(self) -> None:
        if os.path.isdir(self.run_dir):
            self._write_json(FILE_NAME, self.result())


def _brief(step: dict) -> dict:
    return {"load": step["load"], "connections": step["fleet_connections"], "offered_per_s": step["offered_per_s"],
            "throughput_per_s": step["messages"]["throughput_per_s"], "message_p99_ms": step["latency_ms"].get("p99"),
            "message_p50_ms": step["latency_ms"].get("p50"),
            "connection_success_rate": step["connections"]["success_rate"]}


def capacity(o: CapacityOptions) -> int:
    if o.dimension not in ("connections", "rate"):
        raise UsageError(f"--dimension {o.dimension!r} is not one of: connections, rate")
    return CapacityTest(o).run()
