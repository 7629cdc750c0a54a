"""`fab compare` on recorded real runs (tests/data/compare/README.md): two runs of one plan do not regress;
the same plan against a gateway slowed by a real 2 ms per send (testing.delivery_delay) does."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from loadgen.report import compare_runs
from loadgen.report.compare import MIN_INTERVALS, rank_test

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "data", "compare")
FAB = os.path.join(ROOT, ".venv", "bin", "fab")


def run(name: str) -> str:
    return os.path.join(FIXTURES, name)


@pytest.mark.parametrize("a, b", [("same-plan-1", "same-plan-2"), ("same-plan-2", "same-plan-1"),
                                  ("demo-plan-1", "demo-plan-2"), ("demo-plan-2", "demo-plan-1"),
                                  ("slowed-2ms", "same-plan-1"), ("slowed-2ms", "same-plan-2")])
def test_same_plan_or_faster_candidate_does_not_regress(a, b, tmp_path):
    res = compare_runs(run(a), run(b), str(tmp_path / "c.html"))
    assert res["regressions"] == [], res["regressions"]
    rows = {f["name"]: f for f in res["figures"]}
    # the noise is real: the headline P99s differ by far more than the tolerance, and still no regression
    if {a, b} == {"same-plan-1", "same-plan-2"}:
        assert abs(rows["latency_p99_ms"]["change"]) > 50
        assert rows["connect_p95_ms"]["note"].startswith("not judged: 1 / 1 intervals")
    if (a, b) == ("demo-plan-1", "demo-plan-2"):
        # the machine got busier between these runs: every second of the second run sits a little higher, which a
        # rank test alone calls certain; the shift is smaller than the second-to-second spread, so it is noise
        p95 = rows["latency_p95_ms"]
        assert p95["change"] > 100 and p95["confidence"] > 0.999 and 0 < p95["shift"] < p95["spread"]
        assert p95["note"].startswith("a typical interval is worse by 3.14, within the intervals' spread")


@pytest.mark.parametrize("baseline, slowed", [("same-plan-1", "slowed-2ms"), ("same-plan-2", "slowed-2ms"),
                                              ("demo-plan-1", "demo-plan-slowed-2ms")])
def test_slowed_gateway_regresses_on_latency(baseline, slowed, tmp_path):
    res = compare_runs(run(baseline), run(slowed), str(tmp_path / "c.html"))
    rows = {f["name"]: f for f in res["figures"]}
    assert "latency_p50_ms" in res["regressions"]
    p50 = rows["latency_p50_ms"]
    assert p50["confidence"] > 0.9999 and p50["n_a"] >= MIN_INTERVALS and p50["n_b"] >= MIN_INTERVALS
    assert 1.5 < p50["shift"] < 3.0  # the 2 ms the gateway holds every send, seen in a typical interval
    assert p50["shift"] > p50["spread"]  # ... more than the second-to-second spread of the median
    # nothing that the delay cannot explain
    assert set(res["regressions"]) <= {"latency_p50_ms", "latency_p95_ms", "latency_p99_ms"}


def test_fab_compare_exit_codes_and_printed_figures(tmp_path):
    for name in ("same-plan-1", "same-plan-2", "slowed-2ms"):  # fab compare writes its page into the candidate
        shutil.copytree(run(name), tmp_path / name)
    same = subprocess.run([FAB, "-r", ROOT, "compare", str(tmp_path / "same-plan-1"), str(tmp_path / "same-plan-2")],
                          capture_output=True, text=True, timeout=120)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "no regression" in same.stdout.splitlines()[0]
    slow = subprocess.run([FAB, "-r", ROOT, "compare", str(tmp_path / "same-plan-1"), str(tmp_path / "slowed-2ms")],
                          capture_output=True, text=True, timeout=120)
    assert slow.returncode == 99, slow.stdout + slow.stderr
    lines = slow.stdout.splitlines()
    assert "candidate 20261201-041241-cluster-dc3b against baseline 20261201-041130-cluster-c454: REGRESSION" in lines[0]
    p50 = next(line for line in lines if line.strip().startswith("Message latency P50"))
    assert "0.643 ms -> 2.721 ms" in p50 and "confidence >99.99%" in p50 and "19 / 19 intervals" in p50
    assert os.path.exists(tmp_path / "slowed-2ms" / "compare-same-plan-1.html")
    bad = subprocess.run([FAB, "-r", ROOT, "compare", str(tmp_path / "same-plan-1"), str(tmp_path / "slowed-2ms"),
                          "--confidence", "2"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "confidence" in bad.stderr


def test_rank_test_known_values():
    a, b = np.arange(5.0), np.arange(5.0) + 10
    # complete separation of 5 vs 5: exact one-sided p = 1/252; the normal approximation is within a factor 2
    assert 1 / 252 < rank_test(a, b) < 2 / 252
    assert rank_test(b, a) > 0.99
    assert rank_test(np.ones(6), np.ones(6)) == 1.0  # all tied: no evidence
    same = rank_test(np.r_[1, 2, 3, 4, 5, 6.0], np.r_[1, 2, 3, 4, 5, 6.0])
    assert 0.4 < same < 0.6


def test_page_draws_both_runs_from_their_planned_start(tmp_path):
    """Each run's chart axis begins at its own first probe sample (5 s and 4 s before these two starts):
    the page moves the candidate so both planned starts coincide."""
    import html
    import json
    import re

    res = compare_runs(run("same-plan-1"), run("demo-plan-1"), str(tmp_path / "c.html"))
    assert any("plans differ in stages" in w for w in res["warnings"])
    page = open(res["report"]).read()
    svg = next(s for s in re.findall(r'<svg class="chart".*?</svg>', page, re.S) if 'aria-label="Active connections' in s)
    data = json.loads(html.unescape(re.search(r'data-values="([^"]*)"', svg).group(1)))
    first = {k: next(i for i, v in enumerate(y) if v is not None) for k, y in data["y"].items()}
    assert first["A (baseline)"] == first["B (candidate)"] == 5
