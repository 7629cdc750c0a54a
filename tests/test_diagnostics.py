"""The saturation diagnostic and the gateway's /metrics sample, on constructed inputs (no sockets, no servers).

The probe tests run the controller's sample script in bash (as test_fleet_shell.py runs its snippets): the
behaviour under test is the script's own awk. Only the /metrics fetch is replaced, by a command that prints
a gateway's page or fails as urllib does on a refused or timed-out scrape (nothing on stdout, exit 1).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from types import SimpleNamespace

import pandas as pd
import pytest

from loadgen.fleet import probes
from loadgen.gateway.metrics import GatewayMetrics, Histogram
from loadgen.report import analyze_run
from loadgen.report.diagnostics import HOST_SATURATED, LOOP_SATURATED, check_saturation
from loadgen.report.hosts import probe_summary
from synthetic import AgentSpec, make_run

EVERY_HOST = "every host's CPU (hosts that share one machine, as in a lab, show the machine's)"


# ---------------------------------------------------------------- saturation, on a hand-built analysis

def page(node: str, *, errors=None, refused=None, produce_ms=()) -> str:
    """A gateway's /metrics page: the base metrics as the gateway renders them, the cluster router's
    refused-send counters and its Kafka produce histogram in the router's format."""
    m = GatewayMetrics(node)
    m.errors = dict(errors or {})
    lines = [f'im_gateway_route_refused_total{{node="{node}",stage="{k}"}} {v}' for k, v in (refused or {}).items()]
    h = Histogram()
    for ms in produce_ms:
        h.observe(ms / 1000)
    return m.render() + "\n".join(lines + h.exposition("im_gateway_kafka_produce_latency_seconds")) + "\n"


def saturation(*, nodes=(), cpu=None, metrics=(), machines=(), passed=True):
    """check_saturation on an analysis built by hand: cpu = {host: host CPU peak %}, metrics = (host, the
    /metrics page before the run, after it), passed = the run's criteria_passed."""
    rows = [{"host": h, "role": "", "host_cpu_percent_max": v} for h, v in (cpu or {}).items()]
    system = [{"host": h, "role": "gateway", "probe": "metrics", "before": b, "after": a,
               "before_summary": probe_summary("metrics", b), "after_summary": probe_summary("metrics", a)}
              for h, b, a in metrics]
    host_info = {"rows": rows, "system_probes": system, "infra": [], "machines": list(machines)}
    return check_saturation({"criteria_passed": passed}, {}, list(nodes), host_info, {}, {})


def test_saturation_names_a_gateway_event_loop_near_one_core():
    nodes = [{"node": "gw1", "cpu_peak": LOOP_SATURATED + 5, "cpu_mean": 80.0},
             {"node": "gw2", "cpu_peak": LOOP_SATURATED - 5, "cpu_mean": 60.0}]
    cpu = {"gw1": 60.0, "gw2": 55.0}  # the hosts have cores left: the one-core loop is the limit
    f = saturation(nodes=nodes, cpu=cpu)
    assert f["parts"] == ["gateway gw1 (event loop)"] and f["title"] == "Saturated: gateway gw1 (event loop)"
    assert f["severity"] == "warn"  # every criterion met: worth knowing, not a failure
    assert "95% of one core at peak, 80% mean" in f["evidence"][0]
    assert saturation(nodes=nodes, cpu=cpu, passed=False)["severity"] == "fail"
    assert saturation(nodes=nodes[1:], cpu=cpu, passed=False) is None  # below the threshold: nothing ran out


def test_saturation_names_a_full_route_backlog_on_its_gateway():
    # refused counters are since the gateway started: only what this run added (after - before) counts
    metrics = [("gw1", page("gw1", refused={"lookup": 0, "produce": 40}),
                page("gw1", refused={"lookup": 25, "produce": 160}, produce_ms=(300, 500))),
               ("gw2", page("gw2", refused={"produce": 40}), page("gw2", refused={"produce": 40}))]
    f = saturation(cpu={"gw1": 50.0, "gw2": 50.0}, metrics=metrics, passed=False)
    assert f["parts"] == ["the session registry (Redis) backlog on gw1", "Kafka backlog on gw1"]
    ev = "\n".join(f["evidence"])
    assert "gateway gw1: 120 cross-node sends refused at once: the produce backlog waiting for Kafka was full" in ev
    assert "gateway gw1: 25 cross-node sends refused at once: the lookup backlog" in ev
    assert "gateway gw1: Kafka produce (acks=all) mean 400.0 ms" in ev  # the backend's latency as evidence
    assert "gw2" not in ev  # its 40 refusals are from before this run


