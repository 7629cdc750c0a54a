"""`fab capacity`: the search's plan and steps apart from I/O, the cause from step data, and end to end on this
machine against the reference gateway with known limits (a connection limit; a starved generator)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import free_port
from loadgen.capacity.cause import name_cause, resources
from loadgen.capacity.judge import Window, expected_workers, step_figures
from loadgen.capacity.rows import RowTail
from loadgen.capacity.search import Search
from loadgen.errors import UsageError
from loadgen.fleet.hosts import LocalHost
from loadgen.fleet.probes import cpu_limit
from loadgen.plan.capacity import CapacityPlan
from loadgen.results.columns import COLUMNS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAB = os.path.join(os.path.dirname(sys.executable), "fab")
DATA = os.path.join(ROOT, "tests", "data", "capacity")


def plan(**kw):
    base = dict(dimension="connections", start=500, step=500, factor=None, max=2500, hold_s=5, ramp_s=2, refine=2,
                rate=0.2, vus=100, gateways=2)
    return CapacityPlan(**{**base, **kw})


def test_plan_is_checked_once_with_one_line_each():
    p = plan()
    assert p.climb() == [500, 1000, 1500, 2000, 2500] and p.fleet_connections(1500) == 3000
    assert plan(dimension="rate", start=100, step=None, factor=2, max=1000).climb() == [100, 200, 400, 800, 1000]
    r = plan(dimension="rate", start=100, step=None, factor=2, max=1000, vus=200)
    assert r.rate_per_user(400) == 2.0 and r.offered_per_s(400) == 400
    assert [c.name for c in r.step_criteria(400)][-1] == "throughput_per_s" and r.step_criteria(400)[-1].target == 380
    assert [c.name for c in plan(rate=0).step_criteria(500)] == ["connection_success_rate", "connect_p95_ms"]
    for kw, words in [({"dimension": "cpu"}, "--dimension"), ({"factor": 2}, "not both"),
                      ({"start": 10.5}, "whole number"), ({"max": 100}, "--max"), ({"hold_s": 1}, "--hold"),
                      ({"step": 1, "max": 100000}, "steps"), ({"criteria": ["p99<3"]}, "criterion"),
                      ({"dimension": "rate", "start": 100, "max": 500000, "vus": 10, "step": 1000}, "per user")]:
        with pytest.raises(UsageError, match=words):
            plan(**kw)


def test_search_climbs_then_bisects_a_bounded_number_of_steps():
    s = Search(plan(refine=2))
    seen = []
    load = s.next_load()
    while load is not None:
        seen.append(load)
        s.record(load, load <= 1600)  # the system holds up to 1,600
        load = s.next_load()
    assert seen == [500, 1000, 1500, 2000, 1750, 1625]
    assert (s.knee, s.first_bad, s.resolution()) == (1500, 1625, 125)
    up = Search(plan(max=1000))
    for load in (500, 1000):
        assert up.next_load() == load
        up.record(load, True)
    assert up.next_load() is None and up.knee == 1000 and up.first_bad is None
    first = Search(plan(refine=1))
    first.record(first.next_load(), False)
    assert first.next_load() == 250  # between nothing and the first load
    first.record(250, True)
    assert first.next_load() is None and first.knee == 250


def _row(agent="g", worker=0, ts=0.0, **kw):
    r = {c: 0 for c in COLUMNS} | {"agent": agent, "worker": worker, "ts": ts, "phase": "hold",
                                    "latency_hdr": "", "connect_hdr": "", "session_hdr": "", "by_type": "",
                                    "elapsed_s": ts}
    return r | kw


def _step(rows, criteria=None, target=10):
    p = plan(dimension="rate", start=100, step=100, max=200, vus=10)
    return step_figures(rows, Window(100, 102, 106), criteria or p.step_criteria(100), 100, target,
                        {(r["agent"], r["worker"]) for r in rows})


def test_a_step_is_judged_on_its_own_window_and_the_cause_is_named_generators_first():
    before = [_row(ts=t, msgs_sent=100, msgs_received=100) for t in range(90, 101)]  # the step before: not judged
    rows = before + [_row(ts=100 + t, active=10, msgs_sent=100, msgs_received=40 if t > 2 else 100) for t in range(1, 7)]
    fig = _step(rows)
    assert fig["hold_rows"] == 4 and fig["messages"]["throughput_per_s"] == 40 and fig["passed"] is False
    assert [r["name"] for r in fig["criteria"] if r["passed"] is False] == ["message_success_rate", "throughput_per_s"]
    gw = {"gw1": {"rejected_full": 0, "errors": {}}}
    # the hold's mean 19 %, its busiest second 24 % of the 25 % the quota allows: saturated at the edge
    res = {"gw1": {"gateway_cpu_percent": 19.0, "max_gateway_cpu_percent": 24.0, "gateway_cpu_limit": 0.25},
           "g": {"agent_cpu_percent": 20.0}}
    cause = name_cause(fig, res, gw, {"g": 1}, ["gw1"], ["g"])
    assert cause["kind"] == "gateway_cpu" and cause["gateway_capacity"] and "25 %" in cause["text"]
    assert name_cause(fig, {**res, "gw1": {"max_gateway_cpu_percent": 24.0, "gateway_cpu_limit": 2}}, gw, {"g": 1},
                      ["gw1"], ["g"])["kind"] == "unknown"  # 24 % of the one core it may use: not saturated
    full = name_cause(fig, res, {"gw1": {"rejected_full": 7, "errors": {}}}, {"g": 1}, ["gw1"], ["g"])
    assert full["kind"] == "connection_limit" and "gw1 7" in full["text"]
    busy = name_cause(fig, {**res, "g": {"agent_cpu_percent": 95.0}}, gw, {"g": 1}, ["gw1"], ["g"])
    assert busy["kind"] == "generator" and busy["gateway_capacity"] is False  # generators first
    late = _step(before + [_row(ts=100 + t, active=10, msgs_sent=100, msgs_received=40, send_lag_ms=300 * t)
                           for t in range(1, 7)])
    assert name_cause(late, res, gw, {"g": 1}, ["gw1"], ["g"])["kind"] == "generator"
    silent = _step(before + [_row(ts=100 + t, active=10, msgs_sent=100, msgs_received=100) for t in range(1, 3)])
    assert "wrote 0 of its 4" in name_cause(silent, res, gw, {"g": 1}, ["gw1"], ["g"])["text"]
    errors = name_cause(fig, {"g": {}}, {"gw1": {"rejected_full": 0, "errors": {"route_failed": 12}}}, {"g": 1},
                        ["gw1"], ["g"])
    assert errors["kind"] == "backend_errors" and "route_failed 12" in errors["text"]


def test_a_worker_silent_from_its_start_is_expected_and_names_the_generator():
    """Two workers, one starved before its first row: the other's rows are exactly half the agent's (not short),
    so only the workers the agent reports alive show that worker 1 is behind."""
    rows = [_row(ts=t, msgs_sent=50, msgs_received=50) for t in range(90, 101)]
    rows += [_row(ts=100 + t, active=10, msgs_sent=50, msgs_received=50) for t in range(1, 7)]
    workers = expected_workers(set(), rows, {"g": 2})
    assert workers == {("g", 0), ("g", 1)} and expected_workers(workers, [], {}) == workers
    p = plan(dimension="rate", start=100, step=100, max=200, vus=10)
    fig = step_figures(rows, Window(100, 102, 106), p.step_criteria(100), 100, 10, workers)
    assert fig["send_lag"]["g"]["worker"] == 1 and fig["send_lag"]["g"]["rows"] == 0
    res = {"gw1": {"gateway_cpu_percent": 5.0, "gateway_cpu_limit": 2}, "g": {"agent_cpu_percent": 20.0}}
    cause = name_cause(fig, res, {"gw1": {"rejected_full": 0, "errors": {}}}, {"g": 2}, ["gw1"], ["g"])
    assert cause["kind"] == "generator" and "worker 1 wrote 0 of 4" in cause["text"], cause
    unseen = step_figures(rows, Window(100, 102, 106), p.step_criteria(100), 100, 10, {("g", 0)})
    assert name_cause(unseen, res, {"gw1": {"rejected_full": 0, "errors": {}}}, {"g": 2}, ["gw1"],
                      ["g"])["kind"] != "generator"  # without the alive workers: the run CI saw


def test_a_hold_without_a_cpu_sample_takes_the_first_one_after_it_and_says_when_none_came():
    samples = [(99.0, "gw1", "gateway", "gateway_cpu_percent", 10.0),  # the step before: not counted
               (101.0, "gw1", "gateway", "gateway_fds", 50.0),
               (106.5, "gw1", "gateway", "gateway_cpu_percent", 25.0),  # after the hold: covers it
               (107.5, "gw1", "gateway", "gateway_cpu_percent", 5.0),  # the next one: does not
               (106.6, "gw1", "gateway", "gateway_fds", 99.0)]  # not a rate: after the hold, not counted
    res = resources(samples, 100.0, 106.0)
    assert res["gw1"]["max_gateway_cpu_percent"] == 25.0 and res["gw1"]["gateway_cpu_percent"] == 25.0
    assert res["gw1"]["max_gateway_fds"] == 50.0
    fig = _step([_row(ts=100 + t, active=10, msgs_sent=100, msgs_received=40) for t in range(1, 7)])
    unknown = name_cause(fig, {"g": {}}, {"gw1": {"rejected_full": 0, "errors": {}}}, {"g": 1}, ["gw1"], ["g"])
    assert unknown["kind"] == "unknown" and "no CPU sample of gw1 in the hold" in unknown["text"]


def test_hold_throughput_counts_the_seconds_each_worker_s_rows_cover():
    """The window's edges fall between rows: a worker whose rows sit half a second later can have one row fewer in
    the window (its last one not yet written when the step is read: 7 of 8 rows), and a worker writing late rows
    covers more time with each; neither changes the rate."""
    rows = [_row(worker=0, ts=100 + t, msgs_sent=100, msgs_received=100) for t in range(1, 7)]
    rows += [_row(worker=1, ts=100.5 + t, msgs_sent=100, msgs_received=100) for t in range(1, 5)]
    fig = _step(rows)
    assert fig["hold_rows"] == 7 and fig["messages"]["throughput_per_s"] == pytest.approx(200)
    late = [_row(worker=0, ts=t, msgs_sent=100 * d, msgs_received=100 * d) for t, d in ((101, 1), (102, 1), (105, 3))]
    assert _step(late)["messages"]["throughput_per_s"] == pytest.approx(100)  # one row for 3 s: still 100/s


def test_cpu_limit_reads_affinity_and_every_cgroup_quota():
    assert cpu_limit("0-1", "max 100000;") == 2
    assert cpu_limit("0-3,6", "-1 100000;50000 100000;") == 0.5
    assert cpu_limit("1", "200000 100000;") == 1
    assert cpu_limit("", "") is None


def test_row_tail_reads_whole_new_rows_only(tmp_path):
    path = tmp_path / "timeseries.csv"
    header = ",".join(COLUMNS)
    line = ",".join("1" if c in ("ts", "elapsed_s", "worker", "active") else "g" if c == "agent" else "" for c in COLUMNS)
    path.write_text(header + "\n" + line + "\n" + line[:10])
    tail = RowTail(LocalHost("g", {}), str(path))
    rows = tail.read()
    assert len(rows) == 1 and rows[0]["active"] == 1 and rows[0]["agent"] == "g"
    with open(path, "a") as f:
        f.write(line[10:] + "\n")
    assert len(tail.read()) == 1 and tail.read() == []


# --- end to end -------------------------------------------------------------------------------------------
def _inventory(tmp_path, gateway_config: str = "", workers: int = 2) -> str:
    inv = tmp_path / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    cfg = ""
    if gateway_config:
        (tmp_path / "gateway.yaml").write_text(gateway_config)
        cfg = f" gateway_config={tmp_path / 'gateway.yaml'}"
    (inv / "hosts.ini").write_text(f"[generators]\ngen1 loadgen_local_ips=127.0.0.2\n[gateways]\n"
                                   f"gw1 gateway_port={free_port()} gateway_metrics_port={free_port()}{cfg}\n")
    (inv / "group_vars" / "all.yml").write_text(
        "ansible_connection: local\nansible_host: 127.0.0.1\n"
        f"loadgen_agent_workdir: {tmp_path}/work\ngateway_managed_by: fab\nloadgen_workers: {workers}\n"
        "loadgen_message_size: 256\n")
    return str(inv)


def _fab(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
    return subprocess.Popen([FAB, "-r", ROOT, "capacity", "--reports-dir", str(tmp_path / "reports"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _result(tmp_path):
    (run,) = os.listdir(tmp_path / "reports")
    run = tmp_path / "reports" / run
    return run, json.loads((run / "capacity.json").read_text()), json.loads((run / "summary.json").read_text())


def _pids(tmp_path):
    pids = []
    for d, _, fs in os.walk(tmp_path / "work"):
        for f in fs:
            if f in ("agent.pid", "gateway.pid"):
                try:
                    pids.append(int(open(os.path.join(d, f)).read().strip()))
                except ValueError:
                    pass
    return pids


@pytest.fixture
def leftovers(tmp_path):
    """What a failing test leaves behind is stopped, by PID: the processes this test started."""
    procs = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    for pid in _pids(tmp_path):
        try:
            os.killpg(pid, signal.SIGKILL)  # agents and gateways run in their own sessions
        except (ProcessLookupError, PermissionError):
            pass


def test_connection_limit_knee_within_one_step_and_named(tmp_path, leftovers):
    inv = _inventory(tmp_path, "server:\n  max_connections: 1500\n")
    proc = _fab(tmp_path, "-i", inv, "--start", "1000", "--step", "500", "--max", "2000", "--refine", "1",
                "--hold", "4s", "--ramp", "2s", "--rate", "0.2")
    leftovers.append(proc)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    run, cap, summary = _result(tmp_path)
    assert abs(cap["knee"] - 1500) <= 500 and cap["first_bad"] > cap["knee"], out
    assert cap["cause"]["kind"] == "connection_limit" and cap["gateway_capacity"] is True, cap["cause"]
    assert summary["status"] == "PASS" and summary["capacity"]["knee"] == cap["knee"]
    assert summary["capacity"]["cause"]["kind"] == "connection_limit"
    knee_step = next(s for s in cap["steps"] if s["load"] == cap["knee"])
    assert knee_step["connections"]["active_end"] == knee_step["fleet_connections"] and knee_step["passed"]
    bad = next(s for s in cap["steps"] if s["load"] == cap["first_bad"])
    assert bad["gateway_deltas"]["gw1"]["rejected_full"] > 0 and bad["connections"]["failed_by_reason"]["rejected"] > 0
    assert [s["load"] for s in cap["steps"]][:3] == [1000, 1500, 2000]
    assert f"knee {cap['knee']:g} connections per gateway node" in out and "cause: gateway connection limit" in out
    html = (run / "report.html").read_text()
    assert 'id="capacity-steps"' in html and "server.max_connections" in html
    # the agents followed every step through the control channel
    agent = json.loads((run / "agents" / "gen1" / "summary.json").read_text())
    assert len(agent["controls"]) == len(cap["steps"]) and agent["stopped_by"] is None


def _agent_worker(tmp_path, timeout=60):
    """The forked worker of the run's agent (worker 0 runs in the agent process itself)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for d, _, fs in os.walk(tmp_path / "work"):
            if "agent.pid" in fs:
                try:
                    pid = int(open(os.path.join(d, "agent.pid")).read())
                    kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
                except (OSError, ValueError):
                    continue
                if kids:
                    return int(kids[0])
        time.sleep(0.1)
    raise AssertionError("the agent's forked worker did not appear")


