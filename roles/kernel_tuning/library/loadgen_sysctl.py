#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Persist sysctls to a sysctl.d file, apply them live, read them back, report refusals."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: loadgen_sysctl
short_description: Persist, apply and read back kernel parameters, reporting what the host refuses
description:
  - Writes the given settings to one file under /etc/sysctl.d (when O(persist=true)).
  - Writes each value that differs from the live value to /proc/sys, then reads it back.
    A host may refuse a write with an error, may ignore it silently (a read-only key in a
    container network namespace: C(sysctl -w) prints "Invalid argument" yet exits 0),
    or may not have the key at all. Each key gets one status, never a silent success.
  - Reports C(changed) only for what really changed (the file, or a live value now equal to
    the wanted one).
options:
  settings:
    description: Mapping of sysctl key (dotted) to wanted value. Multi-field values are compared field by field.
    type: dict
    required: true
  sysctl_file:
    description: File under /etc/sysctl.d that persists the settings.
    type: path
    default: /etc/sysctl.d/60-loadgen.conf
  persist:
    description: Write O(sysctl_file).
    type: bool
    default: true
  apply:
    description: Write differing live values. With V(false) the module only reads and reports (verification).
    type: bool
    default: true
author: loadgen
"""

RETURN = r"""
results:
  description: One entry per key with C(key), C(wanted), C(live), C(persisted) and C(status), one of
    V(live) (live value equals wanted), V(applied) (changed now), V(refused) (the host refused the
    write or kept another value), V(missing) (the key does not exist on this host), V(differs)
    (O(apply=false) and the live value differs).
  type: list
  returned: always
refused:
  description: Keys whose status is refused or missing.
  type: list
  returned: always
"""

import os

from ansible.module_utils.basic import AnsibleModule


def norm(value) -> str:
    return " ".join(str(value).split())


def proc_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def read_live(key: str):
    try:
        with open(proc_path(key)) as f:
            return norm(f.read())
    except OSError:
        return None


def read_persisted(path: str) -> dict:
    out = {}
    try:
        with open(path) as f:
            for line in f:
                line = line.split("#", 1)[0].strip()
                if "=" in line:
                    k, v = line.split("=", 1)
                    out[k.strip()] = norm(v)
    except OSError:
        pass
    return out


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "settings": {"type": "dict", "required": True},
            "sysctl_file": {"type": "path", "default": "/etc/sysctl.d/60-loadgen.conf"},
            "persist": {"type": "bool", "default": True},
            "apply": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    settings = {k: norm(v) for k, v in module.params["settings"].items()}
    path = module.params["sysctl_file"]
    changed = False
    if module.params["persist"]:
        content = "# Managed by Ansible (loadgen kernel_tuning role). Do not edit.\n" + "".join(
            f"{k} = {v}\n" for k, v in sorted(settings.items()))
        try:
            with open(path) as f:
                current = f.read()
        except OSError:
            current = None
        if current != content:
            changed = True
            if not module.check_mode:
                tmp = path + ".tmp"
                with open(tmp, "w") as f:
                    f.write(content)
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
    persisted = read_persisted(path)
    results = []
    for key, wanted in sorted(settings.items()):
        entry = {"key": key, "wanted": wanted, "persisted": persisted.get(key) == wanted}
        live = read_live(key)
        entry["live"] = live
        if live is None:
            entry["status"] = "missing"
            entry["error"] = "no such key on this host (%s absent)" % proc_path(key)
        elif live == wanted:
            entry["status"] = "live"
        elif not module.params["apply"] or module.check_mode:
            # Read-only: do not write. A key the kernel exposes read-only (0444, e.g. net.core.rmem_max
            # in a container's network namespace) is refused; a writable one is just not applied.
            if os.access(proc_path(key), os.W_OK):
                entry["status"] = "differs"
            else:
                entry["status"] = "refused"
                entry["error"] = "read-only on this host"
        else:
            error = None
            try:
                with open(proc_path(key), "w") as f:
                    f.write(wanted)
            except OSError as e:
                error = "%s: %s" % (type(e).__name__, e.strerror or e)
            after = read_live(key)
            entry["live"] = after
            if after == wanted:
                entry["status"] = "applied"
                changed = True
            else:
                entry["status"] = "refused"
                entry["error"] = error or "write accepted but the kernel kept %s" % after
        results.append(entry)
    refused = [r["key"] for r in results if r["status"] in ("refused", "missing")]
    module.exit_json(changed=changed, results=results, refused=refused)


if __name__ == "__main__":
    main()