def test_saturation_names_backend_errors_not_other_error_kinds():
    metrics = [("gw1", page("gw1", errors={"kafka": 2}),
                page("gw1", errors={"kafka": 7, "redis": 3, "remote_unknown_recipient": 50, "bad_json": 4}))]
    f = saturation(cpu={"gw1": 50.0}, metrics=metrics, passed=False)
    assert f["parts"] == ["kafka (errors on gw1)", "redis (errors on gw1)"]  # a client's mistakes are no backend's
    assert "gateway gw1: 5 kafka errors" in "\n".join(f["evidence"])
    same = [("gw1", page("gw1", errors={"kafka": 7}), page("gw1", errors={"kafka": 7}))]
    assert saturation(cpu={"gw1": 50.0}, metrics=same, passed=False) is None  # none during this run


def test_all_hosts_saturated_at_once_are_named_as_every_hosts_cpu():
    # nspawn containers have a boot_id each: a lab's hosts are not seen as one machine, but all of them
    # peaking together is what one saturated machine looks like - named once, not once per host
    hot = {"gw1": 99.0, "gw2": 98.0, "gen-a": 100.0, "kafka1": HOST_SATURATED}
    f = saturation(cpu=hot, passed=False)
    assert f["parts"] == [EVERY_HOST]
    assert f["evidence"][-1] == "host CPU peaked at >= 95% on every host (gw1 99%, gw2 98%, gen-a 100%, kafka1 95%)"
    # one host with CPU left: the busy ones are named each, and not as 'every host'
    f = saturation(cpu={**hot, "kafka1": HOST_SATURATED - 10}, passed=False)
    assert f["parts"] == ["host gw1 CPU", "host gw2 CPU", "host gen-a CPU"]
    # a single sampled host is that host, not every host
    assert saturation(cpu={"gw1": 99.0}, passed=False)["parts"] == ["host gw1 CPU"]


def test_hosts_of_one_machine_are_named_once_with_the_machines_peak():
    machine = {"hosts": ["gen-a", "gw1", "gw2"], "netns_shared": True}  # one boot_id in preflight
    f = saturation(cpu={"gen-a": 96.0, "gw1": 99.0, "gw2": 97.0, "kafka1": 98.0}, machines=[machine], passed=False)
    assert f["parts"] == ["the CPU of the machine that 3 hosts share", "host kafka1 CPU"]
    # its hosts sample the same counters at different instants: the machine's peak is the highest of them
    # (the shared_machine check says the same), not the first host's
    assert f["evidence"] == ["gen-a, gw1, gw2 are one machine; its CPU peaked at 99% (all its cores)",
                             "host kafka1: CPU peak 98%"]


def test_a_busy_machine_alone_is_a_finding_only_when_a_criterion_failed():
    hot = {"gw1": 100.0, "gw2": 100.0, "gen-a": 99.0}
    assert saturation(cpu=hot, passed=True) is None  # busy but every criterion met: capacity to spare
    assert saturation(cpu=hot, passed=False)["severity"] == "fail"
    machine = {"hosts": ["gen-a", "gw1", "gw2"], "netns_shared": True}
    assert saturation(cpu=hot, machines=[machine], passed=True) is None
    # with a part that did run out, the busy machine is named along with it
    loop = [{"node": "gw1", "cpu_peak": 97.0, "cpu_mean": 90.0}]
    f = saturation(nodes=loop, cpu=hot, passed=True)
    assert f["severity"] == "warn" and f["parts"] == ["gateway gw1 (event loop)", EVERY_HOST]


def test_saturation_in_a_reported_run(tmp_path):
    """The report's own host analysis feeds the check: a slow run whose every host peaked at 100 %."""
    path = tmp_path / "saturated"
    make_run(str(path), [AgentSpec("gen-a", 300, 0.2), AgentSpec("gen-b", 300, 0.2)])  # fails message_p99_ms
    samples = pd.read_csv(path / "probes" / "samples.csv")
    cpu = samples["metric"] == "host_cpu_percent"
    peak = samples.loc[cpu, "ts"].median()
    samples.loc[cpu & (samples["ts"] == peak), "value"] = 100.0  # all hosts at once, one sample each
    samples.to_csv(path / "probes" / "samples.csv", index=False)
    s = analyze_run(str(path))["summary"]
    assert s["criteria_passed"] is False
    f = next(f for f in s["diagnostics"]["findings"] if f["id"] == "saturation")
    assert f["parts"] == [EVERY_HOST] and f["severity"] == "fail"

    # preflight saw one boot_id on the gateways and generators: that machine is named once, the
    # backends' hosts (not in preflight) each
    run = json.loads((path / "run.json").read_text())
    for facts in run["preflight"]["hosts"].values():
        facts.update({"boot_id": "b0", "netns": "net:[4026531840]"})
    (path / "run.json").write_text(json.dumps(run))
    f = next(f for f in analyze_run(str(path))["summary"]["diagnostics"]["findings"] if f["id"] == "saturation")
    assert f["parts"] == ["the CPU of the machine that 4 hosts share", "host etcd1 CPU", "host redis1 CPU",
                          "host kafka1 CPU"]


