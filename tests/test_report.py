"""The report from synthetic run directories with known answers (tests/synthetic.py)."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pandas as pd
import pytest
from hdrh.histogram import HdrHistogram

from loadgen.results import histogram as hdr
from loadgen.results.columns import COLUMNS
from loadgen.errors import UsageError
from loadgen.plan import criteria as crit
from loadgen.report import analyze_run, build_report, compare_runs
from loadgen.report.hist import Hist
from loadgen.results.verdict import evaluate, verdict
from synthetic import AGENT_MEM_PER_CONN, AgentSpec, make_run, three_agents

HDR_REL = 2 ** -10  # 3 significant digits: a bucket spans at most 1/1024 of its value


def exact_percentile(sorted_us: np.ndarray, p: float) -> float:
    """The sample HdrHistogram reports for percentile p (its target-count rule), in us."""
    n = len(sorted_us)
    return float(sorted_us[max(int(p * n / 100 + 0.5), 1) - 1])


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("known") / "run-known")
    truth = three_agents(path)
    return path, truth, build_report(path)


def test_percentiles_are_those_of_all_samples(known):
    path, truth, s = known
    samples = np.sort(truth.latency_us)
    assert s["latency_ms"]["count"] == len(samples)
    for p in (50, 95, 99):
        exact = exact_percentile(samples, p)
        got = s["latency_ms"][f"p{p}"] * 1000
        assert exact <= got <= exact * (1 + HDR_REL) + 1, (p, exact, got)
    assert s["latency_ms"]["max"] * 1000 >= samples[-1]
    assert s["figures"]["latency_p99_ms"] == s["latency_ms"]["p99"]


def test_merged_percentiles_equal_hdrh_reference(known):
    """Our fast merge of every CSV cell gives exactly what hdrh's own decode_and_add gives."""
    path, _, s = known
    ref = hdr.new_histogram()
    for host in os.listdir(os.path.join(path, "agents")):
        df = pd.read_csv(os.path.join(path, "agents", host, "timeseries.csv"), dtype={"latency_hdr": object})
        for cell in df["latency_hdr"].dropna():
            ref.decode_and_add(cell)
    for p in (50, 95, 99, 99.9):
        assert HdrHistogram.decode(s["histograms"]["latency"]).get_value_at_percentile(p) == ref.get_value_at_percentile(p)
    assert ref.get_value_at_percentile(99) / 1000 == s["latency_ms"]["p99"]
    assert ref.get_total_count() == s["latency_ms"]["count"]


def test_counters_and_complete_run(known):
    path, truth, s = known
    assert s["connections"]["established"] == truth.counters["connects_ok"]
    assert s["messages"]["sent"] == truth.counters["msgs_sent"]
    assert s["messages"]["received"] == truth.counters["msgs_received"]
    assert s["complete"] and s["partial_reasons"] == []
    # gen-c's 3 % tail at 400 ms puts the merged P99 above 200 ms: the verdict must say FAIL, with evidence
    row = next(r for r in s["criteria"] if r["name"] == "message_p99_ms")
    assert row["passed"] is False and "13,200 messages" in row["evidence"]
    assert s["status"] == "FAIL" and s["passed"] is False
    assert os.path.exists(s["report"]) and json.load(open(os.path.join(path, "summary.json")))["status"] == "FAIL"
    # throughput: 120 connections x 2 msg/s over the hold
    assert s["messages"]["throughput_per_s"] == pytest.approx(240, rel=0.01)


def test_per_agent_percentiles_from_their_own_rows(known):
    path, truth, s = known
    lat = {h: a["latency_p99_ms"] for h, a in s["agents"].items()}
    assert lat["gen-b"] > lat["gen-a"]  # medians 60 ms vs 20 ms
    assert lat["gen-c"] > 300  # its tail


