"""A lab of real Debian hosts on one machine: systemd-nspawn containers on a bridge.

``lab_up(hosts=7)`` (``hosts_for(generators)`` gives the size for N generators) builds (once, cached) a Debian bookworm rootfs, starts a bridge and a
mirror-only HTTP proxy, boots *hosts* containers with systemd + sshd, each on an overlayfs
clone of the rootfs with its own address, SSH host key and machine-id, and writes an Ansible
inventory to ``inventory/lab/``.  ``lab_down()`` removes all of it again (the rootfs and the
built artifacts stay cached unless ``purge=True``).

Everything runs as root on the controller; playbooks/README.md ("The lab") lists the steps and
why.  Nothing outside the lab dir, the bridge, the cgroups named after the lab
and ``inventory/lab/`` is touched.
"""

from loadgen.lab.core import LabConfig, hosts_for, lab_down, lab_status, lab_up, layout, write_scale_overrides

__all__ = ["LabConfig", "hosts_for", "lab_down", "lab_status", "lab_up", "layout", "write_scale_overrides"]
