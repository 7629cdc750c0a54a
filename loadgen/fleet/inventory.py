"""The Ansible inventory, read through ansible-inventory itself (ranges, group_vars, vault: all as Ansible sees them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from loadgen.errors import UsageError

ROLES = ("generators", "gateways", "etcd", "kafka", "redis")


@dataclass
class Inventory:
    path: str
    hostvars: dict[str, dict]
    groups: dict[str, list[str]]

    def group(self, name: str) -> list[str]:
        return list(self.groups.get(name, []))

    def roles_of(self, host: str) -> list[str]:
        return [r for r in ROLES if host in self.groups.get(r, [])]

    def all_hosts(self) -> list[str]:
        seen: dict[str, None] = {}
        for role in ROLES:
            for h in self.groups.get(role, []):
                seen[h] = None
        return list(seen)


def _ansible_inventory_bin() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "ansible-inventory")
    return here if os.path.exists(here) else (shutil.which("ansible-inventory") or "ansible-inventory")


def _flatten(data: dict, group: str, seen: set) -> list[str]:
    if group in seen:
        return []
    seen.add(group)
    node = data.get(group, {})
    hosts = list(node.get("hosts", []))
    for child in node.get("children", []):
        hosts += _flatten(data, child, seen)
    return list(dict.fromkeys(hosts))


def load_inventory(path: str) -> Inventory:
    if not os.path.exists(path):
        raise UsageError(f"inventory {path} does not exist")
    try:
        proc = subprocess.run([_ansible_inventory_bin(), "-i", path, "--list"], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
                                                "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"inventory {path}: ansible-inventory failed to run ({exc})") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "ERROR" in ln or "error" in ln), lines[-1] if lines else "unknown error")
        raise UsageError(f"inventory {path} is not a valid Ansible inventory: {detail[:300]}")
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        raise UsageError(f"inventory {path}: ansible-inventory printed no JSON") from None
    hostvars = data.get("_meta", {}).get("hostvars", {})
    groups = {g: _flatten(data, g, set()) for g in data if g != "_meta"}
    inv = Inventory(path, hostvars, groups)
    for h in inv.all_hosts():
        inv.hostvars.setdefault(h, {})
    return inv
