"""Prometheus file_sd targets for the agents' live /metrics during a run (docs/live.md).

`fab cluster-test` writes them into the run directory (prometheus-targets.json) and, when the inventory has a
`prometheus` group (roles/prometheus), onto each Prometheus host, where the role's `loadgen-agents` scrape job
reads them; at the end of the run the file is emptied, so Prometheus stops scraping agents that are gone.
"""

from __future__ import annotations

import json

from loadgen.errors import UsageError
from loadgen.plan.options import parse_int

DEFAULT_PORT = 9464  # the OpenTelemetry Prometheus exporter's port: the usual port of a load agent's metrics
DEFAULT_FILE_SD = "/etc/prometheus/file_sd/loadgen-agents.json"  # roles/prometheus: prometheus_agents_file_sd


def metrics_port(hostvars: dict, generator: str) -> int:
    """The generator's loadgen_metrics_port (inventory), 9464 when not set, 0: off."""
    value = hostvars.get("loadgen_metrics_port", DEFAULT_PORT)
    port = parse_int(value, f"loadgen_metrics_port of {generator}")
    if not 0 <= port <= 65535:
        raise UsageError(f"loadgen_metrics_port of {generator} must be between 0 and 65535 (got {port})")
    return port


def targets(inv, ports: dict[str, int]) -> list[dict]:
    """One file_sd group per generator. No target labels: the agent's own run_id, generator and scenario
    labels say it (a target label of the same name would rename them to exported_*)."""
    return [{"targets": [f"{inv.hostvars[g].get('ansible_host', g)}:{port}"], "labels": {}}
            for g, port in ports.items() if port]


def file_sd_path(hostvars: dict) -> str:
    return str(hostvars.get("prometheus_agents_file_sd", DEFAULT_FILE_SD))


def to_text(groups: list[dict]) -> str:
    return json.dumps(groups, indent=2) + "\n"
