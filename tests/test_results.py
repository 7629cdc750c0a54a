"""The results package: one schema, one set of formulas and one verdict for agent and report."""

from __future__ import annotations

import json
import os
import shutil

from loadgen.report import build_report

RECORDED = os.path.join(os.path.dirname(__file__), "data", "run-200-cluster")
# fields that differ between two builds of the same run by nature: build time and output paths
BUILD_FIELDS = ("generated_at", "analysis_seconds", "report", "summary_json")


def test_report_of_a_recorded_run_is_unchanged(tmp_path):
    """A real run (`fab cluster-test --connections 200 --duration 10s`, recorded before the results package
    existed) rebuilds into the summary.json the report wrote then."""
    run_dir = str(tmp_path / "run")
    shutil.copytree(RECORDED, run_dir)
    with open(os.path.join(RECORDED, "summary.expected.json")) as f:
        expected = json.load(f)
    rebuilt = build_report(run_dir)
    with open(os.path.join(run_dir, "summary.json")) as f:
        written = json.load(f)
    for field in BUILD_FIELDS:
        expected.pop(field), rebuilt.pop(field), written.pop(field)
    assert written == expected
    assert rebuilt == expected