def test_dead_and_unreachable_agents_make_the_run_partial(tmp_path):
    path = str(tmp_path / "run-dead")
    truth = make_run(path, [AgentSpec("ok-1", 20, 0.2), AgentSpec("ok-2", 20, 0.2), AgentSpec("dies", 20, 0.2, dead_at=25)],
                     unreachable=("lost-1",))
    s = build_report(path)
    assert s["status"] == "PARTIAL" and s["passed"] is False and s["complete"] is False
    assert s["agents"]["dies"]["state"] == "dead" and s["agents"]["lost-1"]["state"] == "unreachable"
    assert s["agents"]["dies"]["start_skew_ms"] == pytest.approx(5.0, abs=0.5)  # from its rows: ts - elapsed_s
    assert any("dies" in r for r in s["partial_reasons"]) and any("lost-1" in r for r in s["partial_reasons"])
    # the dead agent's rows up to its death still count
    assert s["messages"]["sent"] == truth.counters["msgs_sent"]
    assert any(f["id"] == "partial" for f in s["diagnostics"]["findings"])
    html = open(s["report"]).read()
    assert "worker 0 killed by OOM" in html  # its agent.log tail is shown


def test_failed_criterion_wins_over_partial(tmp_path):
    path = str(tmp_path / "run-dead-slow")
    make_run(path, [AgentSpec("slow", 300, 0.2), AgentSpec("dies", 300, 0.2, dead_at=25)])
    s = build_report(path)
    assert s["status"] == "FAIL" and not s["complete"]


def test_leak_regression_and_memory_per_connection(tmp_path):
    leaky = str(tmp_path / "leaky")
    make_run(leaky, [AgentSpec("g", 10, 0.2)], scenario="throughput", leak_bytes_per_min=5 * 2**20, stages=("10s:100", "3m:100", "5s:0"))
    s = build_report(leaky)
    row = next(r for r in s["criteria"] if r["name"] == "gateway_rss_growth_bytes_per_min")
    assert row["target"] == crit.LEAK_BYTES_PER_MIN and row["passed"] is False
    assert row["actual"] == pytest.approx(5 * 2**20, rel=0.05)
    assert "least-squares" in row["evidence"]
    assert any(f["id"] == "memory_leak" for f in s["diagnostics"]["findings"])
    flat = str(tmp_path / "flat")
    make_run(flat, [AgentSpec("g", 10, 0.2)], scenario="throughput", stages=("10s:100", "3m:100", "5s:0"))
    s2 = build_report(flat)
    assert abs(s2["gateway"]["gateway_rss_growth_bytes_per_min"]) < 1000
    assert not any(f["id"] == "memory_leak" for f in s2["diagnostics"]["findings"])
    assert s2["status"] == "PASS"


def test_gateway_figures_from_agent_scrapes_when_no_probes(tmp_path):
    path = str(tmp_path / "scraped")
    make_run(path, [AgentSpec("g", 10, 0.2)], samples=False, gateway_metrics=True, mem_per_conn=3000)
    s = build_report(path)
    assert s["gateway"]["source"] == "agents' gateway_metrics.csv"
    assert s["gateway"]["gateway_memory_per_connection_bytes"] == pytest.approx(3000, rel=0.01)
    assert s["gateway"]["gateway_cpu_percent"] == pytest.approx(30, rel=0.05)  # 0.3 cpu-s per s
    assert set(s["distribution"]["nodes"]) == {"gw1:9090", "gw2:9090"}


def test_diagnostics_point_at_causes(tmp_path):
    path = str(tmp_path / "troubled")
    make_run(path, [AgentSpec("g1", 10, 0.2, fail_per_s={"timeout": 3}, disconnect_at=40),
                    AgentSpec("g2", 10, 0.2, fail_per_s={"timeout": 3})])
    s = build_report(path)
    found = {f["id"]: f for f in s["diagnostics"]["findings"]}
    assert "connect_timeouts" in found and "disconnects" in found
    ev = " ".join(found["connect_timeouts"]["evidence"])
    assert "listen queue overflows 0 before, 12 after" in ev and "gw1: net.core.somaxconn = 4096" in ev
    assert "gw2: net.ipv4.tcp_max_syn_backlog = 1024" in ev  # the probe file wins over run.json's preflight value
    assert "spike at 0:40" in " ".join(found["disconnects"]["evidence"])
    assert "read_timeout=3" in " ".join(found["disconnects"]["evidence"])
    assert s["connections"]["failed_by_reason"] == {"timeout": s["connections"]["failed"]}
    assert "high_latency" not in found and "memory_leak" not in found


