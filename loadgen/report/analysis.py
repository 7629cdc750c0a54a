"""From a loaded run directory to figures: merged histograms, verdict, time series, hosts, diagnostics.

Rules (issue 3): percentiles come from merged HDR histograms, never averages of percentiles; totals are
recomputed from every agent's timeseries.csv (a dead agent has no summary.json, but its rows count);
a dead, unreachable or missing agent makes the run PARTIAL; leak detection is a least-squares
regression of gateway RSS over the hold phase against `criteria.LEAK_BYTES_PER_MIN`.
"""

from __future__ import annotations

import io
import math
import time
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from loadgen import __version__
from loadgen.agent.pairs import pair_summary
from loadgen.plan import criteria as crit
from loadgen.report import capacity, diagnostics, hosts
from loadgen.report.bins import ROW_S, bin_centers, row_bins, sample_bins
from loadgen.results import bytype, figures, gateway
from loadgen.results.columns import COUNTERS, FAIL_REASONS
from loadgen.results.text import print_summary
from loadgen.results.verdict import criteria_passed, evaluate, verdict
from loadgen.report.hist import Hist, decoder
from loadgen.report.load import RunData, run_agents, unreachable_hosts

MAX_POINTS = 600  # time-series resolution: bins are widened so a chart has at most this many points
NICE_BINS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
IMBALANCE_WARN = 1.2  # max/mean of connections per node above this is flagged


