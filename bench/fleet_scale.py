"""Benchmark (issue 18): the fleet's controller at 20, 50 and 100 generator hosts of the scale lab.

    .venv/bin/python bench/fleet_scale.py 20 50 100 [--conns 100] [--rate 0.05] [--hold 60] [--stop-at 11:45]
                                          [--forks-variants 10,50] [--json FILE] [--keep]

For each size, one run each, in order: `fab lab-up --generators N` (root; LOADGEN_LAB_* select the lab), the
scale overrides (standalone gateways, one agent process per generator), then Ansible: prepare.yml + deploy.yml on
the generators and gateways, cold and a second time (changed=0 expected), with wall time, the controller's CPU
and the lab hosts' CPU (their cgroup); then `fab cluster-test` with --conns connections per generator at --rate
msgs/s each (ramp 20 s, hold --hold, ramp down 5 s) while fab's process tree is sampled (CPU, RSS) every 0.5 s.
From the run directory: dispatch (fab start -> the last agent's actual start), start skew max and p99 (every
agent's start_skew_ms in summary.json), polling cost, collection, report build (run.json's `timings` when the
controller writes them; else from fab's output line times and a timed rebuild of the report). `uptime` before
and after each row. The lab goes down after each size (unless --keep, for the last). --one-lab: one lab of the
largest size, deployed once (Ansible cold measured there, the second run after the cluster tests), and one
cluster test per size on the first N generators of it (a copy of the inventory with only those): the 100-host
deploy alone takes ~20 min of this machine's 2 cores, since every lab host's install runs on them.

--phases up,cold,runs,kill-freeze,second (with --one-lab; default all): run only some of that on a lab kept up
(--keep) by an earlier call, e.g. `--phases up,cold --keep`, then `--phases runs --keep`, then `--phases
kill-freeze,second --forks-variants 25,50`. kill-freeze: one more cluster test at the largest size during which
--kill-freeze HOST1,HOST2 (default gen33,gen66) are signalled 30 s after the planned start: HOST1's agent session
SIGKILLed, HOST2's SIGSTOPped (as tests/lab/test_fleet_scale.py does at 20); the row says when the watch and fab
ended against the stages' end, whether the last resort (deadline) was needed, and the two agents' states and
reasons. second: the changed=0 run of prepare.yml + deploy.yml, once per --forks-variants (else ansible.cfg's).
Ansible builds the wheelhouse from a copy of HEAD (OUT/src), so editing the tree meanwhile changes nothing on the
hosts.

--stop-at HH:MM (UTC): a hard stop; whatever runs then is killed, the lab taken down, and the rows so far printed.
Nothing here asserts: it prints figures, with the issue's goals as ratios (figure / goal; <= 1 meets it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadgen.lab import LabConfig, hosts_for, lab_down, lab_up, write_scale_overrides  # noqa: E402

GOALS = {"skew_p99_ms": 10.0, "controller_cores": 1.0, "collection_s": 30.0, "dispatch_s": 30.0}
RAMP_UP_S, RAMP_DOWN_S = 20, 5  # every cluster test here: ramp up, hold (--hold), ramp down
BIN = Path(sys.executable).parent


class HardStop(Exception):
    pass


class Clock:
    def __init__(self, stop_at: dt.datetime | None) -> None:
        self.stop_at = stop_at

    def left(self) -> float:
        if self.stop_at is None:
            return 10 ** 6
        return (self.stop_at - dt.datetime.now(dt.timezone.utc)).total_seconds()

    def check(self) -> None:
        if self.left() <= 0:
            raise HardStop(f"hard stop at {self.stop_at:%H:%M} UTC")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def uptime() -> str:
    """The load averages (1, 5, 15 min), as `uptime` prints them."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def lab_cpu_s(cfg: LabConfig) -> float:
    stat = Path("/sys/fs/cgroup/unified") / cfg.cgroup_name / "cpu.stat"
    try:
        for line in stat.read_text().splitlines():
            if line.startswith("usage_usec"):
                return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return float("nan")


def tree_cpu_rss(proc: psutil.Process) -> tuple[float, int]:
    cpu, rss = 0.0, 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            cpu += t.user + t.system
            rss += p.memory_info().rss
        except psutil.Error:
            pass
    return cpu, rss