def test_plan_criteria_override_agents(tmp_path):
    path = str(tmp_path / "strict")
    make_run(path, [AgentSpec("g", 20, 0.2)], criteria=["message_p99_ms<5", "session_p95_s=off"])
    s = build_report(path)
    names = [r["name"] for r in s["criteria"]]
    assert "session_p95_s" not in names and "connection_success_rate" in names
    assert next(r for r in s["criteria"] if r["name"] == "message_p99_ms")["target"] == 5
    assert s["status"] == "FAIL" and "message_p99_ms<5" in s["criteria_source"]


def test_not_a_run_dir(tmp_path):
    with pytest.raises(UsageError):
        build_report(str(tmp_path))
    with pytest.raises(UsageError):
        build_report(str(tmp_path / "missing"))


def test_damaged_files_are_reported_not_fatal(tmp_path):
    path = str(tmp_path / "damaged")
    make_run(path, [AgentSpec("g1", 20, 0.2), AgentSpec("g2", 20, 0.2)])
    csv_path = os.path.join(path, "agents", "g2", "timeseries.csv")
    with open(csv_path, "a") as f:
        row = {c: 0 for c in COLUMNS} | {"ts": 1700000099.5, "agent": "g2", "elapsed_s": 99, "phase": "hold",
                                          "target": 40, "active": 40, "msgs_sent": 12, "msgs_received": 12,
                                          "latency_hdr": "HISTfAAAA!!notbase64", "connect_hdr": "", "session_hdr": ""}
        f.write(",".join(str(row[c]) for c in COLUMNS) + "\n")
        f.write("1700000100.5,g2,1,100,ho")  # cut mid-row by a kill
    with open(os.path.join(path, "agents", "g1", "summary.json"), "w") as f:
        f.write("{not json")
    s = build_report(path)
    assert any("damaged histogram cell" in r for r in s["partial_reasons"])
    assert s["status"] in ("PARTIAL", "FAIL")
    assert os.path.exists(s["report"])


def test_fast_decoder_matches_hdrh():
    rng = random.Random(3)
    cells, ref = [], hdr.new_histogram()
    for _ in range(40):
        h = hdr.new_histogram()
        for _ in range(rng.randint(0, 300)):
            h.record_value(max(1, int(rng.lognormvariate(8, 2))))
        cells.append(hdr.encode(h))
        ref.add(h)
    # a cell from another layout (other range and precision) is re-recorded into ours, not dropped
    foreign = HdrHistogram(1, 60_000_000, 2)
    for v in (1500, 2500, 70000):
        foreign.record_value(v)
    cells.append(foreign.encode().decode())
    ref.add(HdrHistogram.decode(cells[-1]))
    merged = Hist()
    for cell in cells:
        merged.add_encoded(cell)
    assert merged.total == ref.get_total_count()
    for p in (0, 1, 50, 90, 99, 99.9, 100):
        assert merged.value_at_percentile(p) == ref.get_value_at_percentile(p), p
    ours = merged.percentiles_ms()
    assert ours["max"] == ref.get_max_value() / 1000 and ours["min"] == ref.get_min_value() / 1000
    assert ours["mean"] == pytest.approx(ref.get_mean_value() / 1000, rel=1e-9)
    again = Hist()
    again.add_encoded(merged.encode())
    assert np.array_equal(again.counts, merged.counts)


