"""The lab's size and its up-front checks (no root, nothing booted): `--generators N` is `--hosts N+5`, and a
lab the /24, the memory or the disk cannot hold is refused in one line before anything is touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadgen.errors import UsageError
from loadgen.lab import LabConfig, hosts_for, layout
from loadgen.lab.core import preflight

REPO = Path(__file__).resolve().parents[1]


def plan(hosts: int) -> list[dict]:
    return layout(hosts)


def test_generators_n_is_hosts_n_plus_5_with_the_usual_infra_and_gateways():
    hosts = layout(hosts_for(20))
    names = [h["name"] for h in hosts]
    assert names[:5] == ["infra1", "infra2", "infra3", "gw1", "gw2"]
    assert [h["name"] for h in hosts if h["groups"] == ["generators"]] == [f"gen{i}" for i in range(1, 21)]
    assert layout(7) == layout(hosts_for(2))
    with pytest.raises(UsageError):
        hosts_for(0)
    with pytest.raises(UsageError):
        layout(2)


def test_preflight_refuses_what_the_subnet_cannot_address():
    cfg = LabConfig(lab_dir=Path("/nonexistent/lab"), subnet="10.213.9")
    preflight(cfg, plan(hosts_for(239)), mem_available_mb=10**6, disk_free_mb=10**7)  # .11-.254: 244 hosts
    with pytest.raises(UsageError, match=r"do not fit in 10\.213\.9\.0/24 .*at most 244 hosts, 239 generators"):
        preflight(cfg, plan(hosts_for(240)), mem_available_mb=10**6, disk_free_mb=10**7)


def test_preflight_refuses_what_memory_or_disk_cannot_hold():
    cfg = LabConfig(lab_dir=Path("/nonexistent/lab"))
    hundred = plan(hosts_for(100))  # 3 x 900 + 2 x 400 + 100 x 100 MB = 13,500 MB
    preflight(cfg, hundred, mem_available_mb=17_000, disk_free_mb=50_000)
    with pytest.raises(UsageError, match=r"105 lab hosts need ~13,500 MB of memory .*16,000 MB available"):
        preflight(cfg, hundred, mem_available_mb=16_000, disk_free_mb=50_000)
    with pytest.raises(UsageError, match=r"105 lab hosts need ~47,250 MB of disk"):
        preflight(cfg, hundred, mem_available_mb=17_000, disk_free_mb=40_000)


def test_fab_lab_up_refuses_a_bad_size_in_one_line_before_touching_anything():
    env = {**os.environ, "LOADGEN_LAB_DIR": "/nonexistent/loadgen-lab-test", "LOADGEN_LAB_BRIDGE": "lgbr99",
           "LOADGEN_LAB_INVENTORY": "/nonexistent/inventory-lab"}
    fab = str(Path(sys.executable).parent / "fab")
    for args, words in ((["--generators", "300"], "do not fit in"), (["--hosts", "7", "--generators", "3"], "not both"),
                        (["--generators", "x"], "a whole number")):
        r = subprocess.run([fab, "-r", str(REPO), "lab-up", *args], capture_output=True, text=True, env=env,
                           timeout=60)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not Path("/nonexistent/loadgen-lab-test").exists()


def test_a_scale_labs_gateways_weigh_as_much_as_the_generators_they_serve():
    from loadgen.lab.core import CPU_SHARES, gateway_shares

    assert gateway_shares(100, 2) == 50 * CPU_SHARES  # each gateway: its 50 generators' sessions
    assert gateway_shares(20, 2) == 10 * CPU_SHARES
    assert gateway_shares(2, 2) is None and gateway_shares(1, 1) is None  # the default lab: weights unchanged
    assert gateway_shares(5, 0) is None
    assert gateway_shares(1000, 2) == 262144  # the kernel's largest cpu.shares