def _num(v):
    """JSON-safe float (None for NaN/inf/None)."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# ---------------------------------------------------------------- window


def _window(run: RunData, ts: pd.DataFrame | None) -> dict:
    planned = _num(run.plan.get("start_at"))
    if planned is None:
        starts = [_num((a.summary or {}).get("planned_start_at")) for a in run.agents.values()]
        starts = [s for s in starts if s]
        planned = min(starts) if starts else None
    first = float(ts["ts"].min()) - 1.0 if ts is not None and len(ts) else None
    last = float(ts["ts"].max()) if ts is not None and len(ts) else None
    if run.samples is not None and len(run.samples):
        first = min(x for x in (first, float(run.samples["ts"].min())) if x is not None)
        last = max(x for x in (last, float(run.samples["ts"].max())) if x is not None)
    t0 = planned if planned is not None else first
    if t0 is None:
        return {"t0": None, "end": None, "bin_s": 1, "nbins": 0, "hold": None, "planned_start": planned}
    earliest = min(t0, first) if first is not None else t0  # nothing plots before zero
    end = max(last if last is not None else earliest + 1, earliest + 1)
    span = end - earliest
    bin_s = next((b for b in NICE_BINS if span / b <= MAX_POINTS), int(math.ceil(span / MAX_POINTS)))
    # whole bins before the planned start (loadgen.report.bins): the agents' seconds then fill bins exactly
    t0 -= math.ceil((t0 - earliest) / bin_s) * bin_s
    span = end - t0
    hold = None
    if ts is not None and len(ts):
        h = ts.loc[ts["phase"] == "hold", "ts"]
        if len(h):
            hold = (float(h.min()), float(h.max()))
    return {"t0": t0, "end": end, "bin_s": bin_s, "nbins": int(math.ceil(span / bin_s)) + 1, "hold": hold,
            "planned_start": planned}


# ---------------------------------------------------------------- histograms


def merge_histograms(df: pd.DataFrame, column: str, hosts_: list[str], per_bin: bool, nbins: int) -> dict:
    """Total, per-agent and (optionally) per-bin percentiles of one histogram column: one decode per cell."""
    dec = decoder()
    total = Hist()
    per_agent = {h: Hist() for h in hosts_}
    out = {"total": total, "agents": per_agent, "bad_cells": 0}
    if df is None or not len(df):
        return out
    df = df[df[column].notna() & (df[column] != "")]  # empty cell = empty histogram: skip before the loop
    cells = df[column].to_numpy()
    agent_idx = df["host_idx"].to_numpy()
    agent_counts = [per_agent[h].counts for h in hosts_]
    if not per_bin:
        for cell, ai in zip(cells, agent_idx):
            try:
                dec.add(total.counts, cell, agent_counts[ai])
            except Exception:  # noqa: BLE001 - a damaged cell is counted, not fatal
                out["bad_cells"] += 1
        return out
    bins = df["bin"].to_numpy()
    order = np.argsort(bins, kind="stable")
    bins, cells, agent_idx = bins[order], cells[order], agent_idx[order]
    cuts = np.flatnonzero(np.diff(bins)) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [len(bins)]))
    pct = {k: np.full(nbins, np.nan) for k in ("p50", "p95", "p99", "max")}
    for s, e in zip(starts, ends):
        h = Hist()
        for i in range(s, e):
            try:
                dec.add(h.counts, cells[i], agent_counts[agent_idx[i]])
            except Exception:  # noqa: BLE001
                out["bad_cells"] += 1
        if h.total:
            p = h.percentiles_ms((50, 95, 99))
            b = bins[s]
            for k in pct:
                pct[k][b] = p[k]
            total.add(h)
    out["per_bin"] = pct
    return out


# ---------------------------------------------------------------- criteria


def criteria_for(run: RunData, scenario: str, hold_s: float, offered: float) -> tuple[list[crit.Criterion], str]:
    """plan.json 'criteria' wins; else the agents' (throughput target summed); else the spec's defaults."""
    defs = run.plan.get("criteria")
    if isinstance(defs, list) and defs and all(isinstance(d, dict) for d in defs):
        out = []
        for d in defs:
            label = crit.label_of(d["name"]) if isinstance(d.get("name"), str) else None
            if label and d.get("op") in ("<", ">"):
                out.append(crit.Criterion(d["name"], d["op"], float(d["target"]), d.get("label") or label))
        if out:
            return out, "plan.json"
    if run.plan.get("scenario") and run.plan.get("stages") and (defs is None or isinstance(defs, list)):
        overrides = [str(d) for d in defs or []]
        try:  # the fleet plan: the spec's defaults at cluster scale plus the operator's --criterion overrides
            out = crit.apply_overrides(crit.default_criteria(scenario, hold_s=hold_s, offered_per_s=offered), overrides)
            return out, f"spec defaults for '{scenario}' at cluster scale" + (f" + overrides {', '.join(overrides)}" if overrides else "")
        except Exception:  # noqa: BLE001 - unreadable overrides: fall back to what the agents evaluated
            pass
    rows_by_agent = [a.summary["criteria"] for a in run.agents.values()
                     if a.summary and isinstance(a.summary.get("criteria"), list)]
    if rows_by_agent:
        out = []
        for r in rows_by_agent[0]:
            target = float(r["target"])
            if r["name"] == "throughput_per_s":  # each agent's target is its own share of the offered load
                target = sum(float(x["target"]) for rows in rows_by_agent for x in rows if x["name"] == r["name"])
            out.append(crit.Criterion(r["name"], r["op"], target, r.get("label") or crit.LABELS.get(r["name"], r["name"])))
        return out, "agents' summary.json (throughput target summed over agents)"
    return crit.default_criteria(scenario, hold_s=hold_s, offered_per_s=offered), f"spec defaults for '{scenario}'"


# ---------------------------------------------------------------- plan facts


def _plan_facts(run: RunData) -> dict:
    """What was planned, read from the plan (never re-derived): plan.json's fleet plan, else the agents' plans."""
    from loadgen.errors import UsageError
    from loadgen.plan.cluster import FleetPlan
    from loadgen.plan.runplan import stages_to_json

    try:  # criteria are criteria_for's business; the figures here are the plan's load
        fleet = FleetPlan.from_dict({**run.plan, "criteria": []}) if run.plan else None
    except UsageError:
        fleet = None
    if fleet is not None:
        return {"stages": stages_to_json(fleet.stages), "hold_s": fleet.hold_s, "total_s": fleet.total_s,
                "peak": float(fleet.peak_connections), "rate": float(fleet.rate),
                "offered_msgs_per_s": float(fleet.offered_msgs_per_s) or None, "message_size": fleet.message_size}
    # no fleet plan (an agent's own output directory, or a damaged plan.json): each agent's plan as it wrote it
    plans = [a.summary["plan"] for a in run.agents.values() if a.summary and isinstance(a.summary.get("plan"), dict)]
    first = plans[0] if plans else {}
    return {"stages": list(first.get("stages") or run.plan.get("stages") or []), "hold_s": _num(first.get("hold_s")) or 0.0,
            "total_s": _num(first.get("total_s")),
            "peak": sum(_num(p.get("peak_connections")) or 0 for p in plans) or None,
            "rate": _num(first.get("rate_per_user")),
            "offered_msgs_per_s": sum(_num(p.get("offered_msgs_per_s")) or 0 for p in plans) or None,
            "message_size": first.get("message_size")}


# ---------------------------------------------------------------- gateway nodes


def gateway_frame(run: RunData) -> tuple[pd.DataFrame | None, str]:
    """Per-node gateway samples ts,node,conns,rss,cpu_percent,fds: probes/samples.csv, else agents' scrapes."""
    s = run.samples
    if s is not None and len(s):
        g = s[s["metric"].str.startswith("gateway_")]
        if len(g):
            wide = g.pivot_table(index=["host", "ts"], columns="metric", values="value", aggfunc="last").reset_index()
            wide = wide.rename(columns={"host": "node", "gateway_active_connections": "conns", "gateway_rss_bytes": "rss",
                                        "gateway_cpu_percent": "cpu_percent", "gateway_fds": "fds"})
            for c in ("conns", "rss", "cpu_percent", "fds"):
                if c not in wide.columns:
                    wide[c] = np.nan
            return wide[["ts", "node", "conns", "rss", "cpu_percent", "fds"]].sort_values(["node", "ts"]), "probes/samples.csv"
    frames = []
    for host, a in run.agents.items():
        if a.gateway_metrics is not None and len(a.gateway_metrics):
            frames.append(a.gateway_metrics.assign(_agent=host))
    if not frames:
        return None, "not collected"
    gm = pd.concat(frames, ignore_index=True)
    # several agents may scrape the same URL: keep the agent with the most samples of it
    best = gm.groupby(["url", "_agent"]).size().reset_index(name="n").sort_values("n").groupby("url").tail(1)
    gm = gm.merge(best[["url", "_agent"]], on=["url", "_agent"]).sort_values(["url", "ts"])
    gm["node"] = gm["url"].map(lambda u: urlparse(u).netloc or u)
    # CPU over 5-sample windows (fewer on a short run), as the agent computes it
    gm["cpu_percent"] = pd.concat([
        pd.Series(gateway.cpu_window_percent(g["ts"].to_numpy(dtype=float), g["cpu_seconds"].to_numpy(dtype=float)),
                  index=g.index, dtype=float)
        for _, g in gm.groupby("url")])
    out = gm.rename(columns={"active_connections": "conns", "rss_bytes": "rss", "open_fds": "fds"})
    return out[["ts", "node", "conns", "rss", "cpu_percent", "fds"]], "agents' gateway_metrics.csv"