def test_a_starved_generator_is_named_not_reported_as_the_gateways_capacity(tmp_path, leftovers):
    inv = _inventory(tmp_path)
    proc = _fab(tmp_path, "-i", inv, "--dimension", "rate", "--vus", "200", "--start", "100", "--factor", "2",
                "--max", "3200", "--refine", "1", "--hold", "4s", "--ramp", "1s")
    leftovers.append(proc)
    worker = _agent_worker(tmp_path)
    # the worker shares core 0 with a busy process, at the lowest priority (its session's too: with autogroup
    # scheduling, nice counts between sessions only through the session's autogroup)
    subprocess.run(["taskset", "-p", "-c", "0", str(worker)], check=True, capture_output=True)
    subprocess.run(["renice", "-n", "19", "-p", str(worker)], check=True, capture_output=True)
    try:
        if open("/proc/sys/kernel/sched_autogroup_enabled").read().strip() == "1":
            with open(f"/proc/{worker}/autogroup", "w") as f:
                f.write("19")
    except OSError:
        pass
    busy = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", "while True: pass"], start_new_session=True)
    leftovers.append(busy)
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        busy.kill()
        busy.wait(10)
    assert proc.returncode == 1, out  # PARTIAL: the gateway's capacity was not measured
    run, cap, summary = _result(tmp_path)
    assert cap["cause"]["kind"] == "generator" and cap["gateway_capacity"] is False, (cap["cause"], out)
    assert "not the gateway" in cap["cause"]["text"]
    assert summary["status"] == "PARTIAL" and any("generators were the limit" in r for r in summary["partial_reasons"])
    assert "generators' limit, not the gateway's capacity" in (run / "report.html").read_text()


