"""The CSV row schemas (docs/data-format.md): the agent writes these columns, the report reads them."""

from __future__ import annotations

# login: the upgrade succeeded, the protocol profile's login steps did not (docs/protocols.md)
FAIL_REASONS = ("refused", "timeout", "auth", "rejected", "reset", "no_ports", "fd_limit", "login", "other")
COUNTERS = (
    "connects_ok", *(f"fail_{r}" for r in FAIL_REASONS),
    "disconnects", "disc_by_gateway", "disc_lost", "closes", "churns",
    "msgs_sent", "msgs_received", "msgs_acked", "msgs_errors", "msgs_send_failed", "msgs_skipped",
    "bytes_sent", "bytes_received", "pings", "pongs",
)
# connect_hdr: TCP + WebSocket upgrade; login_hdr: a protocol profile's login steps after it
HISTOGRAMS = ("latency_hdr", "connect_hdr", "session_hdr", "login_hdr")
BY_TYPE = "by_type"  # per message type counts and latency (loadgen.results.bytype); '' without a traffic model
# timeseries.csv: a row per second per worker
COLUMNS = ("ts", "agent", "worker", "elapsed_s", "phase", "target", "active", "connecting", "send_lag_ms",
           "connects_failed", *COUNTERS, *HISTOGRAMS, BY_TYPE)
# gateway_metrics.csv: a row per second per scraped /metrics URL
GATEWAY_COLUMNS = ("ts", "url", "active_connections", "rss_bytes", "cpu_seconds", "open_fds", "max_fds",
                   "messages_sent_total", "errors_total")
