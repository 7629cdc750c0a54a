"""`fab cluster-test` end to end on a local inventory: the same code path as SSH fleets, on this machine."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import free_port
from loadgen.fleet.lead import start_lead
from loadgen.plan.runplan import RunPlan
from loadgen.report import analyze_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAB = os.path.join(os.path.dirname(sys.executable), "fab")


def write_inventory(tmp_path, extra_generators: str = "", gateways: int = 2) -> str:
    inv = tmp_path / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    gws = "\n".join(f"gw{i} gateway_port={free_port()} gateway_metrics_port={free_port()}" for i in range(1, gateways + 1))
    (inv / "hosts.ini").write_text(
        f"[generators]\ngen1 loadgen_local_ips=127.0.0.2\ngen2 loadgen_local_ips=127.0.0.3\n{extra_generators}\n"
        f"[gateways]\n{gws}\n")
    (inv / "group_vars" / "all.yml").write_text(
        "ansible_connection: local\nansible_host: 127.0.0.1\n"
        f"loadgen_agent_workdir: {tmp_path}/work\ngateway_managed_by: fab\nloadgen_workers: 1\n"
        'loadgen_stages: ["2s:200", "6s:200", "1s:0"]\nloadgen_rate: 2\nloadgen_message_size: 256\n')
    return str(inv)


def fab(*args, timeout=180, **popen):
    env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
    return subprocess.run([FAB, "-r", ROOT, *args], capture_output=True, text=True, timeout=timeout, env=env, **popen)


def only_run(reports):
    runs = [d for d in os.listdir(reports) if os.path.isdir(os.path.join(reports, d))]
    assert len(runs) == 1, runs
    return os.path.join(reports, runs[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except OSError:
        return False


def started_pids(tmp_path):
    """PIDs of the agents and gateways this test's runs started (from their pid files)."""
    pids = []
    for d, _, fs in os.walk(tmp_path / "work"):
        for f in fs:
            if f in ("agent.pid", "gateway.pid"):
                try:
                    pids.append(int(open(os.path.join(d, f)).read().strip()))
                except ValueError:
                    pass
    return pids


def no_loadgen_processes_of(tmp_path):
    """Agents, their workers and gateways of this test that are still running."""
    pids = started_pids(tmp_path)
    out = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True).stdout.split("\n")[1:]
    children = [int(ln.split()[0]) for ln in out if ln.split() and int(ln.split()[1]) in pids]
    return [p for p in pids + children if _alive(p)]


