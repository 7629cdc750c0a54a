"""`fab cluster-test`: preflight, start gateways (when fab manages them) and agents in lockstep,
watch with a deadman heartbeat, sample probes, collect every agent's outputs, build the report.

A dead agent or an unreachable host is recorded and the run goes on (PARTIAL); nothing waits
without a timeout, and agents stop by themselves when the controller's heartbeat stops.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import shlex
import signal
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field

from loadgen.errors import EXIT_OK, LoadgenError, UsageError
from loadgen.fleet.control import Controller
from loadgen.fleet import metrics_targets, probes
from loadgen.fleet.heartbeat import Heartbeat
from loadgen.fleet.hosts import Host, open_hosts, parallel
from loadgen.fleet.inventory import load_inventory
from loadgen.fleet.lead import start_lead
from loadgen.fleet.preflight import check_fleet, describe_clock
from loadgen.fleet import timings
from loadgen.fleet.shell import (detached, dispatch, kill_now, loadgen_command, tar_outputs, terminate,
                                 wait_listening, watch_loop)
from loadgen.fleet.watchstream import Watch
from loadgen.host import read_token_file
from loadgen.plan.addresses import parse_local_ips
from loadgen.plan.abort import DEFAULT_GRACE_S, parse_abort, parse_grace
from loadgen.plan.cluster import FleetPlan, new_run_id
from loadgen.plan.options import choose_stages, parse_int, parse_number, traffic_arg
from loadgen.plan.runplan import RunPlan, protocol_entry
from loadgen.plan.stages import parse_duration
from loadgen.results import live
from loadgen.results.junit import check_path, write_junit
from loadgen.results.verdict import EXIT_CODES

POLL_S = 1.0  # the watch reads the streams' latest lines from memory: no round trip per poll
LOG_S = 2.0  # a progress line this often
DEADLINE_S = 90.0  # after the stages' end, the remaining agents are stopped
COLLECT_TIMEOUT_S = 120.0  # one host's outputs: a hung host ends its stream, not the run
ABORT_RAMP_DOWN_S = 5.0  # --abort-on: every agent closes its users within this long


class Stopped(KeyboardInterrupt):
    """SIGTERM (a CI job cancelled, `timeout`, systemd): the same way out as Ctrl-C, so the agents are stopped and
    what they measured is collected and reported, instead of load left running until their deadman fires."""

    reason = "stopped (SIGTERM)"


class stop_on_sigterm:
    """While in effect (main thread only), SIGTERM raises Stopped in the main thread."""

    def __enter__(self):
        self.old = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise Stopped()

    def __exit__(self, *exc) -> None:
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)


def stop_reason(exc: KeyboardInterrupt) -> str:
    return getattr(exc, "reason", "interrupted (Ctrl-C)")


@dataclass
class Options:
    """`fab cluster-test` / `fab preflight` options as given (text); `fleet_plan` parses them, once."""

    inventory: str = "inventory/local"
    scenario: str = "cluster"
    vus: str | None = None
    duration: str | None = None
    stages: list[str] = field(default_factory=list)
    rate: str | None = None
    message_size: str | None = None
    min_generators: str | None = None
    probe_interval: str | None = None  # None: total/60 within 1-5 s (enough samples for the leak fit)
    deadman_timeout: str = "60s"
    reports_dir: str = "reports"
    token_file: str | None = None
    criteria: list[str] = field(default_factory=list)
    lead: str | None = None  # --lead: seconds from dispatch to the common start; None: from preflight's round (fleet/lead.py)
    traffic: str | None = None  # NAME|FILE (docs/traffic.md); None: the inventory's loadgen_traffic, else the scenario's default
    seed: str | None = None
    protocol: str | None = None  # NAME|FILE; None: the inventory's loadgen_protocol, else reference
    junit: str | None = None  # also write the criteria as JUnit XML here
    abort_on: list[str] = field(default_factory=list)  # --abort-on EXPR, repeatable
    abort_grace: str | None = None


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def workdir(host: Host, run_id: str) -> str:
    base = host.vars.get("loadgen_agent_workdir", "/var/tmp/loadgen")
    return f"{base}/runs/{run_id}/{host.name}"


def generator_vars(inv) -> dict:
    """The fleet's settings from the inventory: the first generator's variables (group_vars give all the same)."""
    return inv.hostvars[inv.group("generators")[0]] if inv.group("generators") else {}


def fleet_plan(inv, opts: Options) -> FleetPlan:
    """The fleet's plan from the command line, the inventory's loadgen_* group vars filling what it left out.

    Every value is parsed here, where it enters, naming the option (or inventory variable) it came from.
    """
    gv = generator_vars(inv)

    def given(option: str, value, var: str, default):
        """(text, name for errors): the command line's, else the inventory's, else the default."""
        if value is not None:
            return value, option
        if gv.get(var) is not None:
            return gv[var], f"{var} (inventory)"
        return default, option

    inventory_stages = gv.get("loadgen_stages")
    if inventory_stages is not None and not isinstance(inventory_stages, list):
        raise UsageError(f"loadgen_stages (inventory) {inventory_stages!r} must be a list of DURATION:TARGET")
    vus, vus_name = given("--vus", opts.vus, "loadgen_vus", 1000)
    stages = choose_stages(opts.stages, opts.vus, opts.duration, default_stages=inventory_stages, default_vus=vus,
                           default_duration=given("--duration", opts.duration, "loadgen_duration", "60s")[0],
                           vus_name=vus_name)
    rate, rate_name = given("--rate", opts.rate, "loadgen_rate", 1.0)
    size, size_name = given("--message-size", opts.message_size, "loadgen_message_size", 1024)
    traffic_name, _ = given("--traffic", opts.traffic, "loadgen_traffic", None)
    seed, seed_name = given("--seed", opts.seed, "loadgen_seed", 0)
    protocol, _ = given("--protocol", opts.protocol, "loadgen_protocol", None)
    protocol = protocol_entry(str(protocol)) if protocol else None
    generators = inv.group("generators")
    endpoints = []
    for g in inv.group("gateways"):
        port = parse_int(inv.hostvars[g].get("gateway_port", 8080), f"gateway_port of {g}")
        endpoints.append(f"{inv.hostvars[g].get('ansible_host', g)}:{port}")
    return FleetPlan(
        run_id=new_run_id(opts.scenario), scenario=opts.scenario, stages=stages,
        rate=parse_number(rate, rate_name), message_size=parse_int(size, size_name),
        generators=generators, gateways=inv.group("gateways"), endpoints=endpoints,
        min_generators=len(generators) if opts.min_generators is None else parse_int(opts.min_generators, "--min-generators"),
        criteria=list(opts.criteria), deadman_s=parse_duration(opts.deadman_timeout, "--deadman-timeout"),
        traffic=traffic_arg(traffic_name, opts.scenario, protocol), seed=parse_int(seed, seed_name),
        protocol=protocol,
        abort_on=[parse_abort(e).text for e in opts.abort_on],
        abort_grace_s=DEFAULT_GRACE_S if opts.abort_grace is None else parse_grace(opts.abort_grace))


def probe_interval(inv, opts: Options) -> float | None:
    """Seconds between host probe samples: --probe-interval, else the generators' loadgen_probe_interval, else None
    (the run's length / 60 within 1-5 s: watch)."""
    gv = generator_vars(inv)
    value, name = ((opts.probe_interval, "--probe-interval") if opts.probe_interval is not None
                   else (gv.get("loadgen_probe_interval"), "loadgen_probe_interval (inventory)"))
    if value is None:
        return None
    seconds = parse_number(value, name)
    if not seconds > 0:
        raise UsageError(f"{name} must be a positive number of seconds (got {value})")
    return seconds


def agent_plans(inv, plan: FleetPlan, pairing: str) -> dict[str, RunPlan]:
    """Each generator's RunPlan, with its inventory's loadgen_local_ips, loadgen_workers, loadgen_metrics_port."""
    out = {}
    for g in plan.generators:
        v = inv.hostvars[g]
        ips, workers = v.get("loadgen_local_ips"), v.get("loadgen_workers")
        try:
            ips = parse_local_ips(ips) if ips else None
            workers = None if workers in (None, "auto") else parse_int(workers, "loadgen_workers")
        except UsageError as exc:
            raise UsageError(f"generator {g}: {exc}") from None
        out[g] = plan.agent_plan(g, local_ips=ips, workers=workers, pairing=pairing,
                                 metrics_port=metrics_targets.metrics_port(v, g))
    return out


def _truthy(value) -> bool:
    return value is True or str(value).strip().lower() in ("true", "yes", "1", "on")


def _token(inv, opts: Options, managed: bool) -> str:
    if opts.token_file:
        return read_token_file(opts.token_file)
    if os.environ.get("AUTH_TOKEN"):
        return os.environ["AUTH_TOKEN"]
    gw = inv.group("gateways")
    token = inv.hostvars[gw[0]].get("gateway_auth_token") if gw else None
    if token:
        return str(token)
    if managed:
        return secrets.token_urlsafe(24)  # fab starts the gateways: a fresh token per run
    raise UsageError("no gateway token: set AUTH_TOKEN, give --token-file, or set gateway_auth_token (vault) in the inventory")


class ClusterTest:
    def __init__(self, opts: Options) -> None:
        """Everything is parsed and checked here, before any host is touched or any file written."""
        self.opts = opts
        if opts.junit:
            check_path(opts.junit)
        self.lead_s = None
        if opts.lead is not None:
            self.lead_s = parse_duration(opts.lead, "--lead")
            if not self.lead_s > 0:
                raise UsageError(f"--lead must be a positive duration (got {opts.lead})")
        self.inv = inv = load_inventory(opts.inventory)
        self.probe_interval = probe_interval(inv, opts)
        self.plan = fleet_plan(inv, opts)
        self.generators = inv.group("generators")
        self.gateways = inv.group("gateways")
        self.managed = [g for g in self.gateways if inv.hostvars[g].get("gateway_managed_by", "systemd") == "fab"]
        # gateway_cluster: the gateways route between nodes (etcd + Redis + Kafka), so agents pair every
        # sender with a recipient on another node and the latency measured is cross-node routing latency
        # (not set: on for Ansible-deployed gateways when the inventory has etcd, kafka and redis hosts, as
        # the im_gateway role's im_gateway_cluster default)
        infra = all(inv.group(g) for g in ("etcd", "kafka", "redis"))
        self.cluster_mode = any(_truthy(inv.hostvars[g]["gateway_cluster"]) if "gateway_cluster" in inv.hostvars[g]
                                else infra and g not in self.managed for g in self.gateways)
        for g in self.managed:
            missing = [k for k in ("gateway_etcd", "gateway_redis", "gateway_kafka") if not inv.hostvars[g].get(k)]
            if _truthy(inv.hostvars[g].get("gateway_cluster")) and missing:
                raise UsageError(f"gateway {g}: gateway_cluster needs {', '.join(missing)} in the inventory")
        pairing = "cross-node" if self.cluster_mode and len(self.plan.endpoints) > 1 else "same-node"
        self.agent_plans = agent_plans(inv, self.plan, pairing)
        # a protocol profile that does not use {token} (XMPP, MQTT...) needs none
        needs_token = bool(self.managed) or next(iter(self.agent_plans.values())).protocol_profile.needs_token
        self.token = _token(inv, opts, bool(self.managed) and len(self.managed) == len(self.gateways)) \
            if needs_token else ""
        self.run_dir = os.path.join(opts.reports_dir, self.plan.run_id)
        self.hosts: dict[str, Host] = {}
        self.agent_state: dict[str, str] = {}
        self.facts: dict = {"controller_started_at": time.time(), "agents": {}, "gateways": {}, "unreachable": []}
        self.samples = None
        self.heartbeat: Heartbeat | None = None  # fab-managed gateways' deadman files (agents': their watch streams)
        self.watching = Watch()
        self.timings = timings.Timings()
        self.deltas = probes.SampleDeltas()
        self.controller: Controller | None = None  # set once the agents are started
        self.ends_at: float | None = None  # when the agents' stages end: the plan's, moved by control messages
        self._published = False  # the agents' targets are on the Prometheus hosts

    # --- helpers --------------------------------------------------------------------------------------
    def _subset(self, names) -> dict[str, Host]:
        return {n: self.hosts[n] for n in names if n in self.hosts}

    def _write_json(self, name: str, data: dict) -> None:
        with open(os.path.join(self.run_dir, name), "w") as f:
            json.dump(data, f, indent=2, default=str)

    def _write_plan(self) -> None:
        self._write_json("plan.json", {**self.plan.to_dict(), "inventory": os.path.abspath(self.opts.inventory),
                                       "groups": {g: self.inv.group(g) for g in
                                                  ("generators", "gateways", "etcd", "kafka", "redis")}})

    # --- steps ------------------------------------------------------------------------------------------
    def connect(self) -> None:
        names = self.inv.all_hosts()
        self.hosts = open_hosts(self.inv, names)
        self.heartbeat = Heartbeat(self.hosts)
        results = parallel(self.hosts, lambda h: h.run("echo ok", timeout=15))
        down = {n: r for n, r in results.items() if not (getattr(r, "ok", False) and "ok" in r.stdout)}
        for n, r in down.items():
            detail = r.stderr.strip() if hasattr(r, "stderr") else str(r)
            log(f"host {n} unreachable: {detail[:200]}")
            self.facts["unreachable"].append({"host": n, "error": detail[:500]})
        reachable_gen = [g for g in self.generators if g not in down]
        if len(reachable_gen) < self.plan.min_generators:
            raise LoadgenError(f"only {len(reachable_gen)} of {len(self.generators)} generators reachable "
                               f"({', '.join(g for g in self.generators if g in down)} down); "
                               f"--min-generators is {self.plan.min_generators}; no load was started")
        for g in self.gateways:
            if g in down:
                raise LoadgenError(f"gateway host {g} unreachable; no load was started")
        for n in down:
            self.hosts.pop(n).close()
        self.live_generators = reachable_gen

    def start_gateways(self) -> None:
        """Start the reference gateway on hosts where the inventory says fab manages it (the local default)."""
        for name in self.managed:
            host = self.hosts[name]
            wd = workdir(host, self.plan.run_id) + "/gateway"
            v = host.vars
            addr = v.get("ansible_host", "127.0.0.1")
            port, mport = int(v.get("gateway_port", 8080)), int(v.get("gateway_metrics_port", 9090))
            host.put_secret(self.token, f"{wd}/token")
            extra = f" --config {shlex.quote(v['gateway_config'])}" if v.get("gateway_config") else ""
            before = "touch heartbeat"
            if _truthy(v.get("gateway_cluster")):
                extra += "".join(f" --{flag} {shlex.quote(str(v[key]))}" for flag, key in
                                 (("etcd", "gateway_etcd"), ("redis", "gateway_redis"), ("kafka", "gateway_kafka")))
                if v.get("redis_password"):  # by environment from a mode-600 file, never on a command line
                    host.put_secret(str(v["redis_password"]), f"{wd}/redis_password")
                    before += " && export REDIS_PASSWORD=\"$(cat redis_password)\""
            cmd = detached(wd, f"{loadgen_command(host)} gateway --host {addr} --port {port} "
                           f"--metrics-host {v.get('gateway_metrics_host', '127.0.0.1')} --metrics-port {mport} "
                           f"--node-id {shlex.quote(name)} --token-file token --heartbeat-file heartbeat "
                           f"--deadman-timeout {self.plan.deadman_s:g}s{extra}", "gateway",
                           before=before)
            r = host.run(cmd, timeout=30)
            if not r.ok:
                raise LoadgenError(f"gateway on {name} did not start: {r.stderr.strip()[:200]}")
            v["_gateway_pidfile"] = f"{wd}/gateway.pid"
            self.heartbeat.add(name, f"{wd}/heartbeat")
            r = host.run(wait_listening(addr, port, f"{wd}/gateway.pid", f"{wd}/gateway.log"), timeout=30)
            if not r.ok:
                raise LoadgenError(f"gateway on {name} is not listening on {addr}:{port}: "
                                   f"{(r.stdout or r.stderr).strip().splitlines()[-1:] or ['no output']}")
            self.facts["gateways"][name] = {"managed_by": "fab", "endpoint": f"{addr}:{port}"}
        for name in self.gateways:
            self.facts["gateways"].setdefault(name, {"managed_by": self.inv.hostvars[name].get("gateway_managed_by", "systemd")})

    def stop_gateways(self) -> None:
        for name in self.managed:
            host = self.hosts.get(name)
            pidfile = host.vars.get("_gateway_pidfile") if host else None
            if pidfile:
                # SIGTERM: the gateway closes its sessions (server.shutdown_grace, 2 s by default) and
                # leaves the cluster; KILL only if it has not exited in 15 s
                host.run(terminate(pidfile, 15.0), timeout=25)
                wd = os.path.dirname(pidfile)
                os.makedirs(os.path.join(self.run_dir, "gateways", name), exist_ok=True)
                try:
                    host.get(f"{wd}/gateway.log", os.path.join(self.run_dir, "gateways", name, "gateway.log"))
                except Exception as exc:  # the log is evidence, not a reason to fail the run
                    log(f"could not collect gateway log of {name}: {exc}")

    def snapshot(self, phase: str) -> None:
        def one(host: Host):
            roles = self.inv.roles_of(host.name)
            r = host.run(probes.snapshot_script(probes.snapshot_commands(host, roles)), timeout=60)
            d = os.path.join(self.run_dir, "probes", host.name, phase)
            os.makedirs(d, exist_ok=True)
            for name, text in probes.split_snapshot(r.stdout).items():
                with open(os.path.join(d, f"{name}.txt"), "w") as f:
                    f.write(text)
            return r.ok

        parallel(self.hosts, one)

    def sample(self) -> None:
        def one(host: Host):
            return host.run(probes.sample_script(host, self.inv.roles_of(host.name)), timeout=10)

        for name, r in parallel(self.hosts, one).items():
            if getattr(r, "ok", False):
                role = "+".join(self.inv.roles_of(name)) or "other"
                for row in self.deltas.rows(name, role, probes.parse_sample(r.stdout)):
                    self.samples.writerow(row)
        self._samples_file.flush()

    def start_agents(self) -> None:
        lead, how = start_lead((self.facts.get("preflight") or {}).get("generator_round_s"), self.lead_s)
        self.timings.lead(lead, how)
        log(f"start lead {lead:.1f}s: {how}")
        start_at = time.time() + lead
        self.plan.start_at = start_at
        os.makedirs(os.path.join(self.run_dir, "plans"), exist_ok=True)

        def one(host: Host):
            # one round trip: the token (first line, a protocol profile without {token} needs none) and the
            # plan on stdin, the agent started detached; then its watch stream, which touches its heartbeat
            wd = workdir(host, self.plan.run_id)
            plan = self.agent_plans[host.name].replace(start_at=start_at)
            text = json.dumps(plan.to_dict(), indent=2)
            with open(os.path.join(self.run_dir, "plans", f"{host.name}.json"), "w") as f:
                f.write(text)
            token = " --token-file token" if self.token else ""
            cmd = dispatch(wd, f"{loadgen_command(host)} run --plan plan.json --out out{token} --quiet",
                           "agent", token=bool(self.token))
            host.vars["_agent_pidfile"], host.vars["_agent_status"] = f"{wd}/agent.pid", f"{wd}/out/status.json"  # for samples
            r = host.run(cmd, timeout=30, input=(self.token + "\n" if self.token else "") + text)
            if r.ok:
                self.watching.open(host, lambda: watch_loop(wd, [f"{wd}/heartbeat"], self._stream_bound()))
            return r

        self.timings.mark("dispatch_started")
        results = parallel(self._subset(self.live_generators), one)
        self.timings.mark("agents_launched")
        for name, r in results.items():
            ok = getattr(r, "ok", False)
            self.agent_state[name] = "starting" if ok else "unreachable"
            self.facts["agents"][name] = {"launched": ok, "error": None if ok else str(getattr(r, "stderr", r))[:300]}
            if not ok:
                log(f"agent on {name} did not launch: {self.facts['agents'][name]['error']}")
        launched = [n for n, s in self.agent_state.items() if s == "starting"]
        if len(launched) < self.plan.min_generators:
            self.stop_agents()
            raise LoadgenError(f"only {len(launched)} agents launched; --min-generators is {self.plan.min_generators}")
        self.controller = Controller(self.hosts, self.plan.generators, lambda h: f"{workdir(h, self.plan.run_id)}/out")
        self.ends_at = start_at + self.plan.total_s
        self.timings.start_lead(start_at)
        log(f"{len(launched)} agents start at {time.strftime('%H:%M:%S', time.localtime(start_at))} "
            f"(in {start_at - time.time():.1f}s), {self.plan.peak_connections:,} connections, "
            f"{self.plan.total_s:.0f}s of stages")

    def publish_targets(self, running: bool) -> None:
        """The agents' /metrics as Prometheus file_sd targets: in the run directory, and on the inventory's
        Prometheus hosts while the run is going (emptied at the end). A host that cannot be written is logged."""
        if running:
            ports = {g: self.agent_plans[g].metrics_port for g in self.agent_state if self.agent_state[g] == "starting"}
            groups = metrics_targets.targets(self.inv, ports)
            self._write_json("prometheus-targets.json", groups)
        elif not self._published:
            return
        else:
            groups = []
        hosts = self.inv.group("prometheus")
        if not hosts:
            return
        from loadgen.fleet.hosts import open_hosts

        opened = open_hosts(self.inv, hosts)
        try:
            results = parallel(opened, lambda h: h.put_text(metrics_targets.to_text(groups),
                                                            metrics_targets.file_sd_path(h.vars)))
        finally:
            for h in opened.values():
                h.close()
        for name, r in results.items():
            if r is not None:
                log(f"could not write the agents' Prometheus targets on {name}: {str(r)[:200]}")
        self._published = running

    def _stream_bound(self) -> float:
        """How long a watch stream may run by itself: past the watch's deadline (reopened if the run goes on)."""
        return max(60.0, (self.ends_at or time.time()) + DEADLINE_S + 30 - time.time())

    def poll(self) -> dict:
        """The agents' latest statuses from their watch streams (no round trip); frozen and unresponsive agents
        are killed and recorded dead."""
        watching = [n for n in self.agent_state if self.agent_state[n] not in ("done", "dead", "unreachable")]
        statuses, stuck = {}, {}
        for name, (state, why, status) in self.watching.check(watching).items():
            statuses[name] = status
            if state in ("frozen", "unresponsive"):
                stuck[name] = why
                state = "dead"
            elif state == "dead":
                log(f"agent on {name} died ({why})")
                self.facts["agents"][name]["error"] = why
            self.agent_state[name] = state
            if state in ("done", "dead"):
                self.watching.close([name])
        if stuck:
            for name, why in stuck.items():
                log(f"agent on {name} {why}: killing it")
                self.facts["agents"][name]["error"] = why
            self.kill_agents(list(stuck))
        return statuses

    def control(self, **message) -> dict:
        """Change the running agents' load (loadgen.fleet.control.Controller.send: stages as fleet totals, rate,
        or ramp_down_s + reason); watch's deadline follows the new end."""
        running = [n for n, s in self.agent_state.items() if s not in ("done", "dead", "unreachable")]
        results = self.controller.send(to=running, **message)
        left = message.get("ramp_down_s")
        if left is None and message.get("stages") is not None:
            left = sum(s.duration_s for s in message["stages"])
        if left is not None:
            self.ends_at = max(time.time(), self.plan.start_at) + left
        for name, r in results.items():
            if r is not True:
                log(f"control message to {name} not delivered: {r}")
        return results

    def drive(self) -> None:
        """From the agents' start to their end: watch them (a capacity search steps their load: loadgen.capacity)."""
        self.watch()

    def watch(self) -> None:
        abort = live.AbortWatch(self.plan.abort_rules, self.plan.abort_grace_s, self.plan.start_at)
        interval = self.probe_interval or min(5.0, max(1.0, self.plan.total_s / 60))
        next_sample = next_log = 0.0
        last = {}
        sampling = None  # probes sample in their own thread: a slow host's exec never delays the watch's rules
        try:
            while not self._watch_once(abort, last):
                now = time.time()
                if now >= next_sample and (sampling is None or not sampling.is_alive()):
                    sampling = threading.Thread(target=self.sample, daemon=True, name="probe-samples")
                    sampling.start()
                    next_sample = now + interval
                if now >= next_log:
                    next_log = now + LOG_S
                    self._log_progress(last)
                time.sleep(max(0.0, POLL_S - (time.time() - now)))
        finally:
            if sampling is not None:
                sampling.join(30)

    def _watch_once(self, abort, last: dict) -> bool:
        """One poll of the streams: the abort rules, the deadline; True when no agent runs any more."""
        now = time.time()
        deadline = self.ends_at + DEADLINE_S
        statuses = self.poll()
        last.update(statuses)
        running = [n for n, s in self.agent_state.items() if s not in ("done", "dead", "unreachable")]
        if not running:
            self._log_progress(last)
            return True
        # --abort-on: the fleet's window, from every agent's cumulative counters and buckets (summed)
        if "aborted" not in self.facts:
            tripped = abort.feed(now, live.merge([s.get("live") for s in last.values()]))
            if tripped:
                self.abort(tripped, now)
        if now > deadline:
            log("deadline passed: stopping the remaining agents")
            self.stop_agents()
            return True
        return False

    def _log_progress(self, last: dict) -> None:
        running = [n for n, s in self.agent_state.items() if s not in ("done", "dead", "unreachable")]
        active = sum(s.get("active", 0) for s in last.values())
        sent = sum(s.get("sent", 0) for s in last.values())
        recv = sum(s.get("received", 0) for s in last.values())
        errors = sum(s.get("errors", 0) + s.get("connect_failed", 0) for s in last.values())
        p99 = max((s.get("p99_ms") or 0 for s in last.values()), default=0)
        log(f"t{time.time() - self.plan.start_at:+.0f}s/{self.plan.total_s:.0f}s agents running "
            f"{len(running)}/{len(self.agent_state)} | conns {active:,} | sent {sent:,} recv {recv:,} | "
            f"errors {errors:,} | worst agent p99 {p99:.1f}ms")

    def abort(self, tripped: dict, now: float) -> None:
        """An --abort-on threshold tripped: every agent ramps down within ABORT_RAMP_DOWN_S through the control
        channel; the watch goes on until they have ended. An agent the message cannot reach is stopped."""
        self.facts["aborted"] = tripped
        log(f"{tripped['text']}: every agent ramps down within {ABORT_RAMP_DOWN_S:g}s")
        sent = self.controller.send(ramp_down_s=ABORT_RAMP_DOWN_S, reason=f"aborted: {tripped['rule']}")
        self.ends_at = min(self.ends_at, now + ABORT_RAMP_DOWN_S)
        missed = [g for g, ok in sent.items() if ok is not True]
        if missed:
            log(f"control message not delivered to {', '.join(missed)}: stopping them")
            self.stop_agents(names=missed)

    def stop_agents(self, wait_s: float = 15.0, names=None) -> None:
        def one(host: Host):
            # the agent's forked workers share its session: none may go on loading the gateway
            return host.run(terminate(f"{workdir(host, self.plan.run_id)}/agent.pid", wait_s, session=True),
                            timeout=wait_s + 10)

        parallel(self._subset(names if names is not None else self.agent_state), one)

    def kill_agents(self, names) -> None:
        """SIGKILL agents (and their sessions) at once: frozen or unresponsive ones (a stopped process never
        handles SIGTERM). An unreachable host times out; its agent's deadman stops it."""
        def one(host: Host):
            return host.run(kill_now(f"{workdir(host, self.plan.run_id)}/agent.pid"), timeout=10)

        for name, r in parallel(self._subset(names), one).items():
            if not getattr(r, "ok", False):
                log(f"could not kill the agent on {name}: {getattr(r, 'stderr', r)!s:.200}")

    def collect(self) -> None:
        def one(host: Host):
            # one exec per host: a tar stream, extracted as it arrives (no file on the host, no SFTP)
            dest = os.path.join(self.run_dir, "agents", host.name)
            os.makedirs(dest, exist_ok=True)
            names = 0
            with host.stream(tar_outputs(workdir(host, self.plan.run_id)), timeout=COLLECT_TIMEOUT_S) as stream, \
                    tempfile.TemporaryDirectory(dir=dest) as tmp:
                with tarfile.open(fileobj=stream.stdout, mode="r|gz") as tar:
                    for member in tar:
                        tar.extract(member, tmp, filter="data")
                        names += member.isfile()
                for root, _, files in os.walk(tmp):
                    for f in files:
                        os.replace(os.path.join(root, f), os.path.join(dest, f))
            if not names:
                raise LoadgenError("nothing to collect")
            return True

        for name, r in parallel(self._subset(self.agent_state), one).items():
            if r is not True:
                log(f"could not collect from {name}: {r}")
                self.facts["agents"][name]["collect_error"] = str(r)[:300]

    def run(self) -> int:
        plan = self.plan
        os.makedirs(self.run_dir)  # a new run id: nothing of an earlier run is touched
        log(f"run {plan.run_id}: {plan.scenario} on {len(self.generators)} generators -> {len(self.gateways)} gateways, "
            f"stages {' '.join(map(str, plan.stages))}, {plan.rate:g} msg/s per user, traffic "
            + (f"{plan.traffic['name']} (seed {plan.seed})" if plan.traffic else "constant"))
        interrupted = None
        try:
            self.connect()
            self.start_gateways()
            self.facts["preflight"] = check_fleet(self)
            self._write_plan()
            self.snapshot("before")
            self._samples_file = open(os.path.join(self.run_dir, "probes", "samples.csv"), "w", newline="")
            self.samples = csv.writer(self._samples_file)
            self.samples.writerow(("ts", "host", "role", "metric", "value"))
            self.start_agents()
            self._write_plan()  # again, now with the common start time
            self.publish_targets(running=True)
            self.timings.watch_begins()
            try:
                with stop_on_sigterm():
                    self.drive()
            except KeyboardInterrupt as exc:
                interrupted = stop_reason(exc)
                log(f"{interrupted}: stopping agents, collecting what they measured")
                self.stop_agents()
                time.sleep(POLL_S + 1)  # the streams' next lines say GONE
                self.poll()
            self.timings.watch_ends(len(self.watching.streams), self.watching.lines())
            self.watching.close()
            t = time.time()
            self.collect()
            self.timings.took("collect_s", t)
            self.snapshot("after")
        finally:
            self.watching.close()
            self.publish_targets(running=False)
            if self.heartbeat is not None:
                self.heartbeat.stop()
            if self.samples is not None:
                self._samples_file.close()
            self.stop_gateways()
            for h in self.hosts.values():
                h.close()
            for name, state in self.agent_state.items():
                self.facts["agents"][name]["state"] = state
            self.facts["controller_ended_at"] = time.time()
            self.facts["stopped_by"] = interrupted
            self.facts["timings"] = self.timings.figures
            if os.path.isdir(self.run_dir):
                self._write_json("run.json", self.facts)
        return self.report()

    def report(self) -> int:
        from loadgen.report import build_report, format_verdict

        t = time.time()
        summary = build_report(self.run_dir)
        self.timings.took("report_s", t)
        self.timings.figures.update(timings.skew_figures(timings.agent_skews(self.run_dir)))
        self.facts["timings"] = self.timings.figures
        self._write_json("run.json", self.facts)  # again, with the report's own time
        log(self.timings.line())
        if self.opts.junit:
            write_junit(summary, self.opts.junit, f"fab cluster-test {self.plan.scenario}")
        print(format_verdict(summary), flush=True)  # the same lines as `fab report`: verdict, what failed, the page
        return EXIT_CODES[summary["status"]]


def cluster_test(opts: Options) -> int:
    return ClusterTest(opts).run()


def preflight_only(opts: Options) -> int:
    """`fab preflight`: reach every host, measure it, check the inventory's default plan fits."""
    ct = ClusterTest(opts)
    try:
        ct.connect()
        result = check_fleet(ct)
    finally:
        for h in ct.hosts.values():
            h.close()
    for name, f in result["hosts"].items():
        if isinstance(f, dict):
            log(f"{name}: {describe_clock(f)}, open files {f.get('nofile_hard')}, "
                f"cores {f.get('cores')}, connections planned {f.get('connections_planned', '-')}")
    lead, how = start_lead(result["generator_round_s"], ct.lead_s)
    log(f"preflight passed: {len(ct.hosts)} hosts, plan {' '.join(map(str, ct.plan.stages))}; "
        f"a cluster test now would start its agents {lead:.1f}s after dispatch: {how}")
    return EXIT_OK
