"""Read a run directory (docs/data-format.md) with pandas: plan, run facts, agents' CSVs, probes.

Nothing here judges the data; every file may be missing or damaged (an agent killed mid-write, a host
that was unreachable), and what could not be read is listed in `problems` instead of raising.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import pandas as pd

from loadgen.results.columns import BY_TYPE, COLUMNS, HISTOGRAMS
from loadgen.errors import UsageError

PROBE_TEXT_LIMIT = 200_000  # characters kept of one raw probe output


@dataclass
class AgentData:
    host: str
    path: str | None
    summary: dict | None = None
    status: dict | None = None
    timeseries: pd.DataFrame | None = None
    gateway_metrics: pd.DataFrame | None = None
    log_tail: str | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class RunData:
    path: str
    plan: dict
    run: dict
    agents: dict[str, AgentData]
    samples: pd.DataFrame | None
    probes: dict[str, dict[str, dict[str, str]]]  # host -> before|after -> probe name -> text
    problems: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.plan.get("run_id") or self.run.get("run_id") or os.path.basename(os.path.normpath(self.path)))


def read_json(path: str, problems: list[str]) -> dict | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        problems.append(f"{path}: unreadable ({exc})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path}: not a JSON object")
        return None
    return data


OPTIONAL_COLUMNS = ("disc_by_gateway", "disc_lost", "churns", "send_lag_ms")
_TEXT = ("agent", "phase", *HISTOGRAMS, BY_TYPE)
_NUMERIC = [c for c in COLUMNS if c not in _TEXT]


def read_timeseries(path: str, problems: list[str]) -> pd.DataFrame | None:
    """timeseries.csv; a row cut off by a killed agent is dropped, not fatal."""
    try:
        df = pd.read_csv(path, dtype={h: object for h in _TEXT},
                         on_bad_lines="skip")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        problems.append(f"{path}: unreadable ({exc})")
        return None
    for c in OPTIONAL_COLUMNS:  # added later: older agents' CSVs simply lack them
        if c not in df.columns:
            df[c] = 0
    if BY_TYPE not in df.columns:  # added with traffic models
        df[BY_TYPE] = ""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        problems.append(f"{path}: missing columns {', '.join(missing)}")
        for c in missing:
            df[c] = None if c in _TEXT else 0
    for c in _NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    bad = df["ts"].isna() | df["worker"].isna()
    if bad.any():
        problems.append(f"{path}: {int(bad.sum())} damaged row(s) skipped")
        df = df[~bad]
    counters = [c for c in _NUMERIC if c not in ("ts", "elapsed_s")]
    df[counters] = df[counters].fillna(0).astype("int64")
    return df


def read_gateway_metrics(path: str, problems: list[str]) -> pd.DataFrame | None:
    try:
        df = pd.read_csv(path, on_bad_lines="skip")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        problems.append(f"{path}: unreadable ({exc})")
        return None
    if not {"ts", "url"} <= set(df.columns):
        problems.append(f"{path}: no ts/url columns")
        return None
    for c in df.columns:
        if c != "url":
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df.dropna(subset=["ts"])


def read_samples(path: str, problems: list[str]) -> pd.DataFrame | None:
    try:
        df = pd.read_csv(path, dtype={"host": object, "role": object, "metric": object}, on_bad_lines="skip")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        problems.append(f"{path}: unreadable ({exc})")
        return None
    if not {"ts", "host", "metric", "value"} <= set(df.columns):
        problems.append(f"{path}: expected columns ts,host,role,metric,value")
        return None
    if "role" not in df.columns:
        df["role"] = ""
    df["ts"] = pd.to_numeric(df["ts"], errors="coerce")
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    df["role"] = df["role"].fillna("")
    return df.dropna(subset=["ts", "value"])


def _tail(path: str, lines: int = 40) -> str | None:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    return "\n".join(text.splitlines()[-lines:])


def read_agent(host: str, path: str) -> AgentData:
    a = AgentData(host=host, path=path)
    a.summary = read_json(os.path.join(path, "summary.json"), a.problems)
    a.status = read_json(os.path.join(path, "status.json"), a.problems)
    a.timeseries = read_timeseries(os.path.join(path, "timeseries.csv"), a.problems)
    a.gateway_metrics = read_gateway_metrics(os.path.join(path, "gateway_metrics.csv"), a.problems)
    a.log_tail = _tail(os.path.join(path, "agent.log"))
    return a


def read_probes(root: str) -> dict:
    probes: dict = {}
    if not os.path.isdir(root):
        return probes
    for host in sorted(os.listdir(root)):
        hdir = os.path.join(root, host)
        if not os.path.isdir(hdir):
            continue
        for when in ("before", "after"):
            wdir = os.path.join(hdir, when)
            if not os.path.isdir(wdir):
                continue
            for name in sorted(os.listdir(wdir)):
                if not name.endswith(".txt"):
                    continue
                try:
                    with open(os.path.join(wdir, name), encoding="utf-8", errors="replace") as f:
                        text = f.read(PROBE_TEXT_LIMIT + 1)
                except OSError:
                    continue
                if len(text) > PROBE_TEXT_LIMIT:
                    text = text[:PROBE_TEXT_LIMIT] + "\n[... truncated]"
                probes.setdefault(host, {}).setdefault(when, {})[name[:-4]] = text
    return probes


def load_run(path: str) -> RunData:
    if not os.path.isdir(path):
        raise UsageError(f"{path} is not a directory")
    has_agents = os.path.isdir(os.path.join(path, "agents"))
    if not (has_agents or any(os.path.isfile(os.path.join(path, f)) for f in ("plan.json", "run.json"))):
        raise UsageError(f"{path} is not a run directory (no plan.json, run.json or agents/)")
    problems: list[str] = []
    plan = read_json(os.path.join(path, "plan.json"), problems) or {}
    run = read_json(os.path.join(path, "run.json"), problems) or {}
    agents: dict[str, AgentData] = {}
    if has_agents:
        root = os.path.join(path, "agents")
        for host in sorted(os.listdir(root)):
            if os.path.isdir(os.path.join(root, host)):
                agents[host] = read_agent(host, os.path.join(root, host))
    for host in _planned_agents(plan, run):
        agents.setdefault(host, AgentData(host=host, path=None, problems=["no output collected"]))
    samples = read_samples(os.path.join(path, "probes", "samples.csv"), problems)
    probes = read_probes(os.path.join(path, "probes"))
    return RunData(path=path, plan=plan, run=run, agents=agents, samples=samples, probes=probes, problems=problems)


def _planned_agents(plan: dict, run: dict) -> list[str]:
    """Generators the plan or run.json names: an agent with no directory still counts (as missing)."""
    names = list(run_agents(run))
    if isinstance(plan.get("generators"), list):
        names += [str(h) for h in plan["generators"]]
    for group_key in ("groups", "hosts"):
        hosts = plan.get(group_key)
        if isinstance(hosts, dict):
            for key in ("generators", "generator", "agents"):
                if isinstance(hosts.get(key), list):
                    names += [str(h if not isinstance(h, dict) else h.get("name") or h.get("host")) for h in hosts[key]]
    return list(dict.fromkeys(names))


def unreachable_hosts(run: dict) -> dict:
    """run.json 'unreachable': [{"host", "error"}] -> {host: error}."""
    out = {}
    for u in run.get("unreachable") or []:
        if isinstance(u, dict) and u.get("host"):
            out[str(u["host"])] = str(u.get("error") or "unreachable")
        elif isinstance(u, str):
            out[u] = "unreachable"
    return out


def run_agents(run: dict) -> dict:
    """run.json's per-agent facts as {host: dict}, whether written as a mapping or a list."""
    agents = run.get("agents") or {}
    if isinstance(agents, list):
        return {str(a.get("host") or a.get("name")): a for a in agents if isinstance(a, dict)}
    return {str(k): v for k, v in agents.items() if isinstance(v, dict)} if isinstance(agents, dict) else {}