@pytest.fixture(autouse=True)
def stop_leftovers(tmp_path):
    """Whatever a failing test leaves behind is stopped (by PID: only what this test started)."""
    procs = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    for pid in no_loadgen_processes_of(tmp_path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_local_cluster_test_runs_collects_probes_and_reports(tmp_path):
    inv, reports = write_inventory(tmp_path), tmp_path / "reports"
    r = fab("cluster-test", "-i", inv, "--reports-dir", str(reports), "--probe-interval", "2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = only_run(reports)
    assert "report:" in r.stdout and os.path.exists(os.path.join(run, "report.html"))
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["status"] == "PASS"
    assert summary["connections"]["established"] == 200
    for gen in ("gen1", "gen2"):
        s = json.load(open(os.path.join(run, "agents", gen, "summary.json")))
        assert s["connections"]["established"] == 100 and s["complete"]
        assert abs(s["start_skew_ms"]["0"]) < 500  # lockstep: both started at the planned instant
    plan = json.load(open(os.path.join(run, "plan.json")))
    assert plan["shares"] == {"gen1": ["2s:100", "6s:100", "1s:0"], "gen2": ["2s:100", "6s:100", "1s:0"]}
    assert plan["start_at"] is not None and plan["schema"] == "loadgen-fleet-plan/1"
    for gen in ("gen1", "gen2"):  # each agent ran the plan file fab wrote for it, and copied it into its outputs
        sent = json.load(open(os.path.join(run, "plans", f"{gen}.json")))
        work = [os.path.join(d, "plan.json") for d, _, fs in os.walk(tmp_path / "work") if d.endswith(f"/{gen}")
                and "plan.json" in fs]
        assert len(work) == 1 and json.load(open(work[0])) == sent
        ran = json.load(open(os.path.join(run, "agents", gen, "plan.json")))
        assert sent["workers"] == 1 and sent["stages"] == ["2s:100", "6s:100", "1s:0"]
        assert ran == sent and RunPlan.from_dict(ran).start_at == plan["start_at"]
    facts = json.load(open(os.path.join(run, "run.json")))
    assert {a["state"] for a in facts["agents"].values()} == {"done"}
    for host in ("gen1", "gen2", "gw1", "gw2"):
        assert os.path.exists(os.path.join(run, "probes", host, "before", "ss-s.txt"))
        assert os.path.exists(os.path.join(run, "probes", host, "after", "established.txt"))
    assert "open files" in open(os.path.join(run, "probes", "gw1", "before", "gateway-limits.txt")).read()
    samples = open(os.path.join(run, "probes", "samples.csv")).read()
    assert "gateway_active_connections" in samples and "gateway_rss_bytes" in samples
    df = pd.read_csv(os.path.join(run, "probes", "samples.csv"))
    for gen in ("gen1", "gen2"):  # the agent's memory, all its processes, and its connections
        mine = df[df["host"] == gen]
        assert mine[mine["metric"] == "agent_active_connections"]["value"].max() == 100
        assert mine[mine["metric"] == "agent_rss_bytes"]["value"].max() > 10 * 2**20
        assert (mine["metric"] == "agent_cpu_percent").any()  # by process: the host's CPU is the whole machine's
    m = analyze_run(run)
    rows = {r["host"]: r for r in m["hosts"]["rows"]}
    assert rows["gen1"]["memory_per_connection"] > 0 and rows["gen2"]["agent_rss_bytes_max"] > 10 * 2**20
    pre = facts["preflight"]["hosts"]  # every host is this machine: one kernel, the controller's clock
    assert len({pre[h]["boot_id"] for h in ("gen1", "gen2", "gw1", "gw2")}) == 1
    assert all(pre[h]["clock_same_kernel"] and pre[h]["clock_offset_ms"] == 0 for h in pre)
    assert m["hosts"]["machines"] == [{"hosts": ["gen1", "gen2", "gw1", "gw2"], "netns_shared": True}]
    # the start lead followed preflight's measured round over the generators, and says so
    t, round_s = facts["timings"], facts["preflight"]["generator_round_s"]
    assert round_s > 0 and (t["lead_s"], t["lead_rule"]) == start_lead(round_s)
    assert f"start lead {t['lead_s']:.1f}s: max(" in r.stdout
    assert r.stdout.splitlines()[-2:] == [f"PASS: {os.path.basename(run)}", f"report: {os.path.abspath(run)}/report.html"]
    # the token never leaves the controller's memory except in mode-600 files
    token_files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "work") for f in fs if f == "token"]
    assert token_files and all(os.stat(p).st_mode & 0o077 == 0 for p in token_files)
    token = open(token_files[0]).read().strip()
    for d, _, fs in [*os.walk(run), *os.walk(tmp_path / "work")]:
        for f in fs:
            if f != "token":
                assert token not in open(os.path.join(d, f), errors="replace").read(), f
    assert no_loadgen_processes_of(tmp_path) == []  # gateways fab started are stopped again


