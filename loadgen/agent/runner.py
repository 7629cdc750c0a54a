"""The agent process: preflight, start workers in lockstep, write CSVs every second, summarize.

Outputs in --out DIR (docs/data-format.md): timeseries.csv (one row per second per worker, flushed
every second), gateway_metrics.csv (with --gateway-metrics), status.json (live, for watchers),
summary.json (at the end, also after a stop, a deadman timeout or a dead worker).
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import sys
import time

from loadgen import __version__, deadman
from loadgen.agent import control as control_channel
from loadgen.agent import gateway_scrape, pairs
from loadgen.agent.worker import Worker, classify_connect_error, event_loop_runner, tune_gc, worker_main
from loadgen.errors import EXIT_FAILURE, LoadgenError, UsageError
from loadgen.plan.runplan import stages_to_json
from loadgen.plan.control import Control
from loadgen.results import bytype, figures, gateway, live
from loadgen.results import histogram as hdr
from loadgen.results.columns import COLUMNS, COUNTERS, GATEWAY_COLUMNS
from loadgen.results.text import print_summary
from loadgen.results.verdict import EXIT_CODES, evaluate, verdict


ABORT_RAMP_DOWN_S = 5.0  # --abort-on: the users close within this long (as fab's abort ramps a fleet down)


def worker_index(proc) -> int:
    """The worker index of a forked worker's process (named loadgen-worker-<index>)."""
    return int(proc.name.rsplit("-", 1)[1])


def prepare_out_dir(path: str) -> None:
    """Create the output dir; never write over an earlier run's results."""
    if os.path.exists(os.path.join(path, "summary.json")) or os.path.exists(os.path.join(path, "timeseries.csv")):
        raise UsageError(f"--out {path} already holds a run; choose a new directory")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"--out {path} is not writable: {exc.strerror}") from None


async def _probe_gateway(plan) -> None:
    """One handshake per endpoint before any load: refuse to run against a dead or wrong target. The probe
    closes politely (close frame 1000, then waits briefly for the gateway's), so gateways log no 1006."""
    from picows import WSCloseCode, WSListener, WSMsgType, ws_connect

    class Probe(WSListener):
        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type == WSMsgType.CLOSE:
                transport.disconnect()

    user = f"preflight-{os.getpid()}"
    proto = None if plan.builtin_protocol else plan.protocol_profile
    if proto is None:
        path, headers = f"{plan.path}?user={user}", {"Authorization": f"Bearer {plan.token}"}
    else:
        values = proto.connection_values(user.encode(), plan.token)
        path = proto.path.render(values).decode()
        headers = {name: tpl.render(values).decode() for name, tpl in proto.headers}
    for host, port in plan.endpoints:
        url = f"ws://{host}:{port}{path}"
        try:
            transport, _ = await asyncio.wait_for(
                ws_connect(Probe, url, extra_headers=headers, websocket_handshake_timeout=5, logger_name=None), 6)
        except Exception as exc:
            reason = classify_connect_error(exc)
            if reason == "auth":
                raise LoadgenError(f"gateway {host}:{port} rejected AUTH_TOKEN (HTTP 401)") from None
            detail = {"refused": "connection refused", "timeout": "no answer within 5 s"}.get(reason, str(exc) or reason)
            raise LoadgenError(f"gateway {host}:{port} unreachable: {detail}") from None
        transport.send_close(WSCloseCode.OK)
        try:
            await asyncio.wait_for(transport.wait_disconnected(), 2)
        except (TimeoutError, asyncio.TimeoutError):
            transport.disconnect()


def preflight(plan) -> None:
    asyncio.run(_probe_gateway(plan))


