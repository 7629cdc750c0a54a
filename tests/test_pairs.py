"""Per node pair routing latency (loadgen/agent/pairs.py): the slot -> node formula and the side file."""

import csv
import json
from types import SimpleNamespace

import pytest

from loadgen.agent.pairs import COLUMNS, PairLatency, node_index, pair_summary
from loadgen.agent.worker import Worker


@pytest.mark.parametrize("pairing", ["cross-node", "same-node"])
def test_node_index_is_the_endpoint_the_worker_connects_to(pairing):
    eps = [("10.0.0.1", 8080), ("10.0.0.2", 8080), ("10.0.0.3", 8081)]
    for index in range(3):
        fake = SimpleNamespace(plan=SimpleNamespace(endpoints=eps, pairing=pairing, path="/ws"), index=index,
                               uids=[f"u{s}".encode() for s in range(12)],
                               url_bases=[f"ws://{h}:{p}/ws?user=" for h, p in eps], uid_prefix="u",
                               group_of=None)  # no traffic model: nobody joins a group at login
        for slot in range(12):
            host, port = eps[node_index(pairing, slot, index, len(eps))]
            assert Worker.url(fake, slot).startswith(f"ws://{host}:{port}/ws?"), (index, slot)
    # cross-node: partners always on different nodes; same-node: on the same one
    for slot in range(12):
        a, b = node_index(pairing, slot, 1, 3), node_index(pairing, slot ^ 1, 1, 3)
        assert (a != b) if pairing == "cross-node" else (a == b)


def test_pair_rows_merge_into_per_pair_percentiles(tmp_path):
    eps = [("gw-a.lab", 8080), ("gw-b.lab", 8080)]
    run = tmp_path / "run"
    (run / "agents").mkdir(parents=True)
    (run / "plan.json").write_text(json.dumps({"endpoints": ["gw-a.lab:8080", "gw-b.lab:8080"],
                                               "gateways": ["gw1", "gw2"]}))
    for agent, base_us in (("gen1", 1000), ("gen2", 3000)):
        pl = PairLatency(eps, "cross-node", 0)
        rows = []
        for second in range(2):
            for i in range(100):
                pl.record(0, base_us + i)  # slot 0 on gw-a receives from slot 1 on gw-b
                pl.record(1, 10 * (base_us + i))  # slot 1 on gw-b receives from gw-a
            rows += pl.rows(ts=second, agent=agent, worker=0)
        assert pl.rows(ts=9, agent=agent, worker=0) == []  # nothing received since the last flush
        d = run / "agents" / agent
        d.mkdir()
        with open(d / "pairs.csv", "w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS)
            w.writeheader()
            w.writerows(rows)
    summary = {(r["src_gateway"], r["dst_gateway"]): r for r in pair_summary(str(run))}
    assert set(summary) == {("gw2", "gw1"), ("gw1", "gw2")}
    b_to_a = summary[("gw2", "gw1")]
    assert b_to_a["count"] == 400 and b_to_a["src"] == "gw-b.lab:8080"
    # merged over both agents: half the values near 1 ms, half near 3 ms (2 significant digits)
    assert b_to_a["p50_ms"] == pytest.approx(1.1, rel=0.02)
    assert b_to_a["p99_ms"] == pytest.approx(3.1, rel=0.02)
    assert summary[("gw1", "gw2")]["p99_ms"] == pytest.approx(31, rel=0.02)


def test_no_side_file_gives_no_pairs(tmp_path):
    assert pair_summary(str(tmp_path)) == []