def gateway_nodes(gw: pd.DataFrame | None, hold) -> list[dict]:
    if gw is None or not len(gw):
        return []
    nodes = []
    for node, g in gw.groupby("node", sort=True):
        g = g.sort_values("ts")
        conns = g["conns"].to_numpy(dtype=float)
        rss = g["rss"].to_numpy(dtype=float)
        row = {"node": node, "samples": int(len(g)), "peak_connections": _num(np.nanmax(conns)) if np.isfinite(conns).any() else None,
               "rss_max": _num(np.nanmax(rss)) if np.isfinite(rss).any() else None,
               "fds_max": _num(g["fds"].max()), "memory_per_connection": None, "cpu_peak": None, "leak": None,
               "hold_connections": None}
        finite = np.isfinite(conns) & np.isfinite(rss)
        if finite.sum() >= 2:
            row["memory_per_connection"] = gateway.memory_per_connection(conns[finite], rss[finite])
        cpu = g["cpu_percent"].astype(float)
        if cpu.notna().any():
            row["cpu_peak"] = _num(cpu.rolling(gateway.CPU_WINDOW, min_periods=1).mean().max())
            row["cpu_mean"] = _num(cpu.mean())
        if hold:
            in_hold = g[(g["ts"] >= hold[0]) & (g["ts"] <= hold[1])]
            row["leak"] = gateway.rss_regression(in_hold["ts"].to_numpy(dtype=float), in_hold["rss"].to_numpy(dtype=float))
            if len(in_hold) and in_hold["conns"].notna().any():
                row["hold_connections"] = _num(in_hold["conns"].mean())
        nodes.append(row)
    return nodes


# ---------------------------------------------------------------- agents


