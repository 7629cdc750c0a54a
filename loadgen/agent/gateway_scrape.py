"""Optional: the agent samples the gateways' /metrics once a second (memory, CPU, connections).

This is what lets a standalone `loadgen run` judge the spec's gateway-side criteria (memory per
connection, CPU < 80 %, no leak). Without --gateway-metrics those criteria are 'not measured'.
"""

from __future__ import annotations

import threading
import time

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

