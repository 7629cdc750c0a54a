"""Shared fixtures: a real reference gateway on 127.0.0.1, and the loadgen CLI as a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

TOKEN = "test-token-0123456789"

# The lab modules in build order: test_lab.py builds and deploys the 7-host lab (its tests are the build's
# checks) and hands it over to test_cluster_mode.py instead of taking it down (one lab build per run, not two);
# test_fleet_scale.py then builds its own 22-host lab and checks that lab_down leaves nothing behind.
LAB_ORDER = ("test_lab.py", "test_cluster_mode.py", "test_fleet_scale.py")
LAB_HANDOVER = ".handed-over"  # a file in the lab's inventory dir: the lab is now the next module's to take down


def pytest_collection_modifyitems(items):
    slots = [i for i, item in enumerate(items) if item.path.parent.name == "lab" and item.path.name in LAB_ORDER]
    ordered = sorted((items[i] for i in slots), key=lambda item: LAB_ORDER.index(item.path.name))  # stable
    for i, item in zip(slots, ordered):
        items[i] = item


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_free_ports(avoid: int = 0) -> int:
    """A port p with p + 1 free too (a --processes 2 gateway serves metrics on p and p + 1)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            p = a.getsockname()[1]
            if p >= 65535 or avoid in (p, p + 1):
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", p + 1))
                except OSError:
                    continue
                return p
    raise RuntimeError("no two consecutive free ports")


class RunningGateway:
    def __init__(self, proc, port, metrics_port, token):
        self.proc, self.port, self.metrics_port, self.token = proc, port, metrics_port, token

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return r.read().decode()

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_gateway(tmp_path, config_text: str | None = None, token: str = TOKEN, node_id: str = "test-gw",
                  extra_args=(), env_extra=None) -> RunningGateway:
    port, mport = free_port(), free_port()
    args = [sys.executable, "-m", "loadgen", "gateway", "--port", str(port), "--metrics-port", str(mport),
            "--node-id", node_id, *extra_args]
    if config_text is not None:
        cfg = tmp_path / f"config-{port}.yaml"
        cfg.write_text(config_text)
        args += ["--config", str(cfg)]
    log = open(tmp_path / f"gateway-{port}.log", "w")
    proc = subprocess.Popen(args, env={**os.environ, "AUTH_TOKEN": token, **(env_extra or {})}, stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited: {(tmp_path / f'gateway-{port}.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return RunningGateway(proc, port, mport, token)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("gateway did not start listening")


@pytest.fixture
def gateway(tmp_path):
    gw = start_gateway(tmp_path)
    yield gw
    gw.stop()


def run_loadgen(*args, env_extra=None, timeout=120, token=TOKEN) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("AUTH_TOKEN", "GATEWAY_HOST", "GATEWAY_PORT", "MESSAGE_SIZE")}
    if token is not None:
        env["AUTH_TOKEN"] = token
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "loadgen", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
