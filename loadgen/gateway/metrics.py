"""Gateway metrics in Prometheus text exposition format (names from the spec)."""

from __future__ import annotations

import bisect
import os
import time

import psutil

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds=LATENCY_BUCKETS_S) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def exposition(self, name: str) -> list[str]:
        lines, running = [], 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            lines.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {self.sum:.6f}")
        lines.append(f"{name}_count {self.count}")
        return lines


class GatewayMetrics:
    def __init__(self, node_id: str, groups=None) -> None:
        self.node_id = node_id
        self.groups = groups  # loadgen.gateway.groups.Groups: rendered with the rest
        self.active = 0
        self.connections = {}  # result -> count (accepted, rejected_auth, rejected_full, ...)
        self.disconnections = {}  # reason -> count
        self.messages_received = 0
        self.messages_sent = 0  # frames of type msg/echo delivered to clients
        self.errors = {}  # kind -> count
        self.latency = Histogram()
        self.started = time.time()
        self._proc = psutil.Process(os.getpid())

    def count(self, table: dict, key: str, n: int = 1) -> None:
        table[key] = table.get(key, 0) + n

    def render(self) -> str:
        node = f'node="{self.node_id}"'
        lines = [
            "# HELP im_gateway_active_connections WebSocket sessions open now.",
            "# TYPE im_gateway_active_connections gauge",
            f"im_gateway_active_connections{{{node}}} {self.active}",
            "# HELP im_gateway_connections_total Handshakes by result.",
            "# TYPE im_gateway_connections_total counter",
        ]
        lines += [f'im_gateway_connections_total{{{node},result="{k}"}} {v}' for k, v in sorted(self.connections.items())]
        lines += ["# HELP im_gateway_disconnections_total Closed sessions by reason.",
                  "# TYPE im_gateway_disconnections_total counter"]
        lines += [f'im_gateway_disconnections_total{{{node},reason="{k}"}} {v}' for k, v in sorted(self.disconnections.items())]
        lines += [
            "# HELP im_gateway_messages_received_total Client frames accepted.",
            "# TYPE im_gateway_messages_received_total counter",
            f"im_gateway_messages_received_total{{{node}}} {self.messages_received}",
            "# HELP im_gateway_messages_sent_total Messages delivered to clients (msg and echo frames).",
            "# TYPE im_gateway_messages_sent_total counter",
            f"im_gateway_messages_sent_total{{{node}}} {self.messages_sent}",
            "# HELP im_gateway_errors_total Errors by kind.",
            "# TYPE im_gateway_errors_total counter",
        ]
        lines += [f'im_gateway_errors_total{{{node},kind="{k}"}} {v}' for k, v in sorted(self.errors.items())]
        lines += ["# HELP im_gateway_message_latency Seconds from a frame's arrival to its delivery write.",
                  "# TYPE im_gateway_message_latency histogram"]
        lines += self.latency.exposition("im_gateway_message_latency")
        if self.groups is not None:
            lines += self.groups.render(node)
        with self._proc.oneshot():
            mem = self._proc.memory_info()
            cpu = self._proc.cpu_times()
            fds = self._proc.num_fds()
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        lines += [
            "# TYPE process_resident_memory_bytes gauge",
            f"process_resident_memory_bytes {mem.rss}",
            "# TYPE process_cpu_seconds_total counter",
            f"process_cpu_seconds_total {cpu.user + cpu.system:.3f}",
            "# TYPE process_open_fds gauge",
            f"process_open_fds {fds}",
            "# TYPE process_max_fds gauge",
            f"process_max_fds {soft}",
            "# TYPE process_start_time_seconds gauge",
            f"process_start_time_seconds {self.started:.3f}",
        ]
        return "\n".join(lines) + "\n"


def parse_exposition(text: str) -> dict[str, float]:
    """Flat {'name{labels}': value} of a Prometheus text page (sums no labels away)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out