class Totals:
    """Everything the summary needs, merged from every worker's rows (histograms merged, not averaged)."""

    def __init__(self) -> None:
        self.counts = {name: 0 for name in COUNTERS}
        self.latency = hdr.new_histogram()
        self.connect = hdr.new_histogram()
        self.session = hdr.new_histogram()
        self.login = hdr.new_histogram()
        self.hold: dict[int, list[int]] = {}  # per worker: received in its first hold row, in the later ones, their number
        self.hold_span: list[float] = []
        self.first_ts = None
        self.last_ts = None
        self.peak_active: dict[int, int] = {}
        self.types = bytype.TypeTotals()

    def add(self, row: dict) -> None:
        self.types.add(row.get("by_type"))
        for name in COUNTERS:
            self.counts[name] += row[name]
        hdr.merge_encoded(self.latency, row["latency_hdr"])
        hdr.merge_encoded(self.connect, row["connect_hdr"])
        hdr.merge_encoded(self.session, row["session_hdr"])
        hdr.merge_encoded(self.login, row["login_hdr"])
        ts = row["ts"]
        if row["phase"] == "hold":
            hold = self.hold.get(row["worker"])
            if hold is None:
                self.hold[row["worker"]] = [row["msgs_received"], 0, 0]
            else:
                hold[1] += row["msgs_received"]
                hold[2] += 1
            self.hold_span = [min(self.hold_span[0], ts), max(self.hold_span[1], ts)] if self.hold_span else [ts, ts]
        self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        self.peak_active[row["worker"]] = max(self.peak_active.get(row["worker"], 0), row["active"])


def summarize(plan, totals: Totals, facts: dict, gateway_rows: list[dict]) -> dict:
    c = totals.counts
    connections = figures.connection_figures(c)
    connections["peak_active"] = sum(totals.peak_active.values())
    seconds = totals.last_ts - totals.first_ts + 1 if totals.first_ts is not None else 0.0
    model = getattr(plan, "traffic_model", None)
    by_type = totals.types.figures(model.names, model.offered_mix()) if model is not None else {}
    messages = figures.message_figures(
        c, figures.throughput_per_s(totals.hold.values(), c["msgs_received"], seconds),
        sum(f["owed"] for f in by_type.values()) if model is not None else None)
    connect = hdr.percentiles_ms(totals.connect)
    latency = hdr.percentiles_ms(totals.latency)
    session = hdr.percentiles_ms(totals.session)
    login = hdr.percentiles_ms(totals.login)
    gateway_figures = gateway.scraped_figures(gateway_rows, tuple(totals.hold_span) if totals.hold_span else None)
    rows = evaluate(plan.criteria, figures.criteria_metrics(connections, messages, connect, latency, session,
                                                            gateway_figures) | bytype.criteria_metrics(by_type))
    problems = []
    if facts["stopped_by"] and not facts.get("aborted"):
        problems.append(f"stopped early: {facts['stopped_by']}")
    if facts["workers_dead"]:
        problems.append(f"workers died: {facts['workers_dead']}")
    status, partial_reasons = verdict(rows, problems, facts.get("aborted"))
    return {
        "scenario": plan.scenario,
        "agent": plan.agent_id,
        "version": __version__,
        "started_at": facts["started_at"],
        "ended_at": facts["ended_at"],
        "planned_start_at": plan.start_at,
        "start_skew_ms": facts["start_skew_ms"],
        "plan": {"stages": stages_to_json(plan.stages), "peak_connections": plan.peak_connections,
                 "hold_s": plan.hold_s, "total_s": plan.total_s,
                 "rate_per_user": plan.rate, "message_size": plan.message_size, "mode": plan.mode,
                 "endpoints": [f"{h}:{p}" for h, p in plan.endpoints], "workers": plan.workers,
                 "local_ips": plan.local_ips, "offered_msgs_per_s": plan.offered_msgs_per_s,
                 "traffic": plan.traffic["name"] if plan.traffic else "constant", "seed": plan.seed,
                 "closed_loop": plan.closed_loop},
        "protocol": {"name": plan.protocol_profile.name, "digest": plan.protocol_profile.digest,
                     "path": "built-in" if plan.builtin_protocol else "profile"},
        "connections": connections,
        "connect_ms": connect,
        "login_ms": login,
        "messages": messages,
        "latency_ms": latency,
        "by_type": by_type,
        "session_s": figures.session_seconds(session),
        "gateway": gateway_figures,
        "histograms": {"latency": hdr.encode(totals.latency), "connect": hdr.encode(totals.connect),
                       "session": hdr.encode(totals.session), "login": hdr.encode(totals.login)},
        "criteria": rows,
        "status": status,
        "partial_reasons": partial_reasons,
        "passed": status == "PASS",
        "complete": facts["complete"],
        "workers_dead": facts["workers_dead"],
        "stopped_by": facts["stopped_by"],
        "controls": facts.get("controls", []),
        "ramp_down": facts.get("ramp_down"),
        "aborted": facts.get("aborted"),
    }


