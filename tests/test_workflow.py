""".github/workflows/load-test.yml cannot rot: its `run:` steps, in order, against inventory/local.

What differs from CI is set through the workflow's own env: INVENTORY=inventory/local, PLAYBOOK_ARGS=--list-hosts
(ansible-playbook plans the play without reconfiguring this machine), a shorter load in CLUSTER_TEST_ARGS, a
recorded demo run as BASELINE. The Install step is this test's venv (it is on PATH; installing again would fetch
from PyPI). GITHUB_ENV works as in Actions: what a step appends is in the next steps' environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from xml.etree import ElementTree as ET

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = os.path.join(ROOT, ".github", "workflows", "load-test.yml")
BASELINE = os.path.join(ROOT, "tests", "data", "compare", "demo-plan-1")


def expand(value: str, contexts: dict) -> str:
    """${{ a.b.c }} expressions: the contexts this workflow uses; anything else is an error of the test."""
    def one(m):
        key = m.group(1).strip()
        assert key in contexts, f"unknown expression {key}"
        return contexts[key]

    return re.sub(r"\$\{\{(.*?)\}\}", one, str(value))


def test_the_workflow_runs_on_a_schedule_and_on_demand_and_its_steps_run_in_order(tmp_path):
    wf = yaml.safe_load(open(WORKFLOW))
    on = wf[True]  # YAML 1.1 reads the key `on` as True
    assert on["schedule"][0]["cron"].split()[4] != "*" and "workflow_dispatch" in on  # weekly, and on demand
    job = wf["jobs"]["load-test"]
    steps = job["steps"]
    names = [s.get("name", s.get("uses")) for s in steps]
    assert any("actions/upload-artifact" in s.get("uses", "") for s in steps)

    contexts = {"github.event.inputs.cluster_test_args": "", "runner.temp": str(tmp_path),
                "secrets.STAGING_GATEWAY_TOKEN": "", "secrets.STAGING_VAULT_PASSWORD": "vault-password-for-the-test"}
    env = {k: v for k, v in os.environ.items() if k != "AUTH_TOKEN"}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    env.update({k: expand(v, contexts) for k, v in job["env"].items()})
    assert env["INVENTORY"] and env["BASELINE"]
    baseline = tmp_path / "baseline"
    shutil.copytree(BASELINE, baseline)
    env.update(INVENTORY="inventory/local", BASELINE=str(baseline), REPORTS=str(tmp_path / "reports"),
               PLAYBOOK_ARGS="--list-hosts", GITHUB_ENV=str(tmp_path / "github_env"),
               CLUSTER_TEST_ARGS="--stage 3s:400 --stage 12s:400 --stage 2s:0 --rate 2 "
                                 "--criterion message_p99_ms=off --criterion connect_p95_ms=off")
    (tmp_path / "github_env").write_text("")

    ran, codes, failed = [], {}, False
    for step, name in zip(steps, names):
        if "run" not in step:
            continue
        cond = str(step.get("if", "success()"))
        if failed and "failure()" not in cond and "always()" not in cond:
            continue
        if name == "Install":  # this test's venv has the repository installed (editable), with the controller's
            assert "pip install -e '.[controller]'" in step["run"]  # packages (fab, ansible-playbook: steps below)
            continue
        step_env = {**env, **{k: expand(v, contexts) for k, v in step.get("env", {}).items()}}
        r = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=ROOT, env=step_env, capture_output=True,
                           text=True, timeout=600)
        ran.append(name)
        codes[name] = r.returncode
        print(f"\n--- {name}: exit {r.returncode}\n{(r.stdout + r.stderr)[-1500:]}", file=sys.stderr)
        for line in (tmp_path / "github_env").read_text().splitlines():
            key, _, value = line.partition("=")
            env[key] = value
        if r.returncode:
            failed = True

    prepare = next(n for n in ran if n.startswith("Prepare"))
    compare = next(n for n in ran if n.startswith("Compare"))
    assert ran == [n for n in names if n in ran] and ran[-2:] == ["Cluster test", compare], ran
    assert codes[prepare] == 0 and codes["Cluster test"] == 0, codes
    # the comparison ran and judged (0: no regression, 99: one; which one is the machine's load, not the example's)
    assert codes[compare] in (0, 99), codes
    run_dir = env["RUN_DIR"]
    assert os.path.basename(run_dir) in os.listdir(env["REPORTS"])
    assert json.load(open(os.path.join(run_dir, "summary.json")))["status"] == "PASS"
    assert os.path.exists(os.path.join(run_dir, f"compare-{os.path.basename(str(baseline))}.html"))
    assert ET.parse(os.path.join(env["REPORTS"], "junit.xml")).getroot().tag == "testsuite"
    # the artifacts name what the steps produced
    paths = [expand(s["with"]["path"], {"env.RUN_DIR": run_dir, "env.REPORTS": env["REPORTS"]})
             for s in steps if "upload-artifact" in s.get("uses", "")]
    files = [p.strip() for text in paths for p in text.splitlines() if p.strip()]
    assert run_dir in files and os.path.join(run_dir, "summary.json") in files
    assert all(os.path.exists(p) for p in files), files
