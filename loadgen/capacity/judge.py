"""One step's figures and verdict from the fleet's rows of that step only (histograms merged, never averaged):
connections over the whole step (its ramp opens them), messages and latency over its hold window."""

from __future__ import annotations

from dataclasses import dataclass

from loadgen.report.hist import Hist
from loadgen.results import figures
from loadgen.results.columns import COUNTERS
from loadgen.results.verdict import evaluate


CONNECT_CRITERIA = ("connection_success_rate", "connect_p95_ms")


@dataclass
class Window:
    start: float  # the step's load was asked for (epoch s)
    hold: float  # its judged window begins (ramp and settling over)
    end: float


def _sum(rows: list[dict]) -> dict:
    counts = {name: 0 for name in COUNTERS}
    for r in rows:
        for name in COUNTERS:
            counts[name] += r[name]
    return counts


def _merged(rows: list[dict], column: str) -> Hist:
    h = Hist()
    for r in rows:
        if r[column]:
            h.add_encoded(r[column])
    return h


def per_worker_last(rows: list[dict], key: str) -> dict:
    out = {}
    for r in sorted(rows, key=lambda r: r["ts"]):
        out[(r["agent"], r["worker"])] = r[key]
    return out


LATE_MS = 1000  # a send this late is a generator behind its schedule


def expected_workers(seen: set, rows: list[dict], workers_alive: dict[str, int]) -> set:
    """Every (agent, worker) a step should hear from: those that wrote rows so far, and every worker its agent
    reports alive (workers 0..n-1). A worker starved from its start writes no row at all; with two workers the
    other's rows alone are half the agent's, which the rows check does not call short (a CI run named no cause)."""
    return (set(seen) | {(r["agent"], r["worker"]) for r in rows}
            | {(agent, w) for agent, n in workers_alive.items() for w in range(n)})


def send_lag(rows: list[dict], workers, hold_s: float) -> dict:
    """Per agent, its most-behind worker: send-schedule lag at the end of the window, its growth over it, the share
    of its rows with sends >= 1 s late, and how many rows it wrote of the window's seconds (a worker short of
    CPU writes its rows late too)."""
    by_worker: dict = {w: [] for w in workers}
    for r in sorted(rows, key=lambda r: r["ts"]):
        by_worker.setdefault((r["agent"], r["worker"]), []).append(r["send_lag_ms"])
    out: dict = {}
    for (agent, worker), lags in by_worker.items():
        lag = {"worker": worker, "end_ms": lags[-1] if lags else None,
               "growth_ms": lags[-1] - lags[0] if lags else None,
               "late_share": round(sum(1 for v in lags if v >= LATE_MS) / len(lags), 3) if lags else None,
               "rows": len(lags), "seconds": int(hold_s)}
        prev = out.get(agent)
        if prev is None or _behind(lag) > _behind(prev):
            out[agent] = lag
    return out


def _behind(lag: dict) -> float:
    """How far behind a worker is, for picking an agent's worst one: missing rows count as lateness."""
    missing = 1 - lag["rows"] / max(1, lag["seconds"])
    return max(missing, lag["late_share"] or 0.0) * 1e6 + (lag["end_ms"] or 0)


def hold_rate(step_rows: list[dict], hold: float) -> float:
    """Messages received per second over the hold: per worker, its hold rows' deliveries over the time those rows
    cover (from its last row before the hold to its last row in it), summed over workers. The window's edges fall
    between a worker's per-second rows, so dividing by the window's wall seconds can drop or add a row (a step
    read 7 of 8 rows as 700 msgs/s of 800 offered); a worker writing its rows late covers more time with each."""
    before: dict = {}
    held: dict = {}
    for r in sorted(step_rows, key=lambda r: r["ts"]):
        k = (r["agent"], r["worker"])
        if r["ts"] <= hold:
            before[k] = r["elapsed_s"]
        else:
            first, _, n = held.get(k, (r["elapsed_s"], None, 0))
            held[k] = (first, r["elapsed_s"], n + r["msgs_received"])
    rate = 0.0
    for k, (first, last, n) in held.items():
        start = before.get(k, first - 1.0)  # no row before the hold in this step: its first row covers a second
        rate += n / max(last - start, 1e-3)
    return rate


def step_figures(rows: list[dict], win: Window, criteria, offered_per_s: float, target_connections: int,
                 workers=()) -> dict:
    """workers: every (agent, worker) seen so far (one silent in this step is behind, or gone)."""
    step_rows = [r for r in rows if win.start < r["ts"] <= win.end]
    hold_rows = [r for r in step_rows if r["ts"] > win.hold]
    conn_counts, hold_counts = _sum(step_rows), _sum(hold_rows)
    hold_s = max(1.0, win.end - win.hold)
    connections = figures.connection_figures(conn_counts)
    connections["active_end"] = sum(per_worker_last(step_rows, "active").values())
    connections["target"] = target_connections
    messages = figures.message_figures(hold_counts, hold_rate(step_rows, win.hold))
    messages["offered_per_s"] = offered_per_s
    connect = _merged(step_rows, "connect_hdr").percentiles_ms()
    latency = _merged(hold_rows, "latency_hdr").percentiles_ms()
    session = Hist().percentiles_ms()
    metrics = figures.criteria_metrics(connections, messages, connect, latency, session, {})
    if not connections["attempted"] and connections["active_end"] >= target_connections:
        # nothing to connect in this step (the rate dimension holds its connections): nothing to judge them by
        criteria = [c for c in criteria if c.name not in CONNECT_CRITERIA]
    rows_out = evaluate(criteria, metrics)
    by_agent: dict = {}
    for r in hold_rows:
        by_agent[r["agent"]] = by_agent.get(r["agent"], 0) + 1
    return {"rows": len(step_rows), "hold_rows": len(hold_rows), "hold_rows_by_agent": by_agent, "window": vars(win),
            "connections": connections, "messages": messages, "connect_ms": connect, "latency_ms": latency,
            "send_lag": send_lag(hold_rows, workers, hold_s), "criteria": rows_out,
            "passed": bool(rows_out) and all(r["passed"] is True for r in rows_out)}