def test_compare_two_capacity_runs_regresses_when_the_knee_moves_down(tmp_path):
    from loadgen.report import compare_runs, format_comparison

    runs = {}
    for name, knee in (("a", 1500.0), ("b", 1000.0), ("c", 1450.0)):
        runs[name] = d = tmp_path / name
        shutil.copytree(os.path.join(DATA, "run"), d)
        cap = json.loads((d / "capacity.json").read_text())
        cap["knee"] = knee
        (d / "capacity.json").write_text(json.dumps(cap))
    worse = compare_runs(str(runs["a"]), str(runs["b"]), tolerance=0.1)
    assert worse["regressions"] == ["capacity_knee"] and [f["name"] for f in worse["figures"]] == ["capacity_knee"]
    assert "Capacity knee (connections per gateway node): 1,500 -> 1,000" in format_comparison(worse)
    assert compare_runs(str(runs["a"]), str(runs["c"]), tolerance=0.1)["regressions"] == []  # -3 %: within tolerance
    assert compare_runs(str(runs["b"]), str(runs["a"]), tolerance=0.1)["regressions"] == []


class CpuQuota:
    """A cgroup whose processes may use `share` of one core (v1 cpu controller or v2 cpu.max), made and removed by
    the test; processes are moved back to the root group on close."""

    def __init__(self, share: float) -> None:
        mounts = [line.split() for line in open("/proc/mounts")]
        v1 = next((m[1] for m in mounts if m[2] == "cgroup" and "cpu" in m[3].split(",")), None)
        v2 = next((m[1] for m in mounts if m[2] == "cgroup2"), None)
        period = 100_000
        if v1:
            self.root, self.path = v1, os.path.join(v1, f"loadgen-capacity-{os.getpid()}")
            os.mkdir(self.path)
            self._write("cpu.cfs_period_us", str(period))
            self._write("cpu.cfs_quota_us", str(int(share * period)))
        elif v2:
            self.root, self.path = v2, os.path.join(v2, f"loadgen-capacity-{os.getpid()}")
            if "cpu" not in open(os.path.join(v2, "cgroup.subtree_control")).read().split():
                with open(os.path.join(v2, "cgroup.subtree_control"), "w") as f:
                    f.write("+cpu")
            os.mkdir(self.path)
            self._write("cpu.max", f"{int(share * period)} {period}")
        else:
            pytest.fail("no cgroup cpu controller mounted (v1 'cpu' or cgroup2): the gateway CPU test needs one")

    def _write(self, name: str, text: str) -> None:
        with open(os.path.join(self.path, name), "w") as f:
            f.write(text)

    def add(self, pid: int) -> None:
        self._write("cgroup.procs", str(pid))

    def close(self) -> None:
        for pid in open(os.path.join(self.path, "cgroup.procs")).read().split():
            try:
                with open(os.path.join(self.root, "cgroup.procs"), "w") as f:
                    f.write(pid)
            except OSError:
                pass
        os.rmdir(self.path)