# ---------------------------------------------------------------- the gateway's /metrics sample

FAILED_SCRAPE = "sh -c 'echo \"urllib.error.URLError: <urlopen error timed out>\" >&2; exit 1'"


def printed(text: str) -> str:
    return f"printf '%s' {shlex.quote(text)}"


def gateway_host(tmp_path):
    # no gateway PID: the script samples the host and the scrape only
    return SimpleNamespace(name="gw1", vars={"_gateway_pidfile": str(tmp_path / "no-gateway.pid")})


def sample_outputs(monkeypatch, host, scrapes: list[str]) -> list[dict]:
    """The sample script's key=value output for each scrape command, from one bash run."""
    scripts = []
    for cmd in scrapes:
        monkeypatch.setattr(probes, "_http_get", lambda url, cmd=cmd: cmd)
        scripts.append(probes.sample_script(host, ["gateways"]))
    # on stdin: the scripts together are longer than one command-line argument may be
    out = subprocess.run(["bash"], input="; echo @@@; ".join(scripts), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [probes.parse_sample(chunk) for chunk in out.stdout.split("@@@\n")]


def active_rows(raw: dict) -> list[tuple]:
    return [r for r in probes.SampleDeltas().rows("gw1", "gateways", raw) if r[3] == "gateway_active_connections"]


def gateway_page(active: int) -> str:
    m = GatewayMetrics("gw1")
    m.active = active
    return m.render()


def test_a_failed_or_late_metrics_scrape_is_no_sample(monkeypatch, tmp_path):
    ok, idle, failed, not_metrics = sample_outputs(monkeypatch, gateway_host(tmp_path), [
        printed(gateway_page(480)), printed(gateway_page(0)), FAILED_SCRAPE,
        printed("<html>503 Service Unavailable</html>\n")])
    assert [r[4] for r in active_rows(ok)] == [480]
    assert [r[4] for r in active_rows(idle)] == [0]  # a gateway that answered with none is a sample of 0
    # refused or timed out (urllib prints nothing, exits 1), or a page without the gauge: no sample at all,
    # not a gateway with no connections; the host's own figures of that sample remain
    for raw in (failed, not_metrics):
        assert raw["gw_active"] == "" and active_rows(raw) == []
        assert any(r[3] == "host_mem_used_bytes" for r in probes.SampleDeltas().rows("gw1", "gateways", raw))


def test_failed_scrapes_of_a_busy_node_do_not_skew_the_node_split(monkeypatch, tmp_path):
    """Users split evenly over two gateways; every other scrape of gw1 fails (busy, answering late). Its
    samples that did arrive give the same hold mean as gw2's: the report sees no imbalance."""
    path = tmp_path / "even"
    make_run(str(path), [AgentSpec("gen-a", 20, 0.2)], stages=("10s:120", "30s:120", "5s:0"))
    samples = pd.read_csv(path / "probes" / "samples.csv")
    conns = samples["metric"] == "gateway_active_connections"
    # synthetic.py splits 1.1 : 0.9; here each node holds half of the connections at every sample
    even = samples[conns].groupby("ts")["value"].sum().div(2).round().astype(int)
    ticks = [(ts, gw, n) for i, (ts, n) in enumerate(even.items()) for gw in ("gw1", "gw2")
             if not (gw == "gw1" and i % 2)] + [(ts, "gw1", None) for ts in even.index[1::2]]
    outputs = sample_outputs(monkeypatch, gateway_host(tmp_path),
                             [printed(gateway_page(n)) if n is not None else FAILED_SCRAPE for _, _, n in ticks])
    rows = []
    for (ts, gw, _), raw in zip(ticks, outputs):
        raw.update(ts=str(ts), ts_end=str(ts))  # at the run's instants
        rows += [(ts, gw, "gateways", r[3], r[4]) for r in active_rows(raw)]
    new = pd.DataFrame(rows, columns=samples.columns)
    pd.concat([samples[~conns], new]).to_csv(path / "probes" / "samples.csv", index=False)

    s = analyze_run(str(path))["summary"]
    d = s["distribution"]
    assert d["nodes"]["gw1"] == pytest.approx(60, abs=1) and d["nodes"]["gw2"] == pytest.approx(60, abs=1)
    assert d["node_imbalance"] == pytest.approx(1.0, abs=0.02)
    assert "imbalance" not in {f["id"] for f in s["diagnostics"]["findings"]}