def run_timed(args: list[str], clock: Clock, log_path: Path, env: dict | None = None) -> dict:
    """A command to completion (killed at the hard stop): wall, the controller's CPU of it and its children."""
    t0 = time.monotonic()
    before = os.times()
    with open(log_path, "w") as out:
        p = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        try:
            p.wait(timeout=max(1.0, clock.left()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(30)
            raise HardStop(f"hard stop during {' '.join(args[:3])}") from None
    after = os.times()
    return {"rc": p.returncode, "wall_s": round(time.monotonic() - t0, 1),
            "controller_cpu_s": round((after.children_user - before.children_user)
                                      + (after.children_system - before.children_system), 1)}


def recap(text: str) -> dict:
    hosts = {}
    for m in re.finditer(r"^(\S+)\s+:\s+(ok=.*)$", text, re.M):
        hosts[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return {k: sum(h.get(k, 0) for h in hosts.values()) for k in ("ok", "changed", "failed", "unreachable")} | {
        "hosts": len(hosts)}


def frozen_source(out_root: Path) -> Path:
    """HEAD's files as a copy outside the tree: what the role builds into the wheelhouse. The project's wheel
    carries README.md (its long description), so an edit in the tree during the bench would rightly make the
    second run reinstall it (changed > 0): the copy keeps the changed=0 run about the role alone."""
    dest = out_root / "src"
    if not (dest / "pyproject.toml").is_file():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def ansible(cfg: LabConfig, clock: Clock, out_dir: Path, label: str, forks: int | None = None,
            src: Path | None = None) -> dict:
    cpu0 = lab_cpu_s(cfg)
    env = {"ANSIBLE_NOCOLOR": "1"} | ({"ANSIBLE_FORKS": str(forks)} if forks else {})
    extra = ["-e", f"loadgen_agent_project_src={src}"] if src else []
    r = run_timed([str(BIN / "ansible-playbook"), "-i", str(cfg.inventory_dir), "playbooks/prepare.yml",
                   "playbooks/deploy.yml", "--limit", "generators:gateways", *extra], clock,
                  out_dir / f"ansible-{label}.log", env=env)
    r["forks"] = forks or "ansible.cfg"
    r["hosts_cpu_s"] = round(lab_cpu_s(cfg) - cpu0, 1)
    r |= recap((out_dir / f"ansible-{label}.log").read_text())
    log(f"ansible {label}: {r}")
    return r


def percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    k = max(0, math.ceil(q / 100 * len(v)) - 1)
    return v[k]


def lab_ssh(cfg: LabConfig, host: str, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-F", str(cfg.inventory_dir / ".ssh" / "ssh_config"), host, command],
                          capture_output=True, text=True, timeout=60)


def signal_agent(cfg: LabConfig, host: str, run_id: str, signal_name: str) -> str:
    """Signal the agent's whole session inside the host's container (as tests/lab/test_fleet_scale.py does)."""
    wd = f"/var/lib/loadgen/runs/{run_id}/{host}"
    r = lab_ssh(cfg, host, f"P=$(cat {wd}/agent.pid) && kill -0 $P && pkill -{signal_name} -s $P && echo signalled")
    return (r.stdout + r.stderr).strip()


def cluster_test(cfg: LabConfig, n: int, a, clock: Clock, out_dir: Path, inventory: Path | None = None,
                 kill_freeze: tuple[str, str] | None = None) -> dict:
    users = n * a.conns
    inventory = inventory or cfg.inventory_dir
    secrets = (cfg.inventory_dir / "group_vars" / "all" / "secrets.yml").read_text()
    token = re.search(r'^gateway_auth_token: "(.*)"$', secrets, re.M).group(1)
    reports = out_dir / "reports"
    args = [str(BIN / "fab"), "-r", str(REPO), "cluster-test", "-i", str(inventory), "--scenario", "cluster",
            "--reports-dir", str(reports), "--stage", f"{RAMP_UP_S}s:{users}", "--stage", f"{a.hold}s:{users}",
            "--stage", f"{RAMP_DOWN_S}s:0", "--rate", str(a.rate), "--traffic", "constant",
            "--criterion", "message_p99_ms=off", "--criterion", "message_success_rate=off"]
    lines: list[tuple[float, str]] = []
    t_start = time.time()
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "AUTH_TOKEN": token, "PYTHONUNBUFFERED": "1"})
    ps = psutil.Process(proc.pid)
    samples: list[tuple[float, float, int]] = []

    def read():
        for line in proc.stdout:
            lines.append((time.time(), line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    signalled: dict = {}
    try:
        while proc.poll() is None:
            if kill_freeze and not signalled:  # 30 s after the planned start: in the hold
                said, m = next(((t_, re.search(r"agents start at \S+ \(in (-?[\d.]+)s\)", s_))
                                for t_, s_ in list(lines) if "agents start at" in s_), (None, None))
                run_id = next((d.name for d in reports.iterdir() if d.is_dir()), None) if reports.is_dir() else None
                if m and run_id and time.time() >= said + float(m.group(1)) + 30:
                    signalled = {"killed": kill_freeze[0], "frozen": kill_freeze[1], "at": time.time(),
                                 "kill": signal_agent(cfg, kill_freeze[0], run_id, "KILL"),
                                 "stop": signal_agent(cfg, kill_freeze[1], run_id, "STOP")}
                    log(f"signalled: {signalled}")
            try:
                cpu, rss = tree_cpu_rss(ps)
                samples.append((time.time(), cpu, rss))
            except psutil.Error:
                pass
            if clock.left() <= 0:
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                raise HardStop("hard stop during fab cluster-test")
            time.sleep(0.5)
    finally:
        if signalled:  # the frozen agent is SIGKILLed by the controller; a SIGCONT in case it was not
            lab_ssh(cfg, kill_freeze[1], "pkill -CONT -f 'loadgen run' || true")
        reader.join(10)
        (out_dir / "fab.log").write_text("\n".join(f"{t - t_start:8.2f} {s}" for t, s in lines) + "\n")
    t_end = time.time()
    run_dir = next((d for d in reports.iterdir() if d.is_dir()), None) if reports.is_dir() else None
    row: dict = {"fab_rc": proc.returncode, "fab_wall_s": round(t_end - t_start, 1), "connections": users,
                 "run_dir": str(run_dir)}
    if run_dir is None or not (run_dir / "summary.json").is_file():
        return row
    summary = json.loads((run_dir / "summary.json").read_text())
    facts = json.loads((run_dir / "run.json").read_text())
    plan = json.loads((run_dir / "plan.json").read_text()) if (run_dir / "plan.json").is_file() else {}
    start_at = plan.get("start_at") or facts.get("start_at")
    skews = [a_.get("start_skew_ms") for a_ in summary["agents"].values()]
    skews = [abs(s) for s in skews if isinstance(s, (int, float))]
    row |= {"status": summary["status"], "agents": len(summary["agents"]),
            "agents_done": sum(1 for a_ in summary["agents"].values() if a_.get("state") == "done"),
            "skew_max_ms": round(max(skews), 1) if skews else None,
            "skew_p99_ms": round(percentile(skews, 99), 1) if skews else None,
            "messages_sent": summary["messages"]["sent"],
            "accounted": summary["messages"]["received"] + summary["messages"]["errors"]
            + summary["messages"]["lost"] == summary["messages"]["sent"]}
    if start_at and skews:
        row["dispatch_s"] = round(start_at + max(skews) / 1000 - t_start, 1)
    # the watch: from the agents' start to the last "agents running" line
    watch = [t for t, s in lines if "agents running" in s]
    if start_at and watch:
        w0, w1 = max(start_at, watch[0]), watch[-1]
        inside = [s for s in samples if w0 <= s[0] <= w1]
        if len(inside) >= 2 and inside[-1][0] > inside[0][0]:
            cores = (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
            row["controller_cores"] = round(cores, 3)
            row["poll_cpu_ms_per_host_s"] = round(1000 * cores / n, 2)
        row["after_watch_s"] = round(t_end - w1, 1)  # collection + after-snapshot + report (+ gateway stop)
    row["controller_peak_rss_mb"] = round(max((s[2] for s in samples), default=0) / 2**20, 1)
    if signalled:  # the run must end on time, PARTIAL, naming both with their reasons
        stages_end = start_at + RAMP_UP_S + a.hold + RAMP_DOWN_S
        watch_end = max((t for t, s_ in lines if "agents running" in s_), default=None)
        row["kill_freeze"] = {
            **{k: signalled[k] for k in ("killed", "frozen", "kill", "stop")},
            "signalled_after_start_s": round(signalled["at"] - start_at, 1),
            "watch_end_after_stages_s": None if watch_end is None else round(watch_end - stages_end, 1),
            "fab_end_after_stages_s": round(t_end - stages_end, 1),
            "deadline_passed": any("deadline passed" in s_ for _, s_ in lines),
            "found": [s_ for _, s_ in lines if kill_freeze[0] in s_ or kill_freeze[1] in s_][:6],
            "states": {h: (facts["agents"].get(h) or {}).get("state") for h in kill_freeze},
            "errors": {h: (facts["agents"].get(h) or {}).get("error") for h in kill_freeze},
            "partial_reasons": summary.get("partial_reasons")}
    timings = facts.get("timings")
    if timings:
        row["run_json_timings"] = timings
    # the report alone, rebuilt (the same build fab ran at the end)
    t0 = time.monotonic()
    subprocess.run([str(BIN / "fab"), "-r", str(REPO), "report", str(run_dir)], cwd=REPO, capture_output=True,
                   timeout=max(1.0, min(600, clock.left())))
    row["report_build_s"] = round(time.monotonic() - t0, 1)
    if timings is None and "after_watch_s" in row:
        row["collection_s_approx"] = round(row["after_watch_s"] - row["report_build_s"], 1)
    return row


def bring_up(cfg: LabConfig, n: int, row: dict) -> None:
    """A fresh scale lab of n generators (standalone gateways, one agent process each); its times into row."""
    t0 = time.monotonic()
    lab_down(cfg)
    state = lab_up(hosts_for(n), cfg)
    write_scale_overrides(cfg)
    row["lab_up_s"] = round(time.monotonic() - t0, 1)
    row["lab_boot_s"] = state.get("timings", {}).get("boot_s")


def one_size(n: int, a, clock: Clock, out_root: Path) -> dict:
    cfg = LabConfig()
    out_dir = out_root / f"g{n}"
    out_dir.mkdir(parents=True, exist_ok=True)
    row: dict = {"generators": n, "load_before": uptime()}
    log(f"{n} generators: lab up (load {row['load_before']})")
    bring_up(cfg, n, row)
    clock.check()
    row["ansible_cold"] = ansible(cfg, clock, out_dir, "cold")
    clock.check()
    row["ansible_second"] = ansible(cfg, clock, out_dir, "second")
    clock.check()
    for forks in a.forks_variants:  # the same changed=0 run with other forks than ansible.cfg's
        row[f"ansible_second_forks{forks}"] = ansible(cfg, clock, out_dir, f"second-forks{forks}", forks)
        clock.check()
    row |= cluster_test(cfg, n, a, clock, out_dir)
    row["load_after"] = uptime()
    return row


def subset_inventory(cfg: LabConfig, n: int, out_dir: Path) -> Path:
    """A copy of the lab's inventory whose generators are gen1..genN (the rest of the lab idles)."""
    import shutil

    dest = out_dir / f"inventory-{n}"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(cfg.inventory_dir, dest)
    (dest / ".lab").unlink(missing_ok=True)
    text = (dest / "hosts.ini").read_text()
    keep = {f"gen{i}" for i in range(1, n + 1)}
    out, section = [], None
    for line in text.splitlines(keepends=True):
        if line.startswith("["):
            section = line.strip()
        elif section == "[generators]" and line.strip() and line.split()[0] not in keep:
            continue
        out.append(line)
    (dest / "hosts.ini").write_text("".join(out))
    return dest


PHASES = ("up", "cold", "runs", "kill-freeze", "second")


def one_lab(sizes: list[int], a, clock: Clock, out_root: Path) -> list[dict]:
    """The largest size's lab, deployed once (Ansible cold and second measured there), then one cluster test per
    size on the first N generators; --phases runs only some of it on a lab already up (with --keep)."""
    cfg = LabConfig()
    big = max(sizes)
    out_dir = out_root / f"lab{big}"
    out_dir.mkdir(parents=True, exist_ok=True)
    src = frozen_source(out_root)
    rows: list[dict] = []

    def add(row: dict) -> None:
        rows.append(row)
        log(json.dumps(row))
        if a.json:  # after every row: a bench stopped later keeps what it measured
            a.json.write_text(json.dumps(rows, indent=1))

    try:
        if "up" in a.phases:
            row = {"generators": big, "phase": "up", "load_before": uptime()}
            log(f"one lab of {big} generators (load {row['load_before']})")
            bring_up(cfg, big, row)
            add(row)
        if "cold" in a.phases:
            clock.check()
            add({"generators": big, "phase": "cold", "load_before": uptime(),
                 "ansible_cold": ansible(cfg, clock, out_dir, "cold", src=src), "load_after": uptime()})
        for n in sorted(sizes, reverse=True) if "runs" in a.phases else []:
            clock.check()
            row = {"generators": n, "phase": "run", "load_before": uptime()}
            run_dir = out_root / f"run{n}-{time.strftime('%H%M%S')}"
            run_dir.mkdir(parents=True, exist_ok=True)
            inv = cfg.inventory_dir if n == big else subset_inventory(cfg, n, run_dir)
            row |= cluster_test(cfg, n, a, clock, run_dir, inv)
            row["load_after"] = uptime()
            add(row)
        if "kill-freeze" in a.phases:
            clock.check()
            row = {"generators": big, "phase": "kill-freeze", "load_before": uptime()}
            run_dir = out_root / f"killfreeze{big}-{time.strftime('%H%M%S')}"
            run_dir.mkdir(parents=True, exist_ok=True)
            row |= cluster_test(cfg, big, a, clock, run_dir, cfg.inventory_dir, kill_freeze=tuple(a.kill_freeze))
            row["load_after"] = uptime()
            add(row)
        if "second" in a.phases:
            for forks in a.forks_variants or [None]:  # None: ansible.cfg's forks
                clock.check()
                label = f"second-forks{forks or 'cfg'}-{time.strftime('%H%M%S')}"
                add({"generators": big, "phase": label, "load_before": uptime(),
                     "ansible_second": ansible(cfg, clock, out_dir, label, forks, src=src), "load_after": uptime()})
    except HardStop as exc:
        log(str(exc))
        rows.append({"generators": "-", "unfinished": str(exc)})
    return rows


def ratio(value, goal: float) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:g} ({value / goal:.2f}x)"


def table(rows: list[dict]) -> str:
    cols = [("generators", lambda r: r["generators"]),
            ("load before/after", lambda r: f"{r.get('load_before', '-')} / {r.get('load_after', '-')}"),
            ("lab up s", lambda r: r.get("lab_up_s", "-")),
            ("ansible cold s (ctl CPU, hosts CPU)", lambda r: _ans(r.get("ansible_cold"))),
            ("ansible 2nd s (changed)", lambda r: _ans2(r.get("ansible_second"))
             + "".join(f"; forks {k[len('ansible_second_forks'):]}: {_ans2(v)}" for k, v in r.items()
                       if k.startswith("ansible_second_forks"))),
            ("connections", lambda r: r.get("connections", "-")),
            ("status (done/agents)", lambda r: f"{r.get('status', '-')} ({r.get('agents_done', '-')}/{r.get('agents', '-')})"),
            ("dispatch s (/30)", lambda r: ratio(_timing(r, "dispatch_s", "dispatch_s"), GOALS["dispatch_s"])),
            ("skew max ms", lambda r: _timing(r, "start_skew_max_ms", "skew_max_ms")),
            ("skew p99 ms (/10)", lambda r: ratio(_timing(r, "start_skew_p99_ms", "skew_p99_ms"),
                                                  GOALS["skew_p99_ms"])),
            ("controller cores (/1)", lambda r: ratio(_cores(r), GOALS["controller_cores"])),
            ("peak RSS MB", lambda r: _timing(r, "peak_rss_mb", "controller_peak_rss_mb")),
            ("poll CPU ms/host/s", lambda r: _poll(r)),
            ("collection s (/30)", lambda r: ratio(_timing(r, "collect_s", "collection_s_approx"),
                                                   GOALS["collection_s"])),
            ("report build s", lambda r: _timing(r, "report_s", "report_build_s")),
            ("fab wall s", lambda r: r.get("fab_wall_s", "-")),
            ("unfinished", lambda r: r.get("unfinished", ""))]
    head = "| " + " | ".join(c for c, _ in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = ["| " + " | ".join(str(f(r)) for _, f in cols) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def _timing(r: dict, key: str, fallback: str):
    """run.json's timings (the controller's own marks: loadgen/fleet/timings.py) first, else this bench's own."""
    v = (r.get("run_json_timings") or {}).get(key)
    return v if isinstance(v, (int, float)) else r.get(fallback)


def _cores(r: dict):
    pct = (r.get("run_json_timings") or {}).get("watch_cpu_percent")
    return round(pct / 100, 3) if isinstance(pct, (int, float)) else r.get("controller_cores")


def _poll(r: dict):
    v = (r.get("run_json_timings") or {}).get("watch_cpu_per_host_s")
    return round(1000 * v, 3) if isinstance(v, (int, float)) else r.get("poll_cpu_ms_per_host_s", "-")


def _ans(x) -> str:
    return "-" if not x else f"{x['wall_s']} ({x['controller_cpu_s']}, {x['hosts_cpu_s']})"


def _ans2(x) -> str:
    return "-" if not x else f"{x['wall_s']} ({x['changed']})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", nargs="+", type=int, help="generator counts, e.g. 20 50 100")
    ap.add_argument("--conns", type=int, default=100, help="connections per generator (default 100)")
    ap.add_argument("--rate", type=float, default=0.05, help="msgs/s per connection (default 0.05)")
    ap.add_argument("--hold", type=int, default=60, help="seconds of hold (default 60)")
    ap.add_argument("--forks-variants", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                    help="also time the changed=0 run with these forks, e.g. 10,50,100 (ansible.cfg: 25)")
    ap.add_argument("--stop-at", help="HH:MM UTC: hard stop (kill, lab down, print what finished)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    ap.add_argument("--out", type=Path, default=Path("/tmp/fleet_scale"), help="logs and run directories")
    ap.add_argument("--keep", action="store_true", help="leave the last lab up")
    ap.add_argument("--one-lab", action="store_true",
                    help="one lab of the largest size, deployed once (Ansible measured there); one cluster test per "
                         "size on its first N generators")
    ap.add_argument("--phases", type=lambda v: [p for p in v.split(",") if p], default=list(PHASES),
                    help=f"--one-lab: which of {','.join(PHASES)} to run (default all; with --keep a later call "
                         "runs the rest on the same lab)")
    ap.add_argument("--kill-freeze", type=lambda v: v.split(","), default=["gen33", "gen66"],
                    help="--one-lab's kill-freeze phase: SIGKILL the first host's agent and SIGSTOP the second's, "
                         "30 s after the planned start (default gen33,gen66)")
    a = ap.parse_args()
    stop_at = None
    if a.stop_at:
        h, m = map(int, a.stop_at.split(":"))
        now = dt.datetime.now(dt.timezone.utc)
        stop_at = now.replace(hour=h, minute=m, second=0, microsecond=0)
    clock = Clock(stop_at)
    rows = []
    try:
        if a.one_lab:
            rows = one_lab(a.sizes, a, clock, a.out)
            if a.json:
                a.json.write_text(json.dumps(rows, indent=1))
        for n in [] if a.one_lab else a.sizes:
            try:
                rows.append(one_size(n, a, clock, a.out))
            except HardStop as exc:
                rows.append({"generators": n, "unfinished": str(exc)})
                log(str(exc))
                break
            finally:
                if a.json:
                    a.json.write_text(json.dumps(rows, indent=1))
            log(json.dumps(rows[-1]))
            if not (a.keep and n == a.sizes[-1]):
                lab_down(LabConfig())
    finally:
        if not a.keep:
            lab_down(LabConfig())
    if a.one_lab:
        print(json.dumps(rows, indent=1))
        return 0
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
