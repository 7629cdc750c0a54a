"""python -m loadgen.lab up [--hosts N | --generators N] | down [--purge] | status | kafka-dist DIR | cpu [--seconds S] [--json]"""

import argparse
import json
import sys
from pathlib import Path

from loadgen.errors import UsageError
from loadgen.lab import hosts_for, lab_down, lab_status, lab_up
from loadgen.lab.kafka_dist import build_kafka_archive, sha256


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadgen.lab", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="boot the nspawn lab and write inventory/lab")
    size = up.add_mutually_exclusive_group()
    size.add_argument("--hosts", type=int, default=7, help="lab hosts (>= 3; default 7)")
    size.add_argument("--generators", type=int, help="generator hosts; the same as --hosts N+5 (3 infra, 2 gateways)")
    down = sub.add_parser("down", help="tear the lab down (idempotent)")
    down.add_argument("--purge", action="store_true", help="also delete the cached rootfs and artifacts")
    sub.add_parser("status")
    kd = sub.add_parser("kafka-dist", help="assemble the Kafka archive from Maven Central jars")
    kd.add_argument("out_dir", type=Path)
    cpu = sub.add_parser("cpu", help="CPU per lab host and part (gateway, agent, kafka, etcd, redis) over a window")
    cpu.add_argument("--seconds", type=float, default=30.0)
    cpu.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.cmd == "up":
        try:
            state = lab_up(hosts_for(a.generators) if a.generators is not None else a.hosts)
        except UsageError as exc:
            print(f"python -m loadgen.lab: error: {exc}", file=sys.stderr)
            return exc.exit_code
        print(json.dumps({"hosts": state["hosts"], "timings": state.get("timings")}, indent=1))
    elif a.cmd == "down":
        lab_down(purge=a.purge)
    elif a.cmd == "cpu":
        from loadgen.lab.cpu import format_table, measure
        from loadgen.lab.core import LabConfig

        result = measure(a.seconds, LabConfig().cgroup_name)
        print(json.dumps(result, indent=1) if a.json else format_table(result))
    elif a.cmd == "status":
        print(json.dumps(lab_status(), indent=1))
    else:
        p = build_kafka_archive(a.out_dir)
        print(f"{p} sha256:{sha256(p)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
