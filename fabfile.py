from fabric import task


# --- lab (loadgen/lab): keep these two tasks at the end of the file ---------------------------
@task(help={"hosts": "number of lab hosts (>= 3; default 7: 2 generators, 2 gateways, 3 infra)"})
def lab_up(c, hosts=7):
    """Boot the systemd-nspawn lab (root) and write inventory/lab/."""
    from loadgen.lab import lab_up as _lab_up

    _lab_up(int(hosts))


@task(help={"purge": "also delete the cached rootfs and built artifacts"})
def lab_down(c, purge=False):
    """Tear the lab down; idempotent and safe when nothing is up."""
    from loadgen.lab import lab_down as _lab_down

    _lab_down(purge=bool(purge))
