"""Fabric tasks: thin wrappers; the work is in loadgen/ (fleet, report, lab) so tests can call it.

    fab cluster-test [-i inventory/local] [--scenario cluster] [--vus N --duration 60s | --stage 10s:2000 ...]
    fab capacity [-i INVENTORY] --dimension connections|rate [--start N] [--step N|--factor F] [--hold 60s] [--max N]
    fab preflight [-i INVENTORY]
    fab report reports/RUN_ID
    fab compare reports/BASELINE reports/CANDIDATE [--tolerance 0.1] [--confidence 0.999]
    fab lab-up [--hosts 7 | --generators N] / fab lab-down
"""

import sys

from fabric import task

from loadgen.errors import LoadgenError
from loadgen.fleet.fabtask import OptionTask

DEFAULT_INVENTORY = "inventory/local"


def _guard(fn, *args, **kwargs):
    """One line and an exit code for expected failures; never a traceback."""
    try:
        code = fn(*args, **kwargs)
    except LoadgenError as exc:
        print(f"fab: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    if code:
        raise SystemExit(code)


def _text(value):
    """Fabric hands over text, or True for a flag given without a value; loadgen parses it (with its name)."""
    return None if value is None else str(value)


def _list(value):
    if not value:
        return []
    return [v for part in (value if isinstance(value, list) else [value]) for v in str(part).split(",") if v.strip()]


@task(
    klass=OptionTask, short={"inventory": "i"},
    iterable=["stage", "criterion", "abort_on"],
    help={
        "inventory": "Ansible inventory (default inventory/local: this machine)",
        "scenario": "connection | throughput | cluster (default cluster)",
        "vus": "connections (virtual users) across all generators, held for --duration",
        "duration": "how long to hold --vus (e.g. 60s, 1h)",
        "stage": "(takes a value, repeatable) DURATION:TARGET, TARGET connections across all generators (k6 semantics)",
        "rate": "messages per second per user",
        "message_size": "MESSAGE_SIZE in bytes",
        "min_generators": "proceed when at least this many generators are reachable (default: all)",
        "probe_interval": "seconds between host probe samples (default: run length / 60, within 1-5)",
        "deadman_timeout": "agents and gateways stop when the controller is silent this long (default 60s)",
        "token_file": "gateway token file (mode 600); else AUTH_TOKEN or the inventory's gateway_auth_token",
        "criterion": "(takes a value, repeatable) override a success criterion, e.g. message_p99_ms<100",
        "traffic": "traffic model: constant, chat-mix or a YAML file (docs/traffic.md; default: the scenario's)",
        "seed": "seed of the traffic model's draws (default 0): the same seed, the same schedule",
        "reports_dir": "where run directories go (default reports/)",
        "protocol": "protocol profile: reference (default), xmpp, mqtt or a profile file (docs/protocols.md); "
                    "else the inventory's loadgen_protocol",
        "junit": "also write the criteria as JUnit XML to this file (one testcase per criterion)",
        "abort_on": "(takes a value, repeatable) stop every agent when a threshold over a sliding window of the "
                    "fleet's data is crossed, e.g. 'connect_success<0.9 over 60s'; the report says ABORTED, exit 99",
        "abort_grace": "judge no abort threshold before this long after the start (default 30s)",
        "lead": "the agents' common start is this long after dispatch begins (default: measured, max(4s, 3 x "
                "preflight's round of `loadgen --version` over every generator at once + 2s))",
    },
)
def cluster_test(c, inventory=DEFAULT_INVENTORY, scenario="cluster", vus=None, duration=None, stage=None,
                 rate=None, message_size=None, min_generators=None, probe_interval=None, deadman_timeout="60s",
                 token_file=None, criterion=None, reports_dir="reports", traffic=None, seed=None, protocol=None,
                 junit=None, abort_on=None, abort_grace=None, lead=None):
    """Run a cluster load test on the inventory's generators and gateways; ends with a report."""
    from loadgen.fleet.clustertest import Options, cluster_test as run

    _guard(run, Options(inventory=inventory, scenario=scenario, vus=_text(vus), duration=_text(duration),
                        stages=_list(stage), rate=_text(rate), message_size=_text(message_size),
                        min_generators=_text(min_generators), probe_interval=_text(probe_interval),
                        deadman_timeout=str(deadman_timeout), token_file=token_file, criteria=_list(criterion),
                        reports_dir=reports_dir, traffic=_text(traffic), seed=_text(seed), protocol=_text(protocol),
                        junit=_text(junit), abort_on=list(abort_on or []), abort_grace=_text(abort_grace),
                        lead=_text(lead)))


@task(
    klass=OptionTask, short={"inventory": "i"}, iterable=["criterion"],
    help={
        "inventory": "Ansible inventory (default inventory/local: this machine)",
        "dimension": "connections (per gateway node) | rate (msgs/s of the fleet at --vus connections)",
        "start": "load of the first step (default 500 connections per node, or 100 msgs/s)",
        "step": "load added per step (default --start)",
        "factor": "multiply the load by this per step instead of --step (e.g. 1.5)",
        "hold": "how long each step holds its load; judged on that window (default 60s)",
        "ramp": "how long each step ramps from the previous load (default 10s)",
        "max": "highest load tried (default 10 x --start)",
        "refine": "bisection steps between the last good and the first bad load (default 2)",
        "rate": "connections dimension: msgs/s per user (default loadgen_rate, else 0.2)",
        "vus": "rate dimension: connections of the whole fleet (default loadgen_vus, else 1000)",
        "message_size": "MESSAGE_SIZE in bytes",
        "criterion": "(takes a value, repeatable) a step criterion, e.g. message_p99_ms<100",
        "token_file": "gateway token file (mode 600); else AUTH_TOKEN or the inventory's gateway_auth_token",
        "deadman_timeout": "agents and gateways stop when the controller is silent this long (default 60s)",
        "probe_interval": "seconds between host probe samples (default 1)",
        "reports_dir": "where run directories go (default reports/)",
    },
)
def capacity(c, inventory=DEFAULT_INVENTORY, dimension="connections", start=None, step=None, factor=None,
             hold="60s", ramp="10s", max=None, refine="2", rate=None, vus=None, message_size=None, criterion=None,
             token_file=None, deadman_timeout="60s", probe_interval="1", reports_dir="reports"):
    """Find the knee: step the load up in one run, judge each step on its own data, name what ran out first."""
    from loadgen.capacity.run import CapacityOptions, capacity as run

    _guard(run, CapacityOptions(
        inventory=inventory, dimension=str(dimension), start=_text(start), step=_text(step), factor=_text(factor),
        hold=str(hold), ramp=str(ramp), max=_text(max), refine=str(refine), rate=_text(rate), vus=_text(vus),
        message_size=_text(message_size), criteria=_list(criterion), token_file=token_file,
        deadman_timeout=str(deadman_timeout), probe_interval=str(probe_interval), reports_dir=reports_dir))


@task(klass=OptionTask, short={"inventory": "i"}, help={"inventory": "Ansible inventory (default inventory/local)"})
def preflight(c, inventory=DEFAULT_INVENTORY):
    """Check every host is reachable, clocks agree, tuning is live and the default plan fits."""
    from loadgen.fleet.clustertest import Options, preflight_only

    _guard(preflight_only, Options(inventory=inventory))


@task(klass=OptionTask, help={"run_dir": "the run directory, e.g. reports/20261126-183007-cluster-e6e1",
                              "junit": "also write the criteria as JUnit XML to this file"})
def report(c, run_dir, junit=None):
    """(Re)build report.html and summary.json of a run directory; print the verdict and what failed."""
    from loadgen.report import build_report, format_verdict
    from loadgen.results.junit import check_path, write_junit

    def build():
        path = check_path(_text(junit)) if junit else None
        summary = build_report(run_dir)
        if path:
            write_junit(summary, path, f"fab report {summary.get('scenario', '')}".strip())
        print(format_verdict(summary))
        return 0

    _guard(build)


@task(klass=OptionTask, help={"run_a": "the BASELINE run directory (first)",
                              "run_b": "the CANDIDATE run directory (second), judged against the baseline",
                              "tolerance": "relative change that counts as a regression (default 0.10)",
                              "confidence": "rank-test confidence a change must reach to count (default 0.999)"})
def compare(c, run_a, run_b, tolerance="0.10", confidence="0.999"):
    """Compare a candidate run with a baseline run (baseline first); print each regression; exit 99 on one."""
    from loadgen.report import compare_runs, format_comparison

    def run():
        result = compare_runs(run_a, run_b, tolerance=tolerance, confidence=confidence)
        print(format_comparison(result))
        return 99 if result["regressions"] else 0

    _guard(run)


# --- lab (loadgen/lab): keep these two tasks at the end of the file ---------------------------
@task(klass=OptionTask, help={"hosts": "number of lab hosts (>= 3; default 7: 2 generators, 2 gateways, 3 infra)",
                              "generators": "number of generator hosts instead: the same as --hosts N+5"})
def lab_up(c, hosts=None, generators=None):
    """Boot the systemd-nspawn lab (root) and write inventory/lab/."""
    from loadgen.errors import UsageError
    from loadgen.lab import hosts_for, lab_up as _lab_up

    def up():
        if hosts is not None and generators is not None:
            raise UsageError("give --hosts or --generators, not both (--generators N is --hosts N+5)")
        for name, value in (("--hosts", hosts), ("--generators", generators)):
            if value is not None and not str(value).isdigit():
                raise UsageError(f"{name} {value}: a whole number")
        _lab_up(hosts_for(int(generators)) if generators is not None else int(hosts or 7))

    _guard(up)


@task(klass=OptionTask, help={"purge": "also delete the cached rootfs and built artifacts"})
def lab_down(c, purge=False):
    """Tear the lab down; idempotent and safe when nothing is up."""
    from loadgen.lab import lab_down as _lab_down

    _lab_down(purge=bool(purge))
