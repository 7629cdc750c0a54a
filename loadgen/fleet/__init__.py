"""Across hosts: read the Ansible inventory, start, watch, collect and probe — one code path for
this machine (ansible_connection=local) and for hundreds of SSH hosts."""