class Outputs:
    """The agent's files. A write error (disk full, directory gone) is kept, not raised: the agent then
    stops the load rather than run blind, and says why."""

    def __init__(self, out_dir: str, with_gateway: bool) -> None:
        self.error: str | None = None
        self.csv = open(os.path.join(out_dir, "timeseries.csv"), "w", newline="")
        self.rows = csv.DictWriter(self.csv, fieldnames=COLUMNS)
        self.gw = open(os.path.join(out_dir, "gateway_metrics.csv"), "w", newline="") if with_gateway else None
        self.gw_rows = csv.DictWriter(self.gw, fieldnames=GATEWAY_COLUMNS) if self.gw else None
        self.guard(self.rows.writeheader)
        if self.gw_rows:
            self.guard(self.gw_rows.writeheader)
        self.gw_written = 0
        self.out_dir = out_dir
        self.pairs = self.pair_rows = None  # pairs.csv, opened with the first per-node-pair rows

    def guard(self, fn, *args) -> None:
        if self.error:
            return
        try:
            fn(*args)
        except OSError as exc:
            self.error = f"cannot write results: {exc.strerror or exc}"

    def row(self, row: dict) -> None:
        self.guard(self.rows.writerow, row)

    def pair_rows_add(self, rows: list[dict]) -> None:
        if self.pairs is None:
            try:
                self.pairs = open(os.path.join(self.out_dir, "pairs.csv"), "w", newline="")
            except OSError as exc:
                self.error = self.error or f"cannot write results: {exc.strerror or exc}"
                return
            self.pair_rows = csv.DictWriter(self.pairs, fieldnames=pairs.COLUMNS)
            self.guard(self.pair_rows.writeheader)
        for r in rows:
            self.guard(self.pair_rows.writerow, r)

    def flush(self, gateway_rows: list[dict]) -> None:
        self.guard(self.csv.flush)
        if self.pairs is not None:
            self.guard(self.pairs.flush)
        if self.gw_rows is not None:
            for r in gateway_rows[self.gw_written:]:
                self.guard(self.gw_rows.writerow, r)
            self.gw_written = len(gateway_rows)
            self.guard(self.gw.flush)

    def close(self, gateway_rows: list[dict]) -> None:
        self.flush(gateway_rows)
        for f in (self.csv, self.gw, self.pairs):
            if f is not None:
                try:
                    f.close()
                except OSError as exc:
                    self.error = self.error or f"cannot write results: {exc.strerror or exc}"