def test_compare_flags_injected_regression(tmp_path):
    a, b = str(tmp_path / "base"), str(tmp_path / "slower")
    make_run(a, [AgentSpec("g1", 20, 0.2), AgentSpec("g2", 20, 0.2)])
    make_run(b, [AgentSpec("g1", 30, 0.2, fail_per_s={"refused": 1}), AgentSpec("g2", 30, 0.2)])
    res = compare_runs(a, b, tolerance=0.10)
    assert {"latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "connection_success_rate"} <= set(res["regressions"])
    assert "throughput_per_s" not in res["regressions"] and "connect_p95_ms" not in res["regressions"]
    assert os.path.exists(res["report"]) and "REGRESSION" in open(res["report"]).read()
    assert json.load(open(os.path.splitext(res["report"])[0] + ".json"))["regressions"] == res["regressions"]
    same = compare_runs(a, a, str(tmp_path / "same.html"))
    assert same["regressions"] == []
    loose = compare_runs(a, b, str(tmp_path / "loose.html"), tolerance=1.0)
    assert "latency_p99_ms" not in loose["regressions"]


def test_analysis_is_fast_enough_in_process(known):
    path, _, _ = known
    m = analyze_run(path)
    assert m["summary"]["analysis_seconds"] < 5


def test_aborted_run_with_only_run_json(tmp_path):
    """A cluster test that failed before any load leaves only run.json: the report still says so."""
    run = tmp_path / "aborted"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"controller_started_at": 1.7e9, "agents": {}, "gateways": {},
                                              "unreachable": [{"host": "gen-1", "error": "ssh: timed out"}],
                                              "controller_ended_at": 1.7e9 + 30, "stopped_by": None}))
    s = build_report(str(run))
    assert s["status"] == "PARTIAL" and not s["passed"]
    assert s["agents"] == {} or all(a["state"] != "done" for a in s["agents"].values())
    assert all(r["passed"] is None for r in s["criteria"])
    html = open(s["report"]).read()
    assert "Not collected: no agent produced timeseries rows." in html


def test_agent_memory_per_connection_per_generator(tmp_path):
    # generators' samples carry the agent's RSS (all its processes) and its open connections
    path = str(tmp_path / "agentmem")
    make_run(path, [AgentSpec("g1", 100, 0.2), AgentSpec("g2", 100, 0.2)], stages=("10s:20000", "30s:20000", "5s:0"))
    rows = {r["host"]: r for r in analyze_run(path)["hosts"]["rows"]}
    for gen in ("g1", "g2"):
        peak = 10_000  # half of the fleet's 20,000 each
        assert rows[gen]["memory_per_connection"] == pytest.approx(30e6 / peak + AGENT_MEM_PER_CONN, rel=0.02)
        assert rows[gen]["agent_rss_bytes_max"] == pytest.approx(30e6 + peak * AGENT_MEM_PER_CONN, rel=0.02)
    html = open(build_report(path)["report"]).read()
    assert "Agent RSS (all its processes) - generator hosts" in html


def test_a_failed_gateway_memory_criterion_fails_the_run(tmp_path):
    # figures computed with numpy compare to numpy.bool_: a failed one must still fail the verdict
    path = str(tmp_path / "fat-gateway")
    make_run(path, [AgentSpec("g", 10, 0.2)], scenario="connection", mem_per_conn=9000)
    s = build_report(path)
    row = next(r for r in s["criteria"] if r["name"] == "gateway_memory_per_connection_bytes")
    assert row["passed"] is False and row["actual"] == pytest.approx(9000, rel=0.02)
    assert s["status"] == "FAIL" and s["criteria_passed"] is False


def test_criteria_verdict_with_numpy_figures():
    c = crit.Criterion("gateway_memory_per_connection_bytes", "<", 8192.0, "mem")
    rows = evaluate([c], {"gateway_memory_per_connection_bytes": np.float64(9006.6)})
    assert rows[0]["passed"] is False and verdict(rows, [])[0] == "FAIL"
    rows = evaluate([c], {"gateway_memory_per_connection_bytes": np.float64(5000.0)})
    assert rows[0]["passed"] is True and verdict(rows, [])[0] == "PASS"


def test_phases_and_points_share_the_agents_clock(known):
    """A bin is drawn at its middle, an agent's second fills one bin: the shaded hold holds exactly the
    hold seconds (no ramp-up connects inside it), and the first point is half a bin after the planned start."""
    path, truth, _ = known
    m = analyze_run(path)
    s, win = m["series"], m["window"]
    hold = next(sp for sp in s["phase_spans"] if sp["phase"] == "hold")
    start = next(sp for sp in s["phase_spans"] if sp["phase"] == "start")["from"]
    inside = (s["x"] > hold["from"]) & (s["x"] < hold["to"])
    assert np.array_equal(inside, s["hold"])
    assert np.nansum(s["connects_ok"][inside]) == 0 and np.nansum(s["connects_ok"][~inside]) > 0
    assert hold["from"] == pytest.approx(start + 20, abs=0.05)  # the plan ramps for 20 s, then holds
    first = np.flatnonzero(np.isfinite(s["active_total"]))[0]
    assert s["x"][first] == pytest.approx(start + win["bin_s"] / 2, abs=0.05)