def _agent_state(host: str, a, facts: dict, unreachable: dict) -> tuple[str, str | None]:
    """done | dead | unreachable | missing | incomplete, and why."""
    state = str(facts.get("state") or "").lower()
    if host in unreachable:
        return "unreachable", unreachable[host]
    if state in ("dead", "unreachable"):
        return state, facts.get("error") or f"run.json says {state}"
    if a.path is None or (a.timeseries is None and a.summary is None):
        why = facts.get("collect_error") or facts.get("error")
        return "missing", f"no output collected from this generator{': ' + str(why) if why else ''}"
    if a.summary is None:
        return "dead", "no summary.json: the agent ended without summarizing (killed or crashed)"
    if not a.summary.get("complete", True) or a.summary.get("workers_dead"):
        why = a.summary.get("stopped_by") or f"workers died: {a.summary.get('workers_dead')}"
        return "incomplete", f"agent summary not complete ({why})"
    return "done", None


def _skew(a, facts: dict, planned) -> dict:
    """Actual start - planned start: from the agent's summary, else (a dead agent) from its rows' ts - elapsed_s."""
    s = a.summary or {}
    worker_skews = [v for v in (s.get("start_skew_ms") or {}).values() if _num(v) is not None]
    skew = _num(facts.get("start_skew_ms"))
    planned = s.get("planned_start_at") or planned
    if skew is None and s.get("started_at") and planned:
        skew = (float(s["started_at"]) - float(planned)) * 1000.0
    df = a.timeseries
    if skew is None and planned and df is not None and len(df):
        starts = (df["ts"] - df["elapsed_s"]).groupby(df["worker"]).min()
        skew = (float(starts.min()) - float(planned)) * 1000.0
        worker_skews = [(float(v) - float(planned)) * 1000.0 for v in starts]
    return {"start_skew_ms": skew, "worker_skew_max_ms": max(worker_skews) if worker_skews else None,
            "started_at": _num(s.get("started_at")) or (float(planned) + skew / 1000.0 if skew is not None and planned else None)}


# ---------------------------------------------------------------- main


def _protocol(run: RunData) -> dict:
    """The protocol profile the agents spoke: the fleet plan's entry, else an agent's summary, else reference."""
    entry = run.plan.get("protocol")
    if isinstance(entry, dict) and entry.get("name"):
        return {"name": entry["name"], "digest": entry.get("digest")}
    for a in run.agents.values():
        p = (a.summary or {}).get("protocol")
        if isinstance(p, dict) and p.get("name"):
            return {"name": p["name"], "digest": p.get("digest")}
    return {"name": "reference", "digest": None}


