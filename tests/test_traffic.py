"""The traffic model (loadgen.traffic): parsing, the keyed schedule's statistics, per-type accounting end to end."""

import csv
import json
import math

import pytest

from conftest import run_loadgen
from loadgen.errors import UsageError
from loadgen.results import bytype
from loadgen.traffic import dists, keyed
from loadgen.traffic.groups import NO_GROUP, assign
from loadgen.traffic.model import TrafficModel, load, shipped
from loadgen.traffic.schedule import TrafficSchedule

KS_CRITICAL_1PCT = 1.628  # Kolmogorov-Smirnov: D * sqrt(n) above this rejects the fit at the 1 % level


def ks_statistic(samples, cdf) -> float:
    xs = sorted(samples)
    n = len(xs)
    return max(max((i + 1) / n - cdf(x), cdf(x) - i / n) for i, x in enumerate(xs))


def discrete_ks_statistic(samples, cdf, support) -> float:
    """KS for integer values: the largest gap between the empirical and the expected CDF at each value."""
    n = len(samples)
    counts = {}
    for x in samples:
        counts[x] = counts.get(x, 0) + 1
    acc, d = 0, 0.0
    for k in support:
        acc += counts.get(k, 0)
        d = max(d, abs(acc / n - cdf(k)))
    return d


def model(**extra):
    data = {"arrival": "poisson", "types": {"text": {"weight": 6, "size": {"lognormal": {
        "median": 1800, "sigma": 0.4, "min": 1024, "max": 4096}}}, "typing": {"weight": 3, "size": {"uniform": [16, 48]}},
        "receipt": {"weight": 1, "size": {"table": {"24": 3, "64": 1}}}}}
    data.update(extra)
    return TrafficModel.from_dict(data, "test")


def schedule(m, users, rate, seed=1):
    s = TrafficSchedule(m, rate, [keyed.user_key(seed, f"agent-0-{u}") for u in range(users)])
    for u in range(users):
        s.add(u, 0)
    return s


def test_poisson_gaps_fit_the_exponential_distribution():
    arrivals = model().arrivals(rate=2.0)
    key = keyed.user_key(3, "agent-0-0")
    gaps, t = [], 0.0
    for seq in range(10_000):
        nxt = arrivals.advance(t, arrivals.gap(keyed.uniform(key, seq, keyed.GAP)))
        gaps.append(nxt - t)
        t = nxt
    d = ks_statistic(gaps, lambda x: 1 - math.exp(-2.0 * x))
    assert d * math.sqrt(len(gaps)) < KS_CRITICAL_1PCT
    assert abs(sum(gaps) / len(gaps) - 0.5) < 0.02


