#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Read the live open-files limit of running services from /proc/PID/limits."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: loadgen_nofile
short_description: Check the live RLIMIT_NOFILE of systemd services and of a login session
description:
  - For each systemd unit, reads the configured C(LimitNOFILE) (C(systemctl show)) and the live
    limits of its main process from C(/proc/PID/limits).
  - Also checks PID 1 (its limits are the default for every unit) and this module's own process,
    which runs in an SSH login session (limits.d via pam_limits).
  - Measures the host's cap by trying to raise this process's hard limit to O(want).
  - Classifies each as V(ok), V(host-refused) (configured, but the host capped the live value),
    V(not-configured) or V(not-running). It never changes anything.
options:
  want:
    description: Wanted soft and hard limit.
    type: int
    required: true
  units:
    description: systemd units whose main process to check.
    type: list
    elements: str
    default: []
  limits_file:
    description: limits.d file whose nofile lines configure login sessions.
    type: path
    default: /etc/security/limits.d/90-loadgen-nofile.conf
  system_conf:
    description: systemd drop-in that sets DefaultLimitNOFILE.
    type: path
    default: /etc/systemd/system.conf.d/90-loadgen-nofile.conf
author: loadgen
"""

RETURN = r"""
host_cap:
  description: Highest hard limit this host lets root set (equals O(want) when nothing caps it).
  type: int
  returned: always
processes:
  description: One entry per checked process with C(name), C(pid), C(configured), C(soft), C(hard), C(status), C(message).
  type: list
  returned: always
"""

import os
import re
import subprocess

from ansible.module_utils.basic import AnsibleModule


def live_limits(pid):
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return (int(soft) if soft.isdigit() else 1 << 62, int(hard) if hard.isdigit() else 1 << 62)
    raise RuntimeError("no 'Max open files' in /proc/%d/limits" % pid)


def host_cap(want):
    """Try to raise the hard limit in a child process: the answer is what the host allows."""
    code = (
        "import resource,sys\n"
        "s,h=resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "try:\n resource.setrlimit(resource.RLIMIT_NOFILE,(s,%d)); print(%d)\n"
        "except (ValueError, OSError): print(h)\n" % (want, want)
    )
    out = subprocess.run(["python3", "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def classify(name, pid, configured, want, cap):
    entry = {"name": name, "pid": pid, "configured": configured}
    if configured is None or configured < want:
        entry.update(status="not-configured",
                     message="%s: not configured (configured nofile %s, wanted %d)" % (name, configured, want))
    if pid is None:
        entry.setdefault("status", "not-running")
        entry.setdefault("message", "%s: not running, live limit unknown" % name)
        return entry
    soft, hard = live_limits(pid)
    entry.update(soft=soft, hard=hard)
    if "status" in entry:
        entry["message"] += " (live soft %d, hard %d)" % (soft, hard)
    elif soft >= want and hard >= want:
        entry.update(status="ok", message="%s (pid %d): live %d/%d" % (name, pid, soft, hard))
    elif hard < want and cap < want:
        entry.update(status="host-refused",
                     message="%s (pid %d): host refused %d (live hard limit %d, soft %d)" % (name, pid, want, hard, soft))
    else:
        entry.update(status="not-applied",
                     message="%s (pid %d): configured %d but live %d/%d although the host allows %d: restart it"
                     % (name, pid, want, soft, hard, cap))
    return entry


def file_nofile(path, pattern):
    try:
        with open(path) as f:
            vals = [int(m) for m in re.findall(pattern, f.read(), re.M)]
    except OSError:
        return None
    return min(vals) if vals else None


def main():
    module = AnsibleModule(
        argument_spec={
            "want": {"type": "int", "required": True},
            "units": {"type": "list", "elements": "str", "default": []},
            "limits_file": {"type": "path", "default": "/etc/security/limits.d/90-loadgen-nofile.conf"},
            "system_conf": {"type": "path", "default": "/etc/systemd/system.conf.d/90-loadgen-nofile.conf"},
        },
        supports_check_mode=True,
    )
    want = module.params["want"]
    cap = host_cap(want)
    procs = []
    default_conf = file_nofile(module.params["system_conf"], r"^DefaultLimitNOFILE=(?:\d+:)?(\d+)\s*$")
    procs.append(classify("systemd manager (DefaultLimitNOFILE)", 1, default_conf, want, cap))
    for unit in module.params["units"]:
        out = subprocess.run(["systemctl", "show", "-p", "MainPID", "-p", "LimitNOFILE", "-p", "LoadState",
                              "--", unit], capture_output=True, text=True)
        props = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
        if props.get("LoadState") != "loaded":
            procs.append({"name": unit, "pid": None, "configured": None, "status": "not-running",
                          "message": "%s: unit not installed" % unit})
            continue
        lim = props.get("LimitNOFILE", "")
        configured = 1 << 62 if lim == "infinity" else (int(lim) if lim.isdigit() else None)
        pid = int(props.get("MainPID", "0") or 0) or None
        procs.append(classify(unit, pid, configured, want, cap))
    session_conf = file_nofile(module.params["limits_file"], r"^\S+\s+(?:hard|-)\s+nofile\s+(\d+)\s*$")
    procs.append(classify("ssh login session (limits.d)", os.getpid(), session_conf, want, cap))
    module.exit_json(changed=False, host_cap=cap, processes=procs)


if __name__ == "__main__":
    main()