def analyze(run: RunData) -> dict:
    """Everything the report shows: a run's rows -> figures -> criteria -> verdict -> summary."""
    started = time.perf_counter()
    ts = _rows(run)
    win = _window(run, ts)
    pf = _plan_facts(run)
    scenario = str(run.plan.get("scenario") or next((a.summary.get("scenario") for a in run.agents.values() if a.summary), "") or "cluster")
    if ts is not None:
        ts["bin"] = row_bins(ts["ts"], win)
    hosts_ = list(run.agents)
    lat = merge_histograms(ts, "latency_hdr", hosts_, True, win["nbins"])
    con = merge_histograms(ts, "connect_hdr", hosts_, True, win["nbins"])
    ses = merge_histograms(ts, "session_hdr", hosts_, False, win["nbins"])
    log_in = merge_histograms(ts, "login_hdr", hosts_, False, win["nbins"])  # a protocol profile's login steps

    counts = {k: int(ts[k].sum()) if ts is not None else 0 for k in COUNTERS}
    throughput, hold_workers = _throughput(ts, counts)
    connections = figures.connection_figures(counts)
    types = _types(run, ts, win)
    messages = figures.message_figures(counts, throughput,
                                       sum(f["owed"] for f in types["figures"].values()) if types["figures"] else None)
    connect = con["total"].percentiles_ms((50, 95, 99))
    latency = lat["total"].percentiles_ms((50, 95, 99))
    session = ses["total"].percentiles_ms((50, 95, 99))
    login = log_in["total"].percentiles_ms((50, 95, 99))
    gw, gw_source = gateway_frame(run)
    nodes = gateway_nodes(gw, win["hold"])
    gateway_figures = gateway.criteria_figures(nodes)

    metrics = figures.criteria_metrics(connections, messages, connect, latency, session, gateway_figures)
    metrics |= bytype.criteria_metrics(types["figures"])
    criteria, criteria_source = criteria_for(run, scenario, pf["hold_s"], pf["offered_msgs_per_s"] or 0.0)
    rows = evaluate(criteria, metrics)
    evidence = _evidence(run, connections, messages, connect, latency, session, hold_workers, pf, nodes, gw_source)
    for r in rows:
        r["evidence"] = evidence.get(r["name"], "")

    series = _series(ts, win, lat, con, gw, gw_source)
    if types["series"]:
        series["by_type"] = types["series"]
    agents_out = _agents(run, series, lat, con, win)
    problems = _run_problems(run, ts, agents_out, lat["bad_cells"] + con["bad_cells"] + ses["bad_cells"])
    aborted = run.run.get("aborted")  # fab cluster-test's --abort-on tripped: the threshold, value and time
    status, partial = verdict(rows, problems, aborted)
    cap = capacity.read(run.path, run.problems)
    if cap is not None:  # a capacity search: each step was judged on its own; its result is the run's verdict
        status, partial = cap["status"], list(cap["partial_reasons"]) + partial
        criteria_source = f"the whole run, for information ({criteria_source}): a capacity search judges each step"

    dist = _distribution(nodes, agents_out, gw_source)
    host_info = hosts.analyze_hosts(run, win, nodes)
    stop = run.run.get("stopped_by")
    summary = {
        "schema": "loadgen-report/1",
        "status": status, "passed": status == "PASS", "complete": not problems,
        "partial_reasons": partial,
        "run_id": run.run_id, "scenario": scenario, "agent": "cluster", "version": __version__,
        "generated_at": time.time(),
        "started_at": min((r["started_at"] for r in agents_out.values() if r["started_at"]), default=None),
        "ended_at": max((r["ended_at"] for r in agents_out.values() if r["ended_at"]), default=None),
        "planned_start_at": win["planned_start"],
        "plan": pf,
        "connections": {**connections, "closes": counts["closes"],
                        "peak_active": _num(np.nanmax(series["active_total"])) if series.get("active_total") is not None
                        and np.isfinite(series["active_total"]).any() else 0},
        "connect_ms": connect,
        "login_ms": login,
        "protocol": _protocol(run),
        "messages": {**messages, "pings": counts["pings"], "pongs": counts["pongs"], "bytes_sent": counts["bytes_sent"],
                     "bytes_received": counts["bytes_received"]},
        "latency_ms": latency,
        # with a traffic model only: a run without one keeps the summary it always had
        **({"by_type": types["figures"], "traffic": types["model"]} if types["figures"] else {}),
        "session_s": figures.session_seconds(session),
        "gateway": {**gateway_figures, "source": gw_source, "leak_threshold_bytes_per_min": crit.LEAK_BYTES_PER_MIN},
        "histograms": {"latency": lat["total"].encode(), "connect": con["total"].encode(), "session": ses["total"].encode()},
        "criteria": rows, "criteria_source": criteria_source, "criteria_passed": criteria_passed(rows),
        "workers_dead": {h: r["workers_dead"] for h, r in agents_out.items() if r["workers_dead"]},
        "stopped_by": stop,
        "aborted": aborted,
        "agents": {h: {k: r.get(k) for k in ("state", "why", "version", "start_skew_ms", "worker_skew_max_ms",
                                             "attempted", "success_rate", "peak_active", "latency_p99_ms")}
                   for h, r in agents_out.items()},
        "distribution": {k: v for k, v in dist.items() if k != "rows"},
        "pairs": pair_summary(run.path),  # routing latency per gateway node pair (cross-node pairing)
        "figures": {},
    }
    summary["figures"] = headline_figures(summary)
    if cap is not None:
        summary["capacity"] = capacity.summary_of(cap)
    summary["diagnostics"] = diag = diagnostics.run_checks(summary, series, nodes, host_info, agents_out, win)
    text = io.StringIO()
    print_summary(summary, out=text)
    summary["analysis_seconds"] = round(time.perf_counter() - started, 3)
    return {"summary": summary, "series": series, "window": win, "nodes": nodes, "gw_source": gw_source,
            "distribution": dist, "hosts": host_info, "agents": agents_out, "diagnostics": diag,
            "text_summary": text.getvalue(), "problems": run.problems, "plan": run.plan, "run": run.run,
            "capacity": capacity.section(cap, list(run.plan.get("gateways") or []), list(run.agents)) if cap else None}


