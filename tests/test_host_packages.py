"""What a load-generator or gateway host installs: the package without its `controller` extra.

The loadgen_agent role gives hosts the project wheel and its own dependencies only (fab, Ansible and the pandas
report stay on the ops workstation). These tests run the agent and the gateway with the controller's packages
made unimportable, as on such a host, so a controller-only import on their path fails here, not on 100 hosts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import TOKEN, start_gateway

REPO = Path(__file__).resolve().parents[1]
CONTROLLER = {"fabric": ["fabric", "invoke", "paramiko"], "ansible-core": ["ansible"], "jinja2": ["jinja2"],
              "pandas": ["pandas"]}  # the extra's packages -> the modules a host must do without


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()


def test_the_controller_packages_are_an_extra_and_no_host_dependency():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert sorted(_name(r) for r in project["optional-dependencies"]["controller"]) == sorted(CONTROLLER)
    assert not {_name(r) for r in project["dependencies"]} & set(CONTROLLER)


def test_the_agent_and_the_gateway_run_without_the_controller_packages(tmp_path):
    blocker = tmp_path / "host"
    blocker.mkdir()
    modules = sorted(m for ms in CONTROLLER.values() for m in ms)
    # None in sys.modules makes `import pandas` raise ImportError in this process and in every Python it starts
    (blocker / "sitecustomize.py").write_text(f"import sys\nfor m in {modules!r}:\n    sys.modules[m] = None\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_HOST", "GATEWAY_PORT", "MESSAGE_SIZE")}
    env.update(PYTHONPATH=str(blocker), AUTH_TOKEN=TOKEN)
    check = subprocess.run([sys.executable, "-c", "import pandas"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "import of pandas halted" in check.stderr, check.stderr  # the blocker works

    gw = start_gateway(tmp_path, env_extra={"PYTHONPATH": str(blocker)})
    try:
        out = tmp_path / "run"
        r = subprocess.run([sys.executable, "-m", "loadgen", "run", "cluster", "--vus", "20", "--duration", "4s",
                            "--rate", "2", "--workers", "2", "--traffic", "chat-mix",
                            "--gateways", f"127.0.0.1:{gw.port}", "--gateway-metrics", gw.metrics_url,
                            "--out", str(out),  # latency is not this test's subject: a busy machine may judge it
                            "--criterion", "message_p99_ms=off", "--criterion", "message_success_rate=off"],
                           env=env, capture_output=True, text=True, timeout=120)
        assert gw.proc.poll() is None, (tmp_path / f"gateway-{gw.port}.log").read_text()
    finally:
        gw.stop()
    assert "Traceback" not in r.stderr and r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["connections"]["established"] == 20 and summary["messages"]["received"] > 0, summary
    assert summary["latency_ms"]["count"] > 0
    assert summary["gateway"]["gateway_rss_growth_bytes_per_min"] is not None  # its slope: numpy, a host package
