"""RunPlan and FleetPlan: JSON both ways, the same rules for flags and files, shares that add up."""

import json
import os

import pytest

from conftest import TOKEN, run_loadgen
from loadgen.cli import _Parser, _run_parser
from loadgen.errors import UsageError
from loadgen.plan.cluster import FleetPlan
from loadgen.plan.options import plan_from_args
from loadgen.plan.runplan import SCHEMA, RunPlan
from loadgen.plan.stages import Stage

RECORDED_PLAN = os.path.join(os.path.dirname(__file__), "data", "run-200-cluster", "plan.json")


def flags(*argv, env=None) -> RunPlan:
    parser = _Parser(prog="loadgen")
    _run_parser(parser.add_subparsers(dest="command", parser_class=_Parser))
    return plan_from_args(parser.parse_args(["run", *argv]), env or {})


def fleet(**changes) -> FleetPlan:
    base = dict(run_id="r1", scenario="throughput", stages=[Stage(10, 1001), Stage(20, 1001), Stage(5, 0)], rate=2.0,
                message_size=512, generators=["g1", "g2", "g3"], gateways=["w1", "w2"],
                endpoints=["127.0.0.1:8080", "127.0.0.1:8081"], min_generators=3)
    return FleetPlan(**{**base, **changes})


def test_run_plan_round_trips_through_json_without_the_token():
    plan = flags("throughput", "--stage", "5s:30", "--stage", "1m:30", "--rate", "3", "--gateways", "a:1,b:2",
                 "--local-ips", "127.0.0.2-127.0.0.3", "--criterion", "message_p99_ms<50", "--workers", "2",
                 "--start-at", "1800000000.5", "--close-quiesce", "2s").replace(token=TOKEN, out_dir="o")
    text = json.dumps(plan.to_dict())
    assert TOKEN not in text and "out_dir" not in text
    back = RunPlan.from_dict(json.loads(text))
    assert back == plan and back.token == ""
    data = json.loads(text)
    assert data["schema"] == SCHEMA and data["stages"] == ["5s:30", "1m:30"] and data["endpoints"] == ["a:1", "b:2"]
    assert data["offered_msgs_per_s"] == 90.0 and data["peak_connections"] == 30 and data["hold_s"] == 60.0
    assert {"name": "message_p99_ms", "op": "<", "target": 50.0} in data["criteria"]


@pytest.mark.parametrize("change,words", [
    ({"schema": "loadgen-plan/0"}, "schema 'loadgen-plan/0' is not 'loadgen-plan/1'"),
    ({"vus": 10}, "unknown field(s) vus"),
    ({"rate": "fast"}, "rate 'fast' is not float"),
    ({"rate": 5000}, "--rate must be between 0 and 1,000 messages/s per user (got 5,000)"),
    ({"stages": ["5s"]}, "stage '5s' must be DURATION:TARGET"),
    ({"workers": 0}, "--workers must be between 1 and 1,024 (got 0)"),
    ({"criteria": [{"name": "p99", "op": "<", "target": 1}]}, "criterion"),
    ({"endpoints": ["a:99999"]}, "port 1-65535"),
    ({"local_ips": "127.0.0.2"}, "local_ips '127.0.0.2' is not list[str] | None"),
])
def test_a_plan_file_is_checked_by_the_same_rules_as_flags(change, words):
    data = {**flags("throughput", "--vus", "4", "--duration", "5s").to_dict(), **change}
    with pytest.raises(UsageError) as e:
        RunPlan.from_dict(data)
    assert words in str(e.value)


def test_a_plan_file_missing_a_field_is_refused():
    data = flags("cluster", "--vus", "4", "--duration", "5s").to_dict()
    del data["message_size"]
    with pytest.raises(UsageError, match="missing field"):
        RunPlan.from_dict(data)


def test_fleet_shares_add_up_and_each_agent_plan_is_its_share():
    plan = fleet()
    shares = [plan.agent_plan(g) for g in plan.generators]
    assert [s.stages[0].target for s in shares] == [334, 334, 333]
    assert sum(s.peak_connections for s in shares) == plan.peak_connections == 1001
    assert sum(s.offered_msgs_per_s for s in shares) == plan.offered_msgs_per_s == 2002.0
    # each agent's throughput criterion is 99 % of its own share of the offered load
    target = {c.name: c.target for c in shares[2].criteria}["throughput_per_s"]
    assert target == pytest.approx(333 * 2.0 * 0.99)
    assert all(s.mode == "peer" and s.heartbeat_file == "heartbeat" for s in shares)
    assert fleet(scenario="connection").agent_plan("g1").mode == "echo"


def test_fleet_plan_round_trips_and_reads_a_plan_json_written_before_it_had_a_schema():
    plan = fleet(criteria=["message_p99_ms<100"], start_at=1.5)
    assert FleetPlan.from_dict(json.loads(json.dumps({**plan.to_dict(), "groups": {}}))) == plan
    old = json.load(open(RECORDED_PLAN))
    assert "schema" not in old
    back = FleetPlan.from_dict(old)
    assert [str(s) for s in back.stages] == old["stages"] and back.offered_msgs_per_s == 200.0
    assert {g: [str(s) for s in back.share(g)] for g in back.generators} == old["shares"]


@pytest.mark.parametrize("change,words", [
    ({"criteria": ["bogus<1"]}, "criterion 'bogus<1'"),
    ({"min_generators": 0}, "--min-generators must be between 1 and 3 (got 0)"),
    ({"deadman_s": 1.0}, "--deadman-timeout must be at least 3s"),
    ({"stages": [Stage(5, 2)]}, "2 connections cannot be shared by 3 generators"),
    ({"scenario": "soak"}, "--scenario 'soak' is not one of"),
    ({"rate": -0.5}, "--rate must be between 0 and 1,000"),
])
def test_fleet_rules(change, words):
    with pytest.raises(UsageError) as e:
        fleet(**change)
    assert words in str(e.value)


def test_loadgen_run_plan_conflicts_with_plan_flags(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(flags("cluster", "--vus", "4", "--duration", "5s").to_dict()))
    r = run_loadgen("run", "--plan", str(path), "--rate", "2", "-e", "GATEWAY_PORT=1")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "loadgen: error: --plan FILE says the whole plan; it conflicts with --rate, -e GATEWAY_PORT"]
    r = run_loadgen("run", "--plan", str(tmp_path / "missing.json"))
    assert r.returncode == 2 and "--plan" in r.stderr and "No such file" in r.stderr
    path.write_text("{not json")
    r = run_loadgen("run", "--plan", str(path))
    assert r.returncode == 2 and "is not JSON" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_loadgen_run_plan_runs_the_file_and_copies_it_into_its_outputs(gateway, tmp_path):
    plan = flags("cluster", "--vus", "4", "--duration", "2s", "--rate", "2", "--workers", "1",
                 "--gateways", f"127.0.0.1:{gateway.port}", "--agent-id", "a1")
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan.to_dict()))
    r = run_loadgen("run", "--plan", str(path), "--out", str(tmp_path / "o"), "--quiet")
    assert r.returncode == 0, r.stderr
    ran = json.loads((tmp_path / "o" / "plan.json").read_text())
    assert ran == plan.to_dict() and TOKEN not in (tmp_path / "o" / "plan.json").read_text()
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["connections"]["established"] == 4 and summary["plan"]["offered_msgs_per_s"] == 8.0