class Agent:
    """The agent process. Worker 0 runs inside it, on the same event loop as the supervisor (rows ->
    CSV, status.json, progress, deadman, deadline, signals, dead workers); workers 1..N-1 are forked
    and report over pipes. A one-worker agent is one process: its memory is not counted twice."""

    def __init__(self, plan) -> None:
        self.plan = plan
        self.out = plan.out_dir
        self.stop_reason = None
        self.gateway_rows: list[dict] = []

    def _signal(self, signum, _frame=None) -> None:
        self.stop_reason = self.stop_reason or signal.Signals(signum).name
        if self._wake is not None:
            self._wake.set()

    def _write_status(self, state: str, totals: Totals, alive: int, snap: dict | None = None) -> None:
        c = totals.counts
        status = {"state": state, "pid": os.getpid(), "updated": time.time(), "workers_alive": alive,
                  "active": self._active, "sent": c["msgs_sent"], "received": c["msgs_received"],
                  "errors": c["msgs_errors"] + c["msgs_send_failed"],
                  "connect_failed": sum(v for k, v in c.items() if k.startswith("fail_")),
                  "p99_ms": hdr.percentile_ms(totals.latency, 99), "stopped_by": self.stop_reason,
                  "control_seq": self.control.seq, "control_error": self.control.error, "ramp_down": self.ramp_down}
        if snap is not None:  # cumulative counters and buckets: fab merges the fleet's for --abort-on
            status["live"] = snap
        tmp = os.path.join(self.out, ".status.json.tmp")
        with open(tmp, "w") as f:
            json.dump(status, f)
        os.replace(tmp, os.path.join(self.out, "status.json"))

    # --- messages from workers (worker 0 calls this directly, forked workers through their pipes) -------
    def _receive(self, msg) -> None:
        kind = msg[0]
        if kind == "row":
            row = msg[1]
            self.outputs.row(row)
            self.totals.add(row)
            self.active_by_worker[row["worker"]] = row["active"]
            self._active = sum(self.active_by_worker.values())
            self.connecting_by_worker[row["worker"]] = row["connecting"]
        elif kind == "pairs":
            self.outputs.pair_rows_add(msg[1])
        elif kind == "started":
            self.starts[msg[1]] = msg[2]
        elif kind == "done":
            self.done.add(msg[1])
        elif kind == "error":
            self.errors.append(msg[2])

    def _readable(self, conn) -> None:
        """A forked worker's pipe is readable: take every whole message; EOF means the worker ended."""
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                idx = worker_index(self._forget(conn))
                if idx not in self.done:
                    self.dead.add(idx)
                self._wake.set()
                return
            self._receive(msg)
            if not conn.poll():
                return

    def _forget(self, conn):
        """Stop reading a forked worker's pipe; returns its process, joined."""
        asyncio.get_running_loop().remove_reader(conn.fileno())
        proc = self.pipes.pop(conn)
        proc.join(1)
        return proc

    async def _run_local(self, worker) -> None:
        try:
            await worker.run(own_process=False)
        except Exception as exc:  # as a forked worker's crash: reported, the others go on
            self.errors.append(f"{type(exc).__name__}: {exc}")
            self.dead.add(0)
        finally:
            self._wake.set()

    def _tick(self, now: float) -> None:
        plan = self.plan
        if now - self.last_flush >= 1.0:  # at most the last second is lost if we are killed
            self.outputs.flush(self.gateway_rows)
            alive = len(self.pipes) + (self.local is not None and not self.local.done())
            snap = live.snapshot(self.totals)
            if self.outputs.error and self.stop_reason is None:
                self.stop_reason = "output_error"
            else:
                self.outputs.guard(self._write_status, "running" if self.starts else "waiting", self.totals, alive,
                                   snap)
            if self.stop_reason is None and self.ramp_down is None and self.abort_watch.feed(now, snap):
                # ramp down through the control channel's own path, as fab's abort does for a fleet
                self.control.seq += 1
                self._apply_control(Control(self.control.seq, ramp_down_s=ABORT_RAMP_DOWN_S,
                                            reason=f"aborted: {self.abort_watch.tripped['rule']}"), now)
            self.progress.show(self.totals, self._active, now - self.start_at)
            self.last_flush = now
            if self.stop_reason is None:
                control = self.control.poll()
                if control is not None:
                    self._apply_control(control, now)
            if self.stop_reason is None and deadman.expired(plan.heartbeat_file, plan.deadman_s):
                self.stop_reason = "deadman"
            if self.stop_reason is None and now > self.hard_deadline:
                self.stop_reason = "deadline"
        if self.stop_reason and self.stop_deadline is None:
            for p in self.pipes.values():
                if p.is_alive():
                    os.kill(p.pid, signal.SIGTERM)
            if self.local_worker is not None:
                self.local_worker._stop()
            self.stop_deadline = now + plan.drain_s + plan.close_quiesce_s + 5
        if self.stop_deadline is not None and now > self.stop_deadline:
            for conn, p in list(self.pipes.items()):
                if p.is_alive():
                    p.kill()
                self._forget(conn)
                self.dead.add(worker_index(p))
            if self.local is not None and not self.local.done():
                self.local.cancel()
                self.dead.add(0)

    def _apply_control(self, control, now: float) -> None:
        """Hand each running worker its share of a control message (loadgen.agent.control)."""
        if self.ramp_down is not None:
            self.control.error = f"seq {control.seq} ignored: the run is ramping down"
            return
        running = [worker_index(p) for p in self.pipes.values() if p.is_alive()]
        if self.local is not None and not self.local.done():
            running.append(0)
        for index, share in control_channel.shares(control, running).items():
            if index == 0:
                self.local_worker.apply_control(share)
            else:
                try:
                    self.inboxes[index].send(share)
                except OSError:
                    pass  # the worker is gone: its pipe's EOF reports it
        self.controls.append(control_channel.describe(control, now))
        plan = self.plan
        left_s = control.ramp_down_s if control.ramp_down_s is not None else \
            sum(st.duration_s for st in control.stages) if control.stages is not None else None
        if left_s is not None:
            self.hard_deadline = now + left_s + plan.drain_s + plan.close_quiesce_s + 30 + plan.workers
            self.progress.total = now - self.start_at + left_s
        if control.ramp_down_s is not None:
            self.ramp_down = {"reason": control.reason, "within_s": control.ramp_down_s, "seq": control.seq,
                              "at": round(now, 3)}
    async def _start_metrics(self):
        """The live /metrics (--metrics-port): a port that cannot be bound is a warning, not a failed run."""
        plan = self.plan
        if not plan.metrics_port:
            return None
        from loadgen.agent.metrics_endpoint import MetricsServer, render

        labels = {"run_id": plan.run_id or "", "generator": plan.agent_id or "", "scenario": plan.scenario}

        def text() -> str:
            elapsed = time.time() - self.start_at
            planned = plan.profile.target_at(elapsed) if 0 <= elapsed <= plan.profile.total_s else 0
            return render(self.totals, self._active, sum(self.connecting_by_worker.values()), planned, labels)

        server = MetricsServer(text, plan.metrics_port)
        try:
            await server.start()
        except OSError as exc:
            self.metrics_error = f"--metrics-port {plan.metrics_port}: {exc.strerror or exc}"
            print(f"loadgen: warning: no live metrics: {self.metrics_error}", file=sys.stderr)
            return None
        return server

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._signal, sig)
        for conn in self.pipes:
            loop.add_reader(conn.fileno(), self._readable, conn)
        if self.local_worker is not None:
            self.local = loop.create_task(self._run_local(self.local_worker))
        metrics = await self._start_metrics()
        try:
            while self.pipes or (self.local is not None and not self.local.done()):
                self._tick(time.time())
                try:
                    async with asyncio.timeout(0.25):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self._wake.clear()
            if self.local is not None:
                try:
                    await self.local
                except asyncio.CancelledError:
                    pass
        finally:
            if metrics is not None:
                await metrics.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
                signal.signal(sig, self._signal)

    def run(self) -> int:
        plan = self.plan
        prepare_out_dir(self.out)
        preflight(plan)
        with open(os.path.join(self.out, "plan.json"), "w") as f:  # the plan as it ran, for the report
            json.dump(plan.to_dict(), f, indent=2)
        self._wake = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._signal)
        self.pipes = {}
        self.inboxes = {}  # worker index -> the agent's end of the pipe that hands a forked worker control messages
        self.control = control_channel.ControlFile(self.out)
        self.controls: list[dict] = []
        self.ramp_down = None
        if plan.workers > 1:
            import multiprocessing  # only for workers 1..N-1

            ctx = multiprocessing.get_context("fork")
        shares = [plan.profile.share(i, plan.workers) for i in range(plan.workers)]  # None: nothing to hold
        for i in range(1, plan.workers):
            if shares[i] is None:
                continue
            parent_end, child_end = ctx.Pipe(duplex=False)
            inbox, to_worker = ctx.Pipe(duplex=False)
            p = ctx.Process(target=worker_main, args=(plan, i, shares[i], child_end, inbox),
                            name=f"loadgen-worker-{i}", daemon=True)
            p.start()
            child_end.close()
            inbox.close()
            self.pipes[parent_end] = p
            self.inboxes[i] = to_worker
        tune_gc()
        self.local_worker = Worker(plan, 0, shares[0], self._receive) if shares[0] else None
        self.local = None
        self.outputs = outputs = Outputs(self.out, bool(plan.gateway_metrics))
        scraper = None
        if plan.gateway_metrics:
            scraper = gateway_scrape.Scraper(plan.gateway_metrics, self.gateway_rows.append)
            scraper.start()
        self.totals = totals = Totals()
        self.starts, self.done, self.dead, self.errors = {}, set(), set(), []
        starts, dead, errors = self.starts, self.dead, self.errors
        self._active = 0
        self.active_by_worker: dict[int, int] = {}
        self.connecting_by_worker: dict[int, int] = {}
        self.metrics_error = None
        self.start_at = start_at = plan.start_at or time.time()
        self.abort_watch = live.AbortWatch(plan.abort_rules, plan.abort_grace_s, start_at)
        self.hard_deadline = start_at + plan.profile.total_s + plan.drain_s + plan.close_quiesce_s + 30 + plan.workers
        self.progress = progress = Progress(plan, sys.stderr)
        self.stop_deadline = None
        self.last_flush = 0.0
        try:
            event_loop_runner()(self._supervise())
        finally:
            for p in self.pipes.values():  # only after an unexpected error: never leave load running
                if p.is_alive():
                    p.kill()
            if scraper is not None:
                scraper.halt.set()
                scraper.join(3)
            outputs.close(self.gateway_rows)
            progress.end()
        ended = time.time()
        started = min(starts.values()) if starts else start_at
        stopped_by = self.stop_reason or (f"ramp_down: {self.ramp_down['reason']}" if self.ramp_down else None)
        facts = {"started_at": started, "ended_at": ended, "aborted": self.abort_watch.tripped,
                 "start_skew_ms": {str(i): round((t - start_at) * 1000, 3) for i, t in sorted(starts.items())},
                 "complete": not dead and stopped_by is None, "workers_dead": sorted(dead),
                 "stopped_by": stopped_by, "controls": self.controls, "ramp_down": self.ramp_down}
        summary = summarize(plan, totals, facts, self.gateway_rows)
        if errors:
            summary["worker_errors"] = errors
        if outputs.error:
            summary["output_error"] = outputs.error
        if self.metrics_error:
            summary["metrics_error"] = self.metrics_error
        try:
            tmp = os.path.join(self.out, ".summary.json.tmp")
            with open(tmp, "w") as f:
                json.dump(summary, f, indent=2)
            os.replace(tmp, os.path.join(self.out, "summary.json"))
            self._write_status("done", totals, 0)
        except OSError as exc:
            outputs.error = outputs.error or f"cannot write results: {exc.strerror or exc}"
        if not plan.quiet:
            print_summary(summary)
            print(f"\nResults: {os.path.abspath(self.out)}")
        if outputs.error:
            print(f"loadgen: error: {outputs.error} in {self.out}; the load was stopped", file=sys.stderr)
            return EXIT_FAILURE
        if dead or errors:
            print(f"loadgen: error: {len(dead)} worker(s) died: {'; '.join(errors) or 'killed'}", file=sys.stderr)
            return EXIT_FAILURE
        return EXIT_CODES[summary["status"]]


