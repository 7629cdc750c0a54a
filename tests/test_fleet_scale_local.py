"""The controller at fleet scale, on this machine: one-round-trip dispatch, the watch stream, frozen and
unresponsive agents, tar-stream collection, timings (loadgen.fleet.watchstream, shell, hosts, timings)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import free_port
from loadgen.fleet.hosts import LocalHost
from loadgen.fleet.shell import dispatch, tar_outputs, watch_loop
from loadgen.fleet.timings import skew_figures
from loadgen.fleet.watchstream import FROZEN_S, SILENT_S, STARTUP_S, Beat, judge, parse_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAB = os.path.join(os.path.dirname(sys.executable), "fab")


# ---------------------------------------------------------------- the stream's lines and the rules, no I/O


def test_parse_line():
    b = parse_line('ALIVE 0 {"state": "running", "active": 50}\n')
    assert b == Beat(True, 0.0, {"state": "running", "active": 50})
    assert parse_line("GONE - {}") == Beat(False, None, {})
    assert parse_line('ALIVE 3 {"a": "x y z"}').status == {"a": "x y z"}  # spaces inside the JSON
    for bad in ("", "ALIVE", "ALIVE 1", "MAYBE 1 {}", "ALIVE x {}", 'ALIVE 1 {"cut', "GONE - [1]"):
        b = parse_line(bad)
        assert b is None or b.status == {}, bad


def test_judge_states():
    t0 = 1000.0
    running = Beat(True, 1, {"state": "running"})
    assert judge(running, t0 + 5, t0 + 4, t0) == ("running", None)
    assert judge(None, t0 + 1, t0, t0) == ("starting", None)
    assert judge(Beat(False, 3, {"state": "done"}), t0 + 5, t0 + 5, t0) == ("done", None)
    assert judge(Beat(True, 0, {"state": "done"}), t0 + 5, t0 + 5, t0) == ("done", None)
    state, why = judge(Beat(False, 1, {"state": "running"}), t0 + 5, t0 + 5, t0)
    assert state == "dead" and "last status: running" in why


def test_judge_frozen_and_unresponsive():
    t0 = 1000.0
    # the agent lives but status.json stopped changing: frozen once it is FROZEN_S old, not before
    assert judge(Beat(True, FROZEN_S - 1, {"state": "running"}), t0 + 50, t0 + 50, t0)[0] == "running"
    state, why = judge(Beat(True, FROZEN_S, {"state": "running"}), t0 + 50, t0 + 50, t0)
    assert state == "frozen" and f"unchanged for {FROZEN_S:.0f}s" in why
    # no status.json yet: starting, until STARTUP_S after the stream opened
    assert judge(Beat(True, None, {}), t0 + STARTUP_S - 1, t0 + STARTUP_S - 1, t0)[0] == "starting"
    assert judge(Beat(True, None, {}), t0 + STARTUP_S, t0 + STARTUP_S, t0)[0] == "frozen"
    # the host's stream went silent: unresponsive, whatever its last line said
    assert judge(Beat(True, 0, {"state": "running"}), t0 + SILENT_S - 1, t0, t0)[0] == "running"
    state, why = judge(Beat(True, 0, {"state": "running"}), t0 + SILENT_S, t0, t0)
    assert state == "unresponsive" and "no watch line" in why
    assert judge(None, t0 + SILENT_S + 1, t0, t0)[0] == "unresponsive"


def test_skew_figures():
    assert skew_figures([]) == {"start_skew_max_ms": None, "start_skew_p99_ms": None, "start_skew_workers": 0}
    f = skew_figures([float(v) for v in range(-50, 50)] + [-200.0])  # |skew|: 0..50, 200
    assert f["start_skew_max_ms"] == 200 and f["start_skew_p99_ms"] == 50 and f["start_skew_workers"] == 101


# ---------------------------------------------------------------- the shell, through a LocalHost


def test_dispatch_one_round_trip_token_on_stdin_never_an_argument(tmp_path):
    host = LocalHost("h", {})
    token, plan = "tok-" + "s3cr3t" * 4, json.dumps({"plan": "text", "lines": ["a\nb"]}, indent=2)
    wd = str(tmp_path / "work")
    r = host.run(dispatch(wd, "sleep 30", "agent", token=True), input=token + "\n" + plan)
    assert r.ok, r.stderr
    pid = int(open(f"{wd}/agent.pid").read())
    try:
        assert open(f"{wd}/token").read() == token and os.stat(f"{wd}/token").st_mode & 0o777 == 0o600
        assert open(f"{wd}/plan.json").read() == plan and os.path.exists(f"{wd}/heartbeat")
        t = time.time()  # $! is the program itself once the shell's fork has exec'd setsid, nohup, sleep
        while open(f"/proc/{pid}/cmdline").read().split("\0")[0] != "sleep" and time.time() - t < 10:
            time.sleep(0.05)
        assert open(f"/proc/{pid}/cmdline").read().split("\0") == ["sleep", "30", ""]
        assert os.getsid(pid) == pid  # its own session: it outlives the dispatch and is killed with it
    finally:
        os.kill(pid, signal.SIGKILL)
    # without a token (a protocol profile that needs none): the plan alone
    wd2 = str(tmp_path / "work2")
    assert host.run(dispatch(wd2, "true", "agent", token=False), input=plan).ok
    assert open(f"{wd2}/plan.json").read() == plan and not os.path.exists(f"{wd2}/token")


def test_watch_stream_lines_heartbeat_and_its_end(tmp_path):
    """One line a second with liveness, status age and content; it touches the heartbeat while read, and stops
    touching when the reader goes (the deadman's premise)."""
    host = LocalHost("h", {})
    wd = tmp_path
    (wd / "out").mkdir()
    agent = subprocess.Popen(["sleep", "60"])
    try:
        (wd / "agent.pid").write_text(str(agent.pid))
        (wd / "out" / "status.json").write_text('{"state": "running", "sent": 5}')
        stream = host.stream(watch_loop(str(wd), [str(wd / "heartbeat")], 60), timeout=30)
        beats = [parse_line(stream.stdout.readline().decode()) for _ in range(3)]
        assert all(b.alive and b.status == {"state": "running", "sent": 5} for b in beats)
        assert beats[-1].age_s >= 1  # status.json was not rewritten: its age grows (the frozen rule's input)
        agent.kill()
        agent.wait()
        for _ in range(3):
            beat = parse_line(stream.stdout.readline().decode())
        assert not beat.alive
        stream.close()
        touched = os.stat(wd / "heartbeat").st_mtime
        time.sleep(2.5)
        assert os.stat(wd / "heartbeat").st_mtime == touched  # the loop ended with its reader
    finally:
        agent.kill()
        agent.wait()
    # bounded: a stream nobody closes ends by itself after its bound
    stream = host.stream(watch_loop(str(wd), [str(wd / "heartbeat")], 2), timeout=30)
    t = time.time()
    assert stream.stdout.read().decode().startswith("GONE")
    assert time.time() - t < 15
    stream.close()


def test_a_silent_stream_is_unresponsive_and_closing_it_ends_the_remote_command(tmp_path):
    """A host that printed a line and then nothing (frozen host, lost network): unresponsive after SILENT_S,
    whatever its last line said; closing the stream ends the command (its whole process group)."""
    from loadgen.fleet.watchstream import Watch

    pidfile = tmp_path / "sleep.pid"
    watch = Watch()
    watch.open(LocalHost("h", {}), lambda: f"printf 'ALIVE 0 {{\"state\": \"running\"}}\\n'; "
                                            f"sleep 120 & echo $! > {pidfile}; wait")
    t = time.time()
    while watch.check(["h"])["h"][0] != "running" and time.time() - t < 20:
        time.sleep(0.2)
    assert watch.check(["h"])["h"] == ("running", None, {"state": "running"})
    while watch.check(["h"])["h"][0] == "running" and time.time() - t < SILENT_S + 30:
        time.sleep(0.5)
    state, why, status = watch.check(["h"])["h"]
    assert state == "unresponsive" and "no watch line" in why and time.time() - t >= SILENT_S - 1
    sleeper = int(pidfile.read_text())
    watch.close()
    t = time.time()
    while _alive(sleeper) and time.time() - t < 10:
        time.sleep(0.1)
    assert not _alive(sleeper)


def test_tar_stream_collects_without_a_file_on_the_host(tmp_path):
    import tarfile

    wd = tmp_path / "wd"
    (wd / "out").mkdir(parents=True)
    (wd / "out" / "summary.json").write_text("{}")
    (wd / "agent.log").write_text("log\n")
    with LocalHost("h", {}).stream(tar_outputs(str(wd)), timeout=30) as s:
        with tarfile.open(fileobj=s.stdout, mode="r|gz") as tar:
            names = [m.name for m in tar]
    assert sorted(names) == ["agent.log", "out", "out/summary.json"]
    assert sorted(os.listdir(wd)) == ["agent.log", "out"]


# ---------------------------------------------------------------- end to end: 4 local generators


def write_inventory(tmp_path, generators: int = 4) -> str:
    inv = tmp_path / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    gens = "\n".join(f"gen{i} loadgen_local_ips=127.0.0.{i + 1}" for i in range(1, generators + 1))
    (inv / "hosts.ini").write_text(
        f"[generators]\n{gens}\n[gateways]\ngw1 gateway_port={free_port()} gateway_metrics_port={free_port()}\n")
    (inv / "group_vars" / "all.yml").write_text(
        "ansible_connection: local\nansible_host: 127.0.0.1\n"
        f"loadgen_agent_workdir: {tmp_path}/work\ngateway_managed_by: fab\nloadgen_workers: 1\n"
        'loadgen_stages: ["2s:200", "24s:200", "1s:0"]\nloadgen_rate: 1\nloadgen_message_size: 128\n')
    return str(inv)


def _agent_dirs(tmp_path) -> dict:
    return {os.path.basename(d): d for d, _, fs in os.walk(tmp_path / "work") if "agent.pid" in fs}


def _rows(d) -> int:
    try:
        return len(open(os.path.join(d, "out", "timeseries.csv")).read().splitlines())
    except OSError:
        return 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _cmdlines() -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                out.append(open(f"/proc/{pid}/cmdline").read())
            except OSError:
                pass
    return out


@pytest.fixture
def procs():
    started = []
    yield started
    for pid in started:  # only what this test started, by PID
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def test_killed_and_frozen_agents_end_the_run_early_partial_with_the_others_collected(tmp_path, procs):
    """gen2's agent is SIGKILLed, gen3's SIGSTOPped mid-run: gen3 is found frozen within FROZEN_S + a few s and
    killed, both are dead (PARTIAL), gen1 and gen4 are collected whole, and the run ends with the healthy
    agents, not at the old deadline (stages + 90 s). The token never was an argument of any process."""
    inv, reports = write_inventory(tmp_path), tmp_path / "reports"
    token = "fleetio-" + os.urandom(12).hex()
    (tmp_path / "token").write_text(token)
    (tmp_path / "token").chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
    fab = subprocess.Popen([FAB, "-r", ROOT, "cluster-test", "-i", inv, "--reports-dir", str(reports),
                            "--token-file", str(tmp_path / "token"),  # latency is the machine's load, not our subject
                            "--criterion", "message_p99_ms=off", "--criterion", "connect_p95_ms=off"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=env)
    procs.append(fab.pid)
    deadline = time.time() + 90
    dirs = {}
    while time.time() < deadline:
        dirs = _agent_dirs(tmp_path)
        if len(dirs) == 4 and all(_rows(d) >= 4 for d in dirs.values()):  # rows flowing on every agent
            break
        time.sleep(0.5)
    assert len(dirs) == 4 and all(_rows(d) >= 4 for d in dirs.values()), dirs
    assert not any(token in c for c in _cmdlines())  # on no process's command line, while everything runs
    killed, frozen = (int(open(os.path.join(dirs[g], "agent.pid")).read()) for g in ("gen2", "gen3"))
    procs += [killed, frozen]
    os.kill(killed, signal.SIGKILL)
    os.kill(frozen, signal.SIGSTOP)
    out, _ = fab.communicate(timeout=240)
    assert fab.returncode == 1, out[-3000:]
    run = os.path.join(reports, os.listdir(reports)[0])
    facts = json.load(open(os.path.join(run, "run.json")))
    plan = json.load(open(os.path.join(run, "plan.json")))
    agents = facts["agents"]
    assert agents["gen2"]["state"] == "dead" and "process gone" in agents["gen2"]["error"]
    assert agents["gen3"]["state"] == "dead" and agents["gen3"]["error"].startswith("frozen: status.json unchanged")
    assert agents["gen1"]["state"] == agents["gen4"]["state"] == "done"
    frozen_line = next(ln for ln in out.splitlines() if "agent on gen3 frozen" in ln)
    assert "killing it" in frozen_line
    assert not _alive(frozen)  # killed, not left stopped
    # the run ended with the healthy agents: well before the old deadline (stages' end + 90 s)
    stages_end = plan["start_at"] + 27
    assert facts["controller_ended_at"] < stages_end + 60, facts["controller_ended_at"] - stages_end
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["status"] == "PARTIAL"
    assert {g for g in ("gen2", "gen3") if any(g in r for r in summary["partial_reasons"])} == {"gen2", "gen3"}
    for gen in ("gen1", "gen4"):  # collected whole through the tar stream, exactly accounted
        s = json.load(open(os.path.join(run, "agents", gen, "summary.json")))
        assert s["complete"] and s["connections"]["established"] == 50, s["connections"]
        assert os.path.exists(os.path.join(run, "agents", gen, "agent.log"))
        assert os.path.exists(os.path.join(run, "agents", gen, "timeseries.csv"))
    for gen in ("gen2", "gen3"):  # what the dead agents flushed before they died is in the report's input
        assert len(open(os.path.join(run, "agents", gen, "timeseries.csv")).read().splitlines()) >= 4
    assert not any(f == "collect.tgz" for _, _, fs in os.walk(tmp_path / "work") for f in fs)
    t = facts["timings"]
    for key in ("dispatch_s", "launch_s", "start_lead_s", "watch_s", "watch_cpu_s", "watch_cpu_per_host_s",
                "peak_rss_mb", "collect_s", "report_s", "start_skew_max_ms", "start_skew_p99_ms"):
        assert isinstance(t[key], (int, float)), (key, t)
    assert t["start_lead_s"] > 0 and t["watch_hosts"] == 4 and t["start_skew_workers"] >= 2
    assert "timings: dispatch" in out
    token_files = [os.path.join(d, "token") for d in _agent_dirs(tmp_path).values()]
    assert len(token_files) == 4 and all(os.stat(p).st_mode & 0o777 == 0o600 for p in token_files)
    assert all(open(p).read() == token for p in token_files)
