"""Optional: the agent samples the gateways' /metrics once a second (memory, CPU, connections).

This is what lets a standalone `loadgen run` judge the spec's gateway-side criteria (memory per
connection, CPU < 80 %, no leak). Without --gateway-metrics those criteria are 'not measured'.
"""

from __future__ import annotations

import threading
import time

COLUMNS = ("ts", "url", "active_connections", "rss_bytes", "cpu_seconds", "open_fds", "max_fds",
           "messages_sent_total", "errors_total")


def sample(url: str, timeout: float = 2.0) -> dict | None:
    # imported here: urllib.request (http.client, email) and psutil (via the metrics module) cost the
    # agent ~2.5 MB, needed only with --gateway-metrics
    import urllib.request

    from loadgen.gateway.metrics import parse_exposition

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (operator-given URL)
            flat = parse_exposition(resp.read().decode())
    except (OSError, ValueError):
        return None

    def total(prefix: str) -> float:
        return sum(v for k, v in flat.items() if k == prefix or k.startswith(prefix + "{"))

    return {"ts": round(time.time(), 3), "url": url,
            "active_connections": total("im_gateway_active_connections"),
            "rss_bytes": total("process_resident_memory_bytes"), "cpu_seconds": total("process_cpu_seconds_total"),
            "open_fds": total("process_open_fds"), "max_fds": total("process_max_fds"),
            "messages_sent_total": total("im_gateway_messages_sent_total"),
            "errors_total": total("im_gateway_errors_total")}


class Scraper(threading.Thread):
    def __init__(self, urls: list[str], on_row) -> None:
        super().__init__(daemon=True, name="gateway-scrape")
        self.urls, self.on_row = urls, on_row
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for url in self.urls:
                row = sample(url)
                if row is not None:
                    self.on_row(row)
            self.halt.wait(1.0)


def _slope_per_min(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    var = sum((p[0] - mx) ** 2 for p in points)
    if var == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in points) / var * 60.0


def gateway_figures(rows: list[dict], hold: tuple[float, float] | None) -> dict:
    """Per-node derived figures and the worst node's value for each criterion."""
    by_url: dict[str, list[dict]] = {}
    for r in rows:
        by_url.setdefault(r["url"], []).append(r)
    mem_per_conn, cpu_peak, growth = [], [], []
    for series in by_url.values():
        series.sort(key=lambda r: r["ts"])
        base = series[0]
        peak = max(series, key=lambda r: r["active_connections"])
        if peak["active_connections"] > base["active_connections"]:
            mem_per_conn.append((peak["rss_bytes"] - base["rss_bytes"])
                                / (peak["active_connections"] - base["active_connections"]))
        window = min(5, len(series) - 1)  # CPU over 5-sample windows (fewer on a short run)
        for a, b in zip(series, series[window:]) if window > 0 else ():
            if b["ts"] > a["ts"]:
                cpu_peak.append((b["cpu_seconds"] - a["cpu_seconds"]) / (b["ts"] - a["ts"]) * 100.0)
        if hold:
            slope = _slope_per_min([(r["ts"], r["rss_bytes"]) for r in series if hold[0] <= r["ts"] <= hold[1]])
            if slope is not None:
                growth.append(slope)
    return {
        "gateway_memory_per_connection_bytes": max(mem_per_conn) if mem_per_conn else None,
        "gateway_cpu_percent": max(cpu_peak) if cpu_peak else None,
        "gateway_rss_growth_bytes_per_min": max(growth) if growth else None,
        "gateway_nodes_sampled": len(by_url),
    }
