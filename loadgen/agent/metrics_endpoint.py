"""The agent's live `/metrics` (Prometheus text format) while a run is going.

Served by the agent process on the supervisor's event loop from the figures it already merges every second
(loadgen.agent.runner.Totals: every worker's rows, histograms merged, never averaged), so a scrape touches no
worker and no send path. Each generator serves its own; `fab cluster-test` writes Prometheus file_sd targets
for them (loadgen.fleet.metrics_targets), so 100 generators are 100 small scrapes, not one big merge on the
controller. Cost per scrape: bench/README.md ("live metrics").
"""

from __future__ import annotations

import asyncio

from loadgen.results import histogram as hdr
from loadgen.results.columns import FAIL_REASONS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# message counters: name -> (COUNTERS column, help)
MESSAGE_COUNTERS = {
    "sent": ("msgs_sent", "messages sent"),
    "delivered": ("msgs_received", "messages delivered to their recipient (peer) or echoed back"),
    "acked": ("msgs_acked", "messages acknowledged by the gateway"),
    "errors": ("msgs_errors", "messages answered with an error frame"),
    "send_failed": ("msgs_send_failed", "messages that could not be written to their connection"),
}


def _labels(base: dict, **extra) -> str:
    items = {**base, **extra}
    return ",".join(f'{k}="{_escape(str(v))}"' for k, v in items.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _histogram(out: list[str], name: str, help_text: str, hist, base: dict) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} histogram")
    cumulative, sum_s = hdr.cumulative_counts(hist)
    for bound, count in zip(hdr.PROMETHEUS_BOUNDS_S, cumulative):
        out.append(f'{name}_bucket{{{_labels(base, le=f"{bound:g}")}}} {count}')
    total = hist.get_total_count()
    out.append(f'{name}_bucket{{{_labels(base, le="+Inf")}}} {total}')
    out.append(f"{name}_sum{{{_labels(base)}}} {sum_s:.6f}")  # rate(_sum)/rate(_count): the mean
    out.append(f"{name}_count{{{_labels(base)}}} {total}")


def render(totals, active: int, connecting: int, planned: int, labels: dict) -> str:
    """The exposition text: counters since the start of the run, and the gauges of now."""
    c = totals.counts
    out = [
        "# HELP loadgen_connections_active connections open now",
        "# TYPE loadgen_connections_active gauge",
        f"loadgen_connections_active{{{_labels(labels)}}} {active}",
        "# HELP loadgen_connections_planned connections the plan's stages call for now (this agent's share)",
        "# TYPE loadgen_connections_planned gauge",
        f"loadgen_connections_planned{{{_labels(labels)}}} {planned}",
        "# HELP loadgen_connections_connecting handshakes in flight now",
        "# TYPE loadgen_connections_connecting gauge",
        f"loadgen_connections_connecting{{{_labels(labels)}}} {connecting}",
        "# HELP loadgen_connections_opened_total connections established",
        "# TYPE loadgen_connections_opened_total counter",
        f"loadgen_connections_opened_total{{{_labels(labels)}}} {c['connects_ok']}",
        "# HELP loadgen_connections_failed_total connection attempts that failed, by reason",
        "# TYPE loadgen_connections_failed_total counter",
    ]
    out += [f"loadgen_connections_failed_total{{{_labels(labels, reason=r)}}} {c['fail_' + r]}" for r in FAIL_REASONS]
    out += ["# HELP loadgen_disconnects_total connections lost that the plan did not close, by side",
            "# TYPE loadgen_disconnects_total counter",
            f"loadgen_disconnects_total{{{_labels(labels, by='gateway')}}} {c['disc_by_gateway']}",
            f"loadgen_disconnects_total{{{_labels(labels, by='lost')}}} {c['disc_lost']}"]
    out += ["# HELP loadgen_messages_total messages by outcome",
            "# TYPE loadgen_messages_total counter"]
    out += [f"loadgen_messages_total{{{_labels(labels, type=kind)}}} {c[col]}"
            for kind, (col, _) in MESSAGE_COUNTERS.items()]
    _histogram(out, "loadgen_message_latency_seconds",
               "delivery latency from the scheduled send time (no coordinated omission)", totals.latency, labels)
    _histogram(out, "loadgen_connect_seconds", "TCP + WebSocket handshake time", totals.connect, labels)
    return "\n".join(out) + "\n"


class MetricsServer:
    """A minimal HTTP/1.0 server for GET /metrics on the agent's event loop; `source()` gives the text."""

    def __init__(self, source, port: int, host: str = "0.0.0.0") -> None:
        self.source, self.port, self.host = source, port, host
        self.server: asyncio.AbstractServer | None = None
        self.scrapes = 0

    async def start(self) -> None:
        import numpy  # noqa: F401  imported now, not in the first scrape (a second on a busy machine)

        self.server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
            if path.split(b"?")[0] == b"/metrics":
                body, status = self.source().encode(), "200 OK"
                self.scrapes += 1
            else:
                body, status = b"not found: try /metrics\n", "404 Not Found"
            writer.write(f"HTTP/1.0 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + body)
            await asyncio.wait_for(writer.drain(), 10)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