def _types(run: RunData, ts: pd.DataFrame | None, win: dict) -> dict:
    """Per message type (a traffic model's, docs/traffic.md): figures merged from every row's by_type cell, and
    per bin the messages sent per second and the latency P99 of each type."""
    from loadgen.errors import UsageError
    from loadgen.traffic.model import TrafficModel

    model = run.plan.get("traffic") if isinstance(run.plan.get("traffic"), dict) else None
    names, weights = [], None
    if model:
        try:
            parsed = TrafficModel.from_dict(model, str(model.get("name", "traffic")))
            names, weights = parsed.names, parsed.offered_mix()
        except UsageError:  # a damaged plan.json: the types as the rows name them, no offered mix
            pass
    out = {"figures": {}, "series": {}, "model": {"name": model.get("name"), "seed": run.plan.get("seed")}
           if model else None}
    if ts is None or "by_type" not in ts.columns or not ts["by_type"].map(lambda c: isinstance(c, str) and c != "").any():
        return out
    totals = bytype.TypeTotals()
    nb, bin_s = win["nbins"], win["bin_s"]
    sent: dict[str, np.ndarray] = {}
    p99: dict[str, np.ndarray] = {}
    for b, cells in ts.groupby("bin")["by_type"]:
        per_bin = bytype.TypeTotals()
        for cell in cells:
            totals.add(cell)
            per_bin.add(cell)
        for name, c in per_bin.counts.items():
            if 0 <= int(b) < nb:
                sent.setdefault(name, np.zeros(nb))[int(b)] = c[0] / bin_s
            hist = per_bin.latency.get(name)
            if hist is not None and hist.get_total_count() and 0 <= int(b) < nb:
                p99.setdefault(name, np.full(nb, np.nan))[int(b)] = hist.get_value_at_percentile(99) / 1000.0
        per_bin.release()
    out["figures"] = totals.figures(names, weights)
    totals.release()
    out["series"] = {"sent": sent, "p99": p99}
    return out


def _rows(run: RunData) -> pd.DataFrame | None:
    """Every agent's timeseries rows in one frame, with the agent's host and its index."""
    frames = []
    for i, (host, a) in enumerate(run.agents.items()):
        if a.timeseries is not None and len(a.timeseries):
            frames.append(a.timeseries.assign(host=host, host_idx=i))
    return pd.concat(frames, ignore_index=True) if frames else None


def _throughput(ts: pd.DataFrame | None, counts: dict) -> tuple[float | None, int]:
    """Messages received per hold second (loadgen.results.figures.throughput_per_s) and the workers it spans."""
    if ts is None or not counts["msgs_sent"]:
        return None, 0
    hold = ts[ts["phase"] == "hold"].sort_values("ts")
    per_worker = [(int(g.iloc[0]), int(g.iloc[1:].sum()), len(g) - 1)
                  for _, g in hold.groupby(["host", "worker"])["msgs_received"]]
    seconds = float(ts["ts"].max() - ts["ts"].min()) + 1
    return figures.throughput_per_s(per_worker, counts["msgs_received"], seconds), len(per_worker)


def _evidence(run: RunData, connections: dict, messages: dict, connect: dict, latency: dict, session: dict,
              hold_workers: int, pf: dict, nodes: list[dict], gw_source: str) -> dict:
    """Per criterion, how its figure was obtained (shown next to it in the report)."""
    n_agents_data = sum(1 for a in run.agents.values() if a.timeseries is not None and len(a.timeseries))
    _, mem_node = gateway.worst(nodes, "memory_per_connection")
    _, cpu_node = gateway.worst(nodes, "cpu_peak")
    _, leak_node = gateway.worst(nodes, "leak", "slope_bytes_per_min")
    offered = messages["sent"] + messages["send_failed"]
    return {
        "connection_success_rate": f"{connections['established']:,} established of {connections['attempted']:,} attempts; "
        "failures: " + (", ".join(f"{k}={v:,}" for k, v in connections["failed_by_reason"].items()) or "none"),
        "connect_p95_ms": f"merged connect-time histogram of {connect['count']:,} handshakes from {n_agents_data} agent(s)",
        "message_p99_ms": f"merged latency histogram of {latency['count']:,} messages (receive time - scheduled send time)",
        "message_success_rate": f"{messages['received']:,} received of {offered:,} offered "
        f"({messages['sent']:,} sent + {messages['send_failed']:,} not sendable)" if "owed" not in messages else
        f"{messages['received']:,} received of {messages['owed'] + messages['send_failed']:,} offered deliveries "
        f"({messages['owed']:,} owed by {messages['sent']:,} messages with fan-out + {messages['send_failed']:,} "
        "not sendable)",
        "session_p95_s": f"merged histogram of {session['count']:,} ended sessions",
        "throughput_per_s": f"messages received per hold second, per worker (first hold second excluded), summed over "
        f"{hold_workers} worker(s); offered {pf['offered_msgs_per_s'] or 0:,.0f} msg/s",
        "gateway_memory_per_connection_bytes": f"worst node {mem_node['node']}: (RSS at peak connections - RSS at first "
        f"sample) / connections added; source {gw_source}" if mem_node else f"gateway memory {gw_source}",
        "gateway_cpu_percent": f"worst node {cpu_node['node']}, peak of a 5-sample mean; source {gw_source}"
        if cpu_node else f"gateway CPU {gw_source}",
        "gateway_rss_growth_bytes_per_min": (
            f"worst node {leak_node['node']}: least-squares slope of RSS over {leak_node['leak']['minutes']:.1f} min of hold "
            f"({leak_node['leak']['points']} samples, R^2 {leak_node['leak']['r2']:.2f}); threshold "
            f"{crit.LEAK_BYTES_PER_MIN:,} bytes/min; source {gw_source}") if leak_node
        else "needs gateway RSS samples during the hold phase",
    }