def test_a_burst_window_shows_in_the_per_second_sent_counts():
    m = model(bursts={"every": "20s", "for": "5s", "multiplier": 5, "start": "10s"})
    sched = schedule(m, users=500, rate=2.0)
    per_second = [0] * 40
    for _user, due_ns, _kind, _size in sched.due(40 * 10**9):
        per_second[due_ns // 10**9] += 1
    burst = [per_second[s] for s in range(40) if (s - 10) % 20 < 5 and s >= 10]
    calm = [per_second[s] for s in range(40) if not ((s - 10) % 20 < 5 and s >= 10)]
    ratio = (sum(burst) / len(burst)) / (sum(calm) / len(calm))
    assert 4.5 <= ratio <= 5.5, (ratio, per_second)
    assert abs(sum(calm) / len(calm) - 1000) < 50  # 500 users x 2/s


def test_a_spike_multiplies_the_rate_once():
    arrivals = model(spike={"at": "30s", "for": "10s", "multiplier": 3}).arrivals(rate=1.0)
    assert arrivals.multiplier(29.9) == (1.0, 30.0)
    assert arrivals.multiplier(35) == (3.0, 40.0)
    assert arrivals.multiplier(41)[0] == 1.0
    assert arrivals.advance(29.0, 4.0) == pytest.approx(31.0)  # 1 s at x1, then 3 more at x3


def test_the_achieved_type_mix_is_within_2_points_of_the_weights():
    sched = schedule(model(), users=200, rate=10.0)
    counts = [0, 0, 0]
    n = 0
    for _user, _due, kind, _size in sched.due(10 * 10**9 + 10**9):
        counts[kind] += 1
        n += 1
        if n == 20_000:
            break
    assert n == 20_000
    for share, weight in zip(counts, (0.6, 0.3, 0.1)):
        assert abs(share / n - weight) <= 0.02


def test_sizes_match_their_distributions():
    m = model()
    sched = schedule(m, users=1, rate=1.0)
    by_kind = {0: [], 1: [], 2: []}
    for seq in range(1, 30_001):
        kind, size = sched.draw(0, seq)
        by_kind[kind].append(size)
    text, typing, receipt = (by_kind[k] for k in range(3))
    assert min(text) >= 1024 and max(text) <= 4096
    assert ks_statistic(text, m.types[0].size.cdf) * math.sqrt(len(text)) < KS_CRITICAL_1PCT
    assert min(typing) >= 16 and max(typing) <= 48
    # integer sizes from a continuous uniform: compare with the rounded distribution's CDF
    rounded_uniform = lambda k: min(1.0, (k + 0.5 - 16) / 32)  # noqa: E731 - sizes are rounded to bytes
    assert discrete_ks_statistic(typing, rounded_uniform, range(16, 49)) * math.sqrt(len(typing)) < KS_CRITICAL_1PCT
    assert set(receipt) == {24, 64} and abs(receipt.count(24) / len(receipt) - 0.75) < 0.02


def test_the_same_seed_gives_the_same_schedule():
    def first(seed):
        sched = schedule(model(bursts={"every": "10s", "for": "2s", "multiplier": 3}), users=50, rate=2.0, seed=seed)
        return list(sched.due(20 * 10**9))

    a, b, c = first(7), first(7), first(8)
    assert a == b and len(a) > 1000
    assert a != c


def test_groups_assign_a_fraction_of_users_without_groups_of_one():
    m = load("chat-mix")
    of, sizes = assign(1000, m.groups, keyed.user_key(0, "agent-0-"))
    members = [g for g in of if g != NO_GROUP]
    assert len(members) == 200 and sum(sizes) == 200 and min(sizes) >= 2
    assert all(of[s] == NO_GROUP for s in range(200, 1000))
    assert assign(1000, m.groups, keyed.user_key(0, "agent-0-")) == (of, sizes)


def test_groups_of_independent_gateways_stay_on_one_node():
    m = load("chat-mix")
    node_of = lambda s: (s // 2) % 2  # noqa: E731 - same-node pairing over 2 endpoints (loadgen.agent.pairs)
    of, sizes = assign(1000, m.groups, keyed.user_key(0, "agent-0-"), node_of)
    members = {}
    for s, g in enumerate(of):
        if g != NO_GROUP:
            members.setdefault(g, []).append(s)
    assert sum(sizes) == 200 and all(len(v) >= 2 for v in members.values())
    assert all(len({node_of(s) for s in v}) == 1 for v in members.values())
    spread, _ = assign(1000, m.groups, keyed.user_key(0, "agent-0-"))
    assert any(len({node_of(s) for s in range(200) if spread[s] == g}) == 2 for g in set(spread) - {NO_GROUP})


def test_the_offered_mix_counts_group_types_for_members_only():
    mix = load("chat-mix").offered_mix()
    assert mix["group"] == pytest.approx(0.03) and sum(mix.values()) == pytest.approx(1.0)
    assert mix["text"] == pytest.approx(0.2 * 0.55 + 0.8 * 55 / 85)


def test_shipped_models_parse_and_round_trip():
    assert {"constant", "chat-mix"} <= set(shipped())
    for name in shipped():
        m = load(name)
        again = TrafficModel.from_dict(m.to_dict(), name)
        assert again.to_dict() == m.to_dict()
    assert load("constant").is_constant and not load("chat-mix").is_constant


@pytest.mark.parametrize("data, message", [
    ({"types": {}}, "types must map"),
    ({"types": {"a": {"weight": 1}}}, "missing size"),
    ({"types": {"a": {"weight": 0, "size": 10}}}, "weight must be a number above 0"),
    ({"types": {"a": {"weight": 1, "size": {"normal": 3}}}}, "unknown distribution 'normal'"),
    ({"types": {"a": {"weight": 1, "size": {"uniform": [9, 3]}}}}, "uniform low 9 is above high 3"),
    ({"types": {"a": {"weight": 1, "size": 10, "to": "group"}}}, "needs a groups section"),
    ({"types": {"a": {"weight": 1, "size": 10}}, "arrival": "bursty"}, "arrival 'bursty'"),
    ({"types": {"a": {"weight": 1, "size": 10}}, "bursts": {"every": "5s", "for": "9s", "multiplier": 2}},
     "shorter than 'every'"),
    ({"types": {"a": {"weight": 1, "size": 10}}, "surprise": 1}, "unknown key(s) surprise"),
])
def test_a_bad_model_is_refused_with_one_line(data, message):
    with pytest.raises(UsageError) as err:
        TrafficModel.from_dict(data, "bad")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_lognormal_without_mass_in_its_range_is_refused():
    with pytest.raises(UsageError, match="almost no mass"):
        dists.parse({"lognormal": {"median": 10, "sigma": 0.1, "min": 1000, "max": 2000}}, "size", 1, 1e6)


def test_loadgen_run_refuses_an_unknown_model_before_any_load(tmp_path):
    r = run_loadgen("run", "throughput", "--vus", "2", "--duration", "1s", "--traffic", "no-such-model",
                    "-e", "GATEWAY_PORT=1", "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith(
        "--traffic 'no-such-model' is neither a shipped model (chat-mix, constant) nor a file")
    r = run_loadgen("run", "connection", "--vus", "2", "--duration", "1s", "--traffic", "chat-mix",
                    "-e", "GATEWAY_PORT=1", "--out", str(tmp_path / "o2"))
    assert r.returncode == 2 and "needs the throughput or cluster scenario" in r.stderr


MIX = """
traffic:
  arrival: poisson
  types:
    text:    {weight: 60, size: {lognormal: {median: 1800, sigma: 0.4, min: 1024, max: 4096}}}
    typing:  {weight: 25, size: {uniform: [16, 48]}}
    receipt: {weight: 15, size: 40}
  bursts: {every: 3s, for: 1s, multiplier: 3, start: 1s}
"""


def test_every_message_is_accounted_for_per_type(gateway, tmp_path):
    model_file = tmp_path / "mix.yaml"
    model_file.write_text(MIX)
    out = tmp_path / "o"
    r = run_loadgen("run", "throughput", "--vus", "30", "--rate", "4", "--duration", "5s", "--workers", "2",
                    "--traffic", str(model_file), "--seed", "11", "-e", f"GATEWAY_PORT={gateway.port}",
                    "--out", str(out), "--criterion", "gateway_cpu_percent=off",
                    "--criterion", "gateway_rss_growth_bytes_per_min=off", "--criterion", "message_p99_ms<5000",
                    "--criterion", "message_p99_ms{type=typing}<5000")
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["plan"]["traffic"] == "mix" and s["plan"]["seed"] == 11
    by_type = s["by_type"]
    assert list(by_type) == ["text", "typing", "receipt"]
    m = s["messages"]
    assert m["sent"] == sum(f["sent"] for f in by_type.values()) > 300
    for name, f in by_type.items():
        # sent x recipients (1 each: the partner) = received + counted errors, nothing lost
        assert f["owed"] == f["sent"] == f["received"] + f["errors"], name
        assert f["lost"] == 0 and f["fan_out"] == 1.0 and f["latency_ms"]["count"] == f["received"]
    assert m["owed"] == m["received"] + m["error_frames"] and m["lost"] == 0
    crit = {c["name"]: c for c in s["criteria"]}
    assert crit["message_p99_ms{type=typing}"]["passed"] is True
    # the CSV's by_type cells alone give the summary's per-type figures
    totals = bytype.TypeTotals()
    with open(out / "timeseries.csv") as f:
        for row in csv.DictReader(f):
            totals.add(row["by_type"])
    again = totals.figures(["text", "typing", "receipt"])
    for name in by_type:
        assert again[name]["sent"] == by_type[name]["sent"]
        assert again[name]["latency_ms"]["p99"] == by_type[name]["latency_ms"]["p99"]


GROUPLESS_MIX = MIX.replace("bursts: {every: 3s, for: 1s, multiplier: 3, start: 1s}", "")


def test_cluster_test_runs_a_model_and_reports_per_type(tmp_path):
    from test_cluster_test import fab, only_run, write_inventory

    inv, reports = write_inventory(tmp_path), tmp_path / "reports"
    model_file = tmp_path / "mix.yaml"
    model_file.write_text(GROUPLESS_MIX)
    r = fab("cluster-test", "-i", inv, "--reports-dir", str(reports), "--probe-interval", "2",
            "--traffic", str(model_file), "--seed", "5", "--criterion", "message_p99_ms{type=text}<5000")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = only_run(reports)
    plan = json.load(open(f"{run}/plan.json"))
    assert plan["traffic"]["name"] == "mix" and plan["seed"] == 5
    summary = json.load(open(f"{run}/summary.json"))
    assert summary["status"] == "PASS"
    by_type = summary["by_type"]
    assert list(by_type) == ["text", "typing", "receipt"]
    for name, f in by_type.items():
        assert f["owed"] == f["received"] + f["errors"] + f["lost"] and f["lost"] == 0, name
        assert f["share_offered"] == pytest.approx({"text": 0.6, "typing": 0.25, "receipt": 0.15}[name])
    assert sum(f["sent"] for f in by_type.values()) == summary["messages"]["sent"]
    assert {c["name"]: c["passed"] for c in summary["criteria"]}["message_p99_ms{type=text}"] is True
    html = open(f"{run}/report.html").read()
    assert "Per message type (traffic mix, seed 5)" in html and "Message latency P99 by type" in html


CHURN_MIX = MIX.replace("bursts: {every: 3s, for: 1s, multiplier: 3, start: 1s}", """churn:
    session: {uniform: [1s, 2.5s]}
    pause: {uniform: [0.2, 0.8]}
    storm: {at: 3s, fraction: 0.5, pause: 1s}""")


def test_churn_closes_and_reopens_sessions_with_exact_accounting(gateway, tmp_path):
    model_file = tmp_path / "churn.yaml"
    model_file.write_text(CHURN_MIX)
    out = tmp_path / "o"
    r = run_loadgen("run", "throughput", "--vus", "40", "--rate", "3", "--duration", "6s", "--workers", "1",
                    "--traffic", str(model_file), "-e", f"GATEWAY_PORT={gateway.port}", "--out", str(out),
                    "--criterion", "gateway_cpu_percent=off", "--criterion", "gateway_rss_growth_bytes_per_min=off",
                    "--criterion", "message_p99_ms<5000", "--criterion", "throughput_per_s=off")
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((out / "summary.json").read_text())
    with open(out / "timeseries.csv") as f:
        rows = list(csv.DictReader(f))
    total = {k: sum(int(row[k]) for row in rows) for k in ("connects_ok", "closes", "churns", "disconnects")}
    # every session churned at least twice in 6 s (1-2.5 s each, plus the storm's half)
    assert total["churns"] >= 80 and total["disconnects"] == 0
    # each churned session's user came back (those whose pause outlived the run excepted), and every
    # connection ended exactly once: as a churn, a planned close at the end, or a drop
    assert total["churns"] <= total["connects_ok"] <= 40 + total["churns"]
    assert total["connects_ok"] == total["closes"] + total["disconnects"]
    assert s["session_s"]["count"] == total["closes"] and s["session_s"]["p95"] < 3.0
    assert s["connections"]["success_rate"] == 1.0
    for name, f in s["by_type"].items():
        assert f["owed"] == f["received"] + f["errors"] and f["lost"] == 0, name


GROUP_MIX = """
traffic:
  arrival: poisson
  types:
    text:  {weight: 50, size: 200}
    group: {weight: 50, size: {uniform: [100, 400]}, to: group}
  groups: {members: 1.0, size: %s}
"""


@pytest.mark.parametrize("users, size, rate", [(40, "{table: {10: 1}}", 2), (500, 500, 0.02)])
def test_group_messages_reach_every_other_member_exactly_accounted(gateway, tmp_path, users, size, rate):
    """Against the real reference gateway: a group message owes the ack's n deliveries (every other member
    connected), and every one of them arrives; groups of 10, and one group of 500."""
    model_file = tmp_path / "groups.yaml"
    model_file.write_text(GROUP_MIX % size)
    out = tmp_path / "o"
    r = run_loadgen("run", "throughput", "--vus", str(users), "--rate", str(rate), "--duration", "5s",
                    "--workers", "1", "--traffic", str(model_file), "-e", f"GATEWAY_PORT={gateway.port}",
                    "--out", str(out), "--criterion", "gateway_cpu_percent=off",
                    "--criterion", "gateway_rss_growth_bytes_per_min=off", "--criterion", "message_p99_ms<10000",
                    "--criterion", "throughput_per_s=off")
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((out / "summary.json").read_text())
    group, text = s["by_type"]["group"], s["by_type"]["text"]
    members = 10 if users == 40 else 500
    assert group["sent"] > 5 and group["acked"] == group["sent"] and group["errors"] == 0
    # sent x recipients = delivered + counted errors: n is the other members connected at the send (all of
    # them once everyone is connected; a busy machine may still be connecting some at the first sends)
    assert group["owed"] == group["received"] and group["lost"] == 0
    assert (members - 1) * 0.7 < group["fan_out"] <= members - 1
    assert group["latency_ms"]["count"] == group["received"]
    assert text["owed"] == text["sent"] == text["received"] + text["errors"] and text["lost"] == 0
    m = s["messages"]
    assert m["owed"] == group["owed"] + text["owed"] == m["received"] + m["error_frames"]


def test_the_cluster_scenario_runs_chat_mix_unless_the_protocol_cannot_express_it():
    from test_plan import flags as plan

    assert plan("cluster", "--vus", "10", "--duration", "5s").traffic["name"] == "chat-mix"
    assert plan("throughput", "--vus", "10", "--duration", "5s").traffic is None
    assert plan("cluster", "--vus", "10", "--duration", "5s", "--protocol", "mqtt").traffic is None
    with pytest.raises(UsageError, match="protocol 'mqtt' cannot express typed messages"):
        plan("cluster", "--vus", "10", "--duration", "5s", "--protocol", "mqtt", "--traffic", "chat-mix")