class Progress:
    """A live line on a terminal; nothing when stderr is not a TTY."""

    def __init__(self, plan, stream) -> None:
        self.enabled = stream.isatty() and not plan.quiet
        self.stream = stream
        self.total = plan.profile.total_s
        self.last_received = 0
        self.last_t = None

    def show(self, totals: Totals, active: int, elapsed: float) -> None:
        if not self.enabled:
            return
        c = totals.counts
        rate = 0.0
        if self.last_t is not None and elapsed > self.last_t:
            rate = (c["msgs_received"] - self.last_received) / (elapsed - self.last_t)
        self.last_received, self.last_t = c["msgs_received"], elapsed
        p99 = hdr.percentile_ms(totals.latency, 99)
        failed = sum(v for k, v in c.items() if k.startswith("fail_"))
        text = (f"\r[{max(0.0, elapsed):6.0f}/{self.total:.0f}s] conns {active:>7,}  fail {failed:,}  "
                f"msgs/s {rate:>8,.0f}  errors {c['msgs_errors'] + c['msgs_send_failed']:,}  "
                f"p99 {'-' if p99 is None else f'{p99:.1f}ms'}   ")
        self.stream.write(text)
        self.stream.flush()

    def end(self) -> None:
        if self.enabled:
            self.stream.write("\n")