def _agents(run: RunData, series: dict, lat: dict, con: dict, win: dict) -> dict:
    """Per generator: its state (done, dead, ...), start skew and own figures."""
    facts_by_agent = run_agents(run.run)
    unreachable = unreachable_hosts(run.run)
    agents_out = {}
    for host, a in run.agents.items():
        facts = facts_by_agent.get(host, {})
        state, why = _agent_state(host, a, facts, unreachable)
        s = a.summary or {}
        df = a.timeseries
        row = {"host": host, "state": state, "why": why, "version": s.get("version"),
               "agent_id": s.get("agent") or (str(df["agent"].iloc[0]) if df is not None and len(df) else None),
               "ended_at": _num(s.get("ended_at")),
               "rows": int(len(df)) if df is not None else 0,
               "workers": int(df["worker"].nunique()) if df is not None and len(df) else 0,
               "workers_dead": s.get("workers_dead") or [], "stopped_by": s.get("stopped_by"),
               "problems": a.problems, "log_tail": a.log_tail if state != "done" else None}
        row.update(_skew(a, facts, win["planned_start"]))
        if df is not None and len(df):
            ok = int(df["connects_ok"].sum())
            fail = int(df[[f"fail_{r}" for r in FAIL_REASONS]].to_numpy().sum())
            gen = series.get("active_by_generator", {}).get(host)
            peak = np.nanmax(gen) if gen is not None and np.isfinite(gen).any() else 0
            row.update({"attempted": ok + fail, "established": ok, "success_rate": ok / (ok + fail) if ok + fail else None,
                        "peak_active": int(peak), "sent": int(df["msgs_sent"].sum()), "received": int(df["msgs_received"].sum()),
                        "latency_p99_ms": lat["agents"][host].percentiles_ms((99,))["p99"],
                        "connect_p95_ms": con["agents"][host].percentiles_ms((95,))["p95"]})
        agents_out[host] = row
    return agents_out


def _run_problems(run: RunData, ts: pd.DataFrame | None, agents_out: dict, bad_cells: int) -> list[str]:
    """Why the run is not complete: generators not done, unreachable hosts, an early stop, damaged cells."""
    problems = [f"agent {host}: {r['state']} ({r['why']})" for host, r in agents_out.items() if r["state"] != "done"]
    for host, error in unreachable_hosts(run.run).items():
        if host not in agents_out:
            problems.append(f"host {host} unreachable ({error})")
    if not run.agents:
        problems.append("no agent output in agents/")
    elif ts is None:
        problems.append("no agent produced any timeseries rows")
    if run.run.get("stopped_by"):
        problems.append(f"run stopped early: {run.run['stopped_by']}")
    if bad_cells:
        problems.append(f"{bad_cells} damaged histogram cell(s) skipped")
    return problems