def test_dead_agent_makes_a_partial_report_naming_the_host(tmp_path, stop_leftovers):
    inv, reports = write_inventory(tmp_path), tmp_path / "reports"
    proc = subprocess.Popen([FAB, "-r", ROOT, "cluster-test", "-i", inv, "--reports-dir", str(reports),
                             "--stage", "2s:200", "--stage", "10s:200"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    stop_leftovers.append(proc)
    pidfile = csv_path = None
    deadline = time.time() + 60
    while time.time() < deadline and pidfile is None:
        for d, _, fs in os.walk(tmp_path / "work"):
            csv_path = os.path.join(d, "out", "timeseries.csv")
            if "agent.pid" in fs and d.endswith("gen2") and os.path.exists(csv_path) and \
                    len(open(csv_path).read().splitlines()) >= 4:  # rows are flowing
                pidfile = os.path.join(d, "agent.pid")
                break
        time.sleep(0.5)
    assert pidfile, "agent of gen2 never started"
    os.kill(int(open(pidfile).read()), signal.SIGKILL)
    rows_at_kill = len(open(csv_path).read().splitlines())
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out[-2000:]
    run = only_run(reports)
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["status"] == "PARTIAL"
    assert any("gen2" in reason for reason in summary["partial_reasons"])
    rows = open(os.path.join(run, "agents", "gen2", "timeseries.csv")).read().splitlines()
    assert len(rows) >= rows_at_kill >= 4  # its data up to the last flushed second is in the report's input
    assert "gen2" in open(os.path.join(run, "report.html")).read()
    time.sleep(1)
    assert no_loadgen_processes_of(tmp_path) == []


def test_unreachable_generator_stops_before_load_unless_min_generators_allows(tmp_path):
    bad = f"gen3 ansible_connection=ssh ansible_port={free_port()} ansible_user=nobody\n"
    inv, reports = write_inventory(tmp_path, extra_generators=bad), tmp_path / "reports"
    r = fab("cluster-test", "-i", inv, "--reports-dir", str(reports))
    assert r.returncode == 1
    assert "only 2 of 3 generators reachable (gen3 down)" in r.stderr and "no load was started" in r.stderr
    assert not os.path.exists(os.path.join(only_run(reports), "agents"))
    r = fab("cluster-test", "-i", inv, "--reports-dir", str(tmp_path / "r2"), "--min-generators", "2",
            "--criterion", "message_p99_ms=off")  # a busy machine's latency would make it FAIL, not PARTIAL
    assert r.returncode == 1, r.stdout[-2000:]  # PARTIAL: it ran, but not on every host
    summary = json.load(open(os.path.join(only_run(tmp_path / "r2"), "summary.json")))
    assert summary["status"] == "PARTIAL" and summary["connections"]["established"] > 0
    assert any("gen3" in reason for reason in summary["partial_reasons"])


def test_killed_controller_leaves_no_orphaned_load(tmp_path, stop_leftovers):
    inv, reports = write_inventory(tmp_path), tmp_path / "reports"
    proc = subprocess.Popen([FAB, "-r", ROOT, "cluster-test", "-i", inv, "--reports-dir", str(reports),
                             "--stage", "2s:100", "--stage", "120s:100", "--deadman-timeout", "4s"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop_leftovers.append(proc)
    deadline = time.time() + 60
    while time.time() < deadline and len(no_loadgen_processes_of(tmp_path)) < 4:
        time.sleep(0.5)
    assert len(no_loadgen_processes_of(tmp_path)) >= 4  # 2 gateways + 2 agents (+ workers)
    time.sleep(3)
    proc.kill()
    proc.wait(10)
    killed_at = time.time()
    while no_loadgen_processes_of(tmp_path) and time.time() - killed_at < 30:
        time.sleep(0.5)
    assert no_loadgen_processes_of(tmp_path) == []
    assert time.time() - killed_at < 20  # deadman 4 s + drain + close
    summaries = [os.path.join(d, "summary.json") for d, _, fs in os.walk(tmp_path / "work") if "summary.json" in fs]
    assert len(summaries) == 2
    assert {json.load(open(p))["stopped_by"] for p in summaries} == {"deadman"}


def _default_sigint() -> None:
    # a shell's background job inherits SIGINT ignored, and Python then keeps it ignored: give fab a terminal's
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig,reason", [(signal.SIGINT, "interrupted (Ctrl-C)"), (signal.SIGTERM, "stopped (SIGTERM)")],
                         ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_agents_collects_and_reports_partial(sig, reason, tmp_path, stop_leftovers):
    inv, reports = write_inventory(tmp_path), tmp_path / "reports"
    proc = subprocess.Popen([FAB, "-r", ROOT, "cluster-test", "-i", inv, "--reports-dir", str(reports),
                             "--stage", "2s:100", "--stage", "120s:100",  # the subject is the PARTIAL verdict:
                             "--criterion", "message_p99_ms=off", "--criterion", "connect_p95_ms=off"],  # not load
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_default_sigint)
    stop_leftovers.append(proc)
    deadline = time.time() + 60
    while time.time() < deadline:  # until both agents have held their connections for a few seconds
        csvs = [os.path.join(d, "timeseries.csv") for d, _, fs in os.walk(tmp_path / "work") if "timeseries.csv" in fs]
        if len(csvs) == 2 and all(len(open(c).read().splitlines()) >= 5 for c in csvs):
            break
        time.sleep(0.5)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 1, out[-2000:]
    assert f"{reason}: stopping agents, collecting what they measured" in out
    run = only_run(reports)
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["status"] == "PARTIAL" and summary["connections"]["established"] == 100
    assert json.load(open(os.path.join(run, "run.json")))["stopped_by"] == reason
    assert no_loadgen_processes_of(tmp_path) == []


# Bad input to `fab cluster-test`: one line naming the option and what is allowed, exit 2, and nothing
# started: no run directory, no work directory on any host (no gateway, no agent, no token copied).
FAB_BAD_INPUT = [
    (["--rate", "x"], "--rate 'x' is not a number"),
    (["--rate", "-1"], "--rate must be between 0 and 1,000 messages/s per user (got -1)"),
    (["--rate", "5000"], "--rate must be between 0 and 1,000 messages/s per user (got 5,000)"),
    (["--vus", "abc"], "--vus 'abc' is not a whole number"),
    (["--vus", "-5", "--duration", "2s"], "--vus must be between 1 and 10,000,000 (got -5)"),
    (["--vus", "1", "--duration", "2s"], "1 connections cannot be shared by 2 generators"),
    (["--vus", "10", "--duration", "0s"], "--duration must be longer than 0s"),
    (["--vus", "10", "--duration", "soon"], "--duration 'soon' is not a duration"),
    (["--message-size", "0"], "message size must be between 1 and 1,048,576 bytes (got 0)"),
    (["--scenario", "soak"], "--scenario 'soak' is not one of: connection, throughput, cluster"),
    (["--criterion", "bogus<1", "--vus", "10", "--duration", "2s"], "criterion 'bogus<1' must be NAME<VALUE"),
    (["--criterion", "message_p99_ms<fast"], "criterion 'message_p99_ms<fast' must be NAME<VALUE"),
    (["--stage", "5s:10", "--vus", "10"], "--stage conflicts with --vus/--duration"),
    (["--stage", "5x:10"], "stage '5x:10' duration '5x' is not a duration"),
    (["--stage", "5s"], "stage '5s' must be DURATION:TARGET"),
    (["--stage", "5s:lots"], "target 'lots' is not a whole number"),
    (["--stage", "5s:0"], "every stage targets 0 connections"),
    (["--deadman-timeout", "1s"], "--deadman-timeout must be at least 3s"),
    (["--min-generators", "3"], "--min-generators must be between 1 and 2 (got 3)"),
    (["--min-generators", "two"], "--min-generators 'two' is not a whole number"),
    (["--probe-interval", "0"], "--probe-interval must be a positive number"),
    (["--lead", "soon"], "--lead 'soon' is not a duration"),
    (["--lead", "0s"], "--lead must be a positive duration (got 0s)"),
    (["--token-file", "/nonexistent/token"], "token file /nonexistent/token: No such file or directory"),
    (["-i", "/nonexistent/inventory"], "inventory /nonexistent/inventory does not exist"),
]


@pytest.mark.parametrize("args,words", FAB_BAD_INPUT, ids=[" ".join(a) for a, _ in FAB_BAD_INPUT])
def test_fab_bad_input_is_one_line_exit_2_and_starts_nothing(args, words, tmp_path):
    inv, reports = write_inventory(tmp_path), tmp_path / "reports"
    r = fab("cluster-test", *([] if "-i" in args else ["-i", inv]), *args, "--reports-dir", str(reports))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in r.stderr, lines
    assert not reports.exists() and not (tmp_path / "work").exists()


def test_probe_interval_comes_from_the_command_line_else_the_inventory_and_is_checked_once(tmp_path):
    from loadgen.errors import UsageError
    from loadgen.fleet.clustertest import Options, probe_interval
    from loadgen.fleet.inventory import load_inventory

    inv = write_inventory(tmp_path)
    assert probe_interval(load_inventory(inv), Options(inventory=inv)) is None  # the run's length decides (watch)
    with open(os.path.join(inv, "group_vars", "all.yml"), "a") as f:
        f.write("loadgen_probe_interval: 3\n")
    assert probe_interval(load_inventory(inv), Options(inventory=inv)) == 3.0
    assert probe_interval(load_inventory(inv), Options(inventory=inv, probe_interval="0.5")) == 0.5
    with open(os.path.join(inv, "group_vars", "all.yml"), "a") as f:
        f.write("loadgen_probe_interval: -1\n")
    with pytest.raises(UsageError, match=r"loadgen_probe_interval \(inventory\) must be a positive number"):
        probe_interval(load_inventory(inv), Options(inventory=inv))


def test_fab_refuses_a_token_file_others_can_read(tmp_path):
    inv, reports = write_inventory(tmp_path), tmp_path / "reports"
    token = tmp_path / "token"
    token.write_text("secret-token-value")
    token.chmod(0o644)
    r = fab("cluster-test", "-i", inv, "--token-file", str(token), "--reports-dir", str(reports))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"fab: error: token file {token} is readable by others (mode 644); chmod 600 it"]
    assert not reports.exists() and not (tmp_path / "work").exists()


def test_fab_refuses_bad_generator_vars_in_the_inventory(tmp_path):
    inv = write_inventory(tmp_path, extra_generators="gen3 loadgen_local_ips=127.0.0.300\n")
    r = fab("cluster-test", "-i", inv, "--reports-dir", str(tmp_path / "reports"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "fab: error: generator gen3: --local-ips '127.0.0.300': '127.0.0.300' does not appear to be an IPv4 or IPv6 address"]
    assert not (tmp_path / "reports").exists() and not (tmp_path / "work").exists()


def test_fab_preflight_of_a_missing_inventory_is_one_line_exit_2():
    r = fab("preflight", "-i", "/nonexistent/inventory")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["fab: error: inventory /nonexistent/inventory does not exist"]


def test_report_of_a_missing_run_dir_is_one_line_exit_2():
    r = fab("report", "/tmp")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "not a run directory" in r.stderr


def test_inventory_without_generators_or_malformed_is_refused(tmp_path):
    inv = tmp_path / "inv.ini"
    inv.write_text("[gateways]\ngw1 ansible_connection=local\n")
    r = fab("cluster-test", "-i", str(inv), "--reports-dir", str(tmp_path / "r"))
    assert r.returncode == 2 and "no hosts in group 'generators'" in r.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text("all: [this is: not: an inventory\n")
    r = fab("cluster-test", "-i", str(bad), "--reports-dir", str(tmp_path / "r"))
    assert r.returncode == 2 and "not a valid Ansible inventory" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_preflight_measures_hosts_and_refuses_impossible_plans(tmp_path):
    inv = write_inventory(tmp_path)
    r = fab("preflight", "-i", inv)
    assert r.returncode == 0, r.stdout + r.stderr
    for host in ("gen1", "gen2", "gw1", "gw2"):
        assert f"{host}: clock offset" in r.stdout
    assert "preflight passed" in r.stdout and "would start its agents" in r.stdout
    # 2 generators x 150,000 connections, one source IP each, 2 gateway endpoints: 150,000 > ports x 1 x 2
    r = fab("cluster-test", "-i", inv, "--reports-dir", str(tmp_path / "r"), "--stage", "5s:300000")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "preflight refused the plan" in err[0] and "150,000 connections > ephemeral ports" in err[0]
    assert no_loadgen_processes_of(tmp_path) == []  # the gateways it had started are stopped again