@pytest.mark.parametrize("lo, hi, unit", [(534.2 * 2**20, 572.9 * 2**20, "B"), (0, 60.9 * 2**20, "B"), (0, 1.5 * 2**20, "B"),
                                          (0, 13.54, "ms"), (0, 2000, ""), (0.2, 0.7, "%"), (3, 3, "")])
def test_axis_ticks_are_nice_and_cover_the_data(lo, hi, unit):
    from loadgen.report.svg import nice_ticks, tick_labels

    ticks = nice_ticks(lo, hi, unit=unit)
    assert ticks[0] <= lo and ticks[-1] >= hi and 3 <= len(ticks) <= 8
    labels = tick_labels(ticks, unit)
    numbers = [float(label.split()[0].rstrip("%")) for label in labels]
    step = numbers[1] - numbers[0]
    mantissa = step / 10 ** np.floor(np.log10(step))
    assert round(mantissa, 6) in (1, 2, 5), labels
    assert np.allclose(np.diff(numbers), step), labels
    assert len({label.split()[-1] for label in labels}) == 1 or unit not in ("B", "ms")  # one unit per axis


def test_hosts_of_one_machine_are_charted_once_and_judged_by_process(tmp_path):
    """inventory/local: every host is this machine. The machine's CPU, memory and established count are shown
    once for it (the count holds both ends), and CPU is attributed to the agents and gateways by process."""
    path = tmp_path / "one-machine"
    agents = [AgentSpec("gen-a"), AgentSpec("gen-b")]
    make_run(str(path), agents, gateway_cpu=90.0)
    apart = analyze_run(str(path))
    assert any(c["title"] == "CPU - generator hosts" for c in apart["hosts"]["charts"])
    assert apart["hosts"]["machines"] == []
    run = json.loads((path / "run.json").read_text())
    for facts in run["preflight"]["hosts"].values():
        facts.update({"boot_id": "b0", "netns": "net:[4026531840]"})
    (path / "run.json").write_text(json.dumps(run))
    samples = pd.read_csv(path / "probes" / "samples.csv")
    gen = samples[(samples["metric"] == "host_cpu_percent") & samples["host"].isin(["gen-a", "gen-b"])]
    agent_cpu = gen.assign(metric="agent_cpu_percent", value=30.0)  # each agent: 30 % of one core over 2 workers
    pd.concat([samples, agent_cpu]).to_csv(path / "probes" / "samples.csv", index=False)

    m = analyze_run(str(path))
    names = "gen-a, gen-b, gw1, gw2"
    assert m["hosts"]["machines"] == [{"hosts": ["gen-a", "gen-b", "gw1", "gw2"], "netns_shared": True}]
    titles = [c["title"] for c in m["hosts"]["charts"]]
    assert "CPU - one machine (4 hosts)" in titles and "Memory used - one machine (4 hosts)" in titles
    established = next(c for c in m["hosts"]["charts"] if c["title"] == "Established TCP connections (both ends) - one machine (4 hosts)")
    assert established["note"] == f"one machine: {names}; both ends of each connection among them count"
    assert not any(t.startswith(("CPU - generator", "CPU - gateway", "Established TCP connections - g")) for t in titles)
    assert "Agent CPU, workers included (% of one core) - generator hosts" in titles
    found = {f["id"]: f for f in m["summary"]["diagnostics"]["findings"]}
    assert "generator_saturation" not in found
    ev = found["shared_machine"]["evidence"]
    assert ev[0] == f"{names} are one machine; its CPU peaked at 95% (all its cores)"
    assert "gen-a: agent CPU per worker (2 worker(s)) peak 15%" in ev and "gw1: gateway process CPU peak 92%" in ev