def headline_figures(s: dict) -> dict:
    """Flat figures for baseline comparison (loadgen.report.compare)."""
    c, m, lat, con = s["connections"], s["messages"], s["latency_ms"], s["connect_ms"]
    g = s["gateway"]
    return {
        "connection_success_rate": c["success_rate"], "connect_p50_ms": con["p50"], "connect_p95_ms": con["p95"],
        "connect_p99_ms": con["p99"], "connect_max_ms": con["max"],
        "latency_p50_ms": lat["p50"], "latency_p95_ms": lat["p95"], "latency_p99_ms": lat["p99"], "latency_max_ms": lat["max"],
        "throughput_per_s": m["throughput_per_s"], "message_success_rate": m["success_rate"],
        "session_p95_s": s["session_s"]["p95"], "peak_active": c["peak_active"], "disconnects": c["disconnects"],
        "connect_failures": c["failed"], "message_errors": m["errors"],
        "gateway_memory_per_connection_bytes": g.get("gateway_memory_per_connection_bytes"),
        "gateway_cpu_percent": g.get("gateway_cpu_percent"),
        "gateway_rss_growth_bytes_per_min": g.get("gateway_rss_growth_bytes_per_min"),
    }


def _series(ts: pd.DataFrame | None, win: dict, lat: dict, con: dict, gw: pd.DataFrame | None, gw_source: str) -> dict:
    nb, bin_s = win["nbins"], win["bin_s"]
    out: dict = {"x": bin_centers(win), "bin_s": bin_s}
    if ts is not None and nb:
        idx = pd.RangeIndex(nb)
        last = ts.groupby(["bin", "host", "worker"], sort=False)["active"].last()
        out["active_total"] = last.groupby(level=0).sum().reindex(idx).to_numpy(dtype=float)
        per_gen = last.groupby(level=[0, 1]).sum().unstack()
        out["active_by_generator"] = {h: per_gen[h].reindex(idx).to_numpy(dtype=float) for h in per_gen.columns}
        sums = ts.groupby("bin")[["connects_ok", "connects_failed", *(f"fail_{r}" for r in FAIL_REASONS), "disconnects",
                                  "closes", "msgs_sent", "msgs_received", "msgs_errors", "msgs_send_failed"]].sum()
        sums = sums.reindex(idx) / bin_s
        for col in sums.columns:
            out[col] = sums[col].to_numpy(dtype=float)
        out["phase_spans"] = _phase_spans(ts, win)
        out["hold"] = np.zeros(nb, dtype=bool)  # bins with a hold-phase row: the steady state
        out["hold"][ts.loc[ts["phase"] == "hold", "bin"].unique()] = True
    if lat.get("per_bin"):
        out["latency"] = lat["per_bin"]
    if con.get("per_bin"):
        out["connect"] = con["per_bin"]
    if gw is not None and len(gw) and nb:
        g = gw.assign(bin=sample_bins(gw["ts"], win))
        for col, key in (("conns", "active_by_node"), ("rss", "rss_by_node"), ("cpu_percent", "cpu_by_node"), ("fds", "fds_by_node")):
            wide = g.dropna(subset=[col]).groupby(["bin", "node"])[col].last().unstack()
            out[key] = {n: wide[n].reindex(pd.RangeIndex(nb)).to_numpy(dtype=float) for n in wide.columns}
        out["gateway_source"] = gw_source
    return out


def _phase_spans(ts: pd.DataFrame, win: dict) -> list[dict]:
    spans = ts.groupby("phase")["ts"].agg(["min", "max"]).reset_index()
    out = [{"phase": r.phase, "from": float(r["min"] - ROW_S - win["t0"]), "to": float(r["max"] - win["t0"])}
           for _, r in spans.sort_values("min").iterrows()]  # from the start of a phase's first second to the end of its last
    if win["planned_start"] is not None:
        out.append({"phase": "start", "from": float(win["planned_start"] - win["t0"]), "to": None})
    return out


def _imbalance(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None]
    if len(vals) < 2 or not sum(vals):
        return None
    return max(vals) / (sum(vals) / len(vals))


def _distribution(nodes: list[dict], agents: dict, gw_source: str) -> dict:
    node_vals = {n["node"]: n["hold_connections"] if n.get("hold_connections") is not None else n["peak_connections"] for n in nodes}
    gen_vals = {h: r.get("peak_active") for h, r in agents.items() if r.get("peak_active") is not None}
    return {"nodes": node_vals, "node_imbalance": _imbalance(list(node_vals.values())),
            "node_measure": "mean connections during hold (peak when no hold)", "node_source": gw_source,
            "generators": gen_vals, "generator_imbalance": _imbalance(list(gen_vals.values())),
            "imbalance_warn": IMBALANCE_WARN}
