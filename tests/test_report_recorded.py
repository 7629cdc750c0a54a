"""The report of a run recorded with the code before the plan became one RunPlan (tests/data/run-recorded-on-main:
a 40-connection `fab cluster-test`, 2 generators, 2 gateways) is the same report now. expected-summary.json is
that report as main's code builds it without this change (rebuild it that way when the report itself changes)."""

import json
import os
import shutil

from loadgen.report import build_report

RECORDED = os.path.join(os.path.dirname(__file__), "data", "run-recorded-on-main")
# written by the build itself: its time, its duration and where it wrote
VOLATILE = {"generated_at", "analysis_seconds", "report", "summary_json"}


def test_report_of_a_recorded_run_is_unchanged(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(RECORDED, run)
    expected = json.loads((run / "expected-summary.json").read_text())
    summary = json.loads(json.dumps(build_report(str(run)), default=str))
    assert {k: v for k, v in summary.items() if k not in VOLATILE} == \
        {k: v for k, v in expected.items() if k not in VOLATILE}