def test_a_gateway_limited_to_a_quarter_core_is_named_gateway_cpu(tmp_path, leftovers):
    """The gateway may use 25 % of one core (cgroup quota, pinned to core 1): it saturates long before the
    generators (which need ~1.5x its CPU per message), and the cause compares its CPU with that live limit."""
    inv = _inventory(tmp_path)
    quota = CpuQuota(0.25)
    try:
        proc = _fab(tmp_path, "-i", inv, "--dimension", "rate", "--vus", "200", "--start", "800", "--factor", "2",
                    "--max", "12800", "--refine", "1", "--hold", "5s", "--ramp", "1s")
        leftovers.append(proc)
        deadline, gateway = time.time() + 60, None
        while gateway is None and time.time() < deadline:  # the gateway starts before the agents' load does
            for d, _, fs in os.walk(tmp_path / "work"):
                if "gateway.pid" in fs:
                    try:
                        gateway = int(open(os.path.join(d, "gateway.pid")).read())
                    except ValueError:
                        pass
            time.sleep(0.05)
        assert gateway, "the gateway did not start"
        quota.add(gateway)
        subprocess.run(["taskset", "-a", "-p", "-c", str(min(1, os.cpu_count() - 1)), str(gateway)], check=True,
                       capture_output=True)
        out, _ = proc.communicate(timeout=240)
    finally:
        quota.close()
    assert proc.returncode == 0, out
    run, cap, summary = _result(tmp_path)
    assert cap["knee"] is not None and cap["cause"]["kind"] == "gateway_cpu", (cap["cause"], out)
    assert cap["cause"]["evidence"]["usable_percent"] == pytest.approx(25, abs=1)
    bad = next(s for s in cap["steps"] if s["load"] == cap["first_bad"])
    assert bad["resources"]["gw1"]["gateway_cpu_limit"] == pytest.approx(0.25)
    assert summary["capacity"]["gateway_capacity"] is True and "gateway CPU" in out
