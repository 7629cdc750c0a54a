"""The gateway figures, from one node's samples (agent scrapes of /metrics or the controller's probes).

The agent (gateway_metrics.csv rows) and the report (per-node frames) both call these, so a run judged
by `loadgen run --gateway-metrics` and by the report uses the same formulas.
"""

from __future__ import annotations

CPU_WINDOW = 5  # samples: CPU is a rate over this many samples (fewer on a short run)


def memory_per_connection(conns, rss) -> float | None:
    """(RSS at peak connections - RSS at the first sample) / connections added; None when none were added."""
    if not len(conns):
        return None
    peak = max(range(len(conns)), key=lambda i: conns[i])  # the first sample at the peak
    if conns[peak] > conns[0]:
        return float((rss[peak] - rss[0]) / (conns[peak] - conns[0]))
    return None


def cpu_window_percent(ts, cpu_seconds) -> list[float | None]:
    """Per sample: % of one core over the last CPU_WINDOW samples of a cumulative CPU-seconds counter."""
    window = min(CPU_WINDOW, len(ts) - 1)
    out: list[float | None] = [None] * len(ts)
    for i in range(window, len(ts)) if window > 0 else ():
        if ts[i] > ts[i - window]:
            out[i] = (cpu_seconds[i] - cpu_seconds[i - window]) / (ts[i] - ts[i - window]) * 100.0
    return out


def rss_regression(ts, rss) -> dict | None:
    """Least squares RSS = a + b*t over the given (hold) samples: slope in bytes/min and R^2; None under 3 points."""
    import numpy as np  # only at the end of a run: the agent does not load numpy while it runs

    ts, rss = np.asarray(ts, dtype=float), np.asarray(rss, dtype=float)
    ok = np.isfinite(ts) & np.isfinite(rss)
    ts, rss = ts[ok], rss[ok]
    if len(ts) < 3 or np.ptp(ts) <= 0:
        return None
    minutes = (ts - ts[0]) / 60.0
    slope, intercept = np.polyfit(minutes, rss, 1)
    fit = intercept + slope * minutes
    ss_tot = float(((rss - rss.mean()) ** 2).sum())
    r2 = 1.0 - float(((rss - fit) ** 2).sum()) / ss_tot if ss_tot > 0 else 0.0
    return {"slope_bytes_per_min": float(slope), "r2": r2, "points": int(len(ts)), "minutes": float(minutes[-1]),
            "rss_start": float(fit[0]), "rss_end": float(fit[-1])}


def worst(nodes: list[dict], key: str, sub: str | None = None) -> tuple[float | None, dict | None]:
    """The worst (highest) node's figure and the node: a criterion holds for every node or fails."""
    values = [(n[key][sub] if sub else n[key], n) for n in nodes if n.get(key) is not None]
    values = [(v, n) for v, n in values if v is not None]
    return max(values, key=lambda x: x[0]) if values else (None, None)


def criteria_figures(nodes: list[dict]) -> dict:
    """The criteria's gateway metrics from per-node figures (memory_per_connection, cpu_peak, leak)."""
    return {
        "gateway_memory_per_connection_bytes": worst(nodes, "memory_per_connection")[0],
        "gateway_cpu_percent": worst(nodes, "cpu_peak")[0],
        "gateway_rss_growth_bytes_per_min": worst(nodes, "leak", "slope_bytes_per_min")[0],
        "gateway_nodes_sampled": len(nodes),
    }


def scraped_figures(rows: list[dict], hold: tuple[float, float] | None) -> dict:
    """The agent's gateway figures from its gateway_metrics.csv rows: per URL, then the worst node. CPU is the
    peak rate over CPU_WINDOW samples."""
    by_url: dict[str, list[dict]] = {}
    for r in rows:
        by_url.setdefault(r["url"], []).append(r)
    nodes = []
    for series in by_url.values():
        series.sort(key=lambda r: r["ts"])
        ts = [r["ts"] for r in series]
        cpu = [v for v in cpu_window_percent(ts, [r["cpu_seconds"] for r in series]) if v is not None]
        in_hold = [r for r in series if hold and hold[0] <= r["ts"] <= hold[1]]
        nodes.append({
            "memory_per_connection": memory_per_connection([r["active_connections"] for r in series],
                                                           [r["rss_bytes"] for r in series]),
            "cpu_peak": max(cpu) if cpu else None,
            "leak": rss_regression([r["ts"] for r in in_hold], [r["rss_bytes"] for r in in_hold]) if hold else None,
        })
    return criteria_figures(nodes)
