"""The summary on stdout, in the spec's "Example Output" form with a criteria table (agent and report)."""

from __future__ import annotations

import sys

from loadgen.plan.criteria import criterion_line


def _fmt(v, unit="ms"):
    return "n/a" if v is None else f"{v:.2f}{unit}"


def _latency_title(s: dict) -> str:
    # closed loop: the next send waits for the reply, so latency is per round trip, not from a schedule
    closed = s.get("plan", {}).get("closed_loop")
    return "Message Latency (per round trip):" if closed else "Message Latency (from scheduled send time):"


def _protocol_lines(s: dict) -> list[str]:
    """The protocol, unless it is the reference one on the built-in path (the spec's example output)."""
    proto = s.get("protocol")
    if not proto or proto.get("path") == "built-in":
        return []
    return ["", f"Protocol: {proto['name']} (profile {proto['digest']})"]


def _login_lines(s: dict) -> list[str]:
    """A protocol profile's login (after the upgrade), when the run had one."""
    login = s.get("login_ms")
    if not login or not login.get("count"):
        return []
    return ["", "Login (after the upgrade):", f"  Min: {_fmt(login['min'])}", f"  Avg: {_fmt(login['mean'])}",
            f"  P95: {_fmt(login['p95'])}", f"  Max: {_fmt(login['max'])}"]


def print_summary(s: dict, out=sys.stdout) -> None:
    title = f"{s['scenario'].capitalize()} Load Test Summary"

    c, m, lat, con = s["connections"], s["messages"], s["latency_ms"], s["connect_ms"]
    rate = lambda r: "n/a" if r is None else f"{r * 100:.2f}%"  # noqa: E731
    lines = [title, "=" * len(title), *_protocol_lines(s), "", "Connections:", f"  Total Attempts: {c['attempted']}",
             f"  Success Rate: {rate(c['success_rate'])}", f"  Errors: {c['failed']}"
             + (f"  ({', '.join(f'{k}={v}' for k, v in c['failed_by_reason'].items())})" if c["failed_by_reason"] else ""),
             f"  Disconnects: {c['disconnects']}", "", "Connection Duration:",
             f"  Min: {_fmt(con['min'])}", f"  Avg: {_fmt(con['mean'])}", f"  P95: {_fmt(con['p95'])}",
             f"  Max: {_fmt(con['max'])}", *_login_lines(s), "", "Messages:", f"  Sent: {m['sent']}", f"  Received: {m['received']}",
             f"  Errors: {m['errors']}",
             f"  Throughput: {_fmt(m['throughput_per_s'], '')} msg/sec",
             "", _latency_title(s), f"  Min: {_fmt(lat['min'])}", f"  Avg: {_fmt(lat['mean'])}",
             f"  P50: {_fmt(lat['p50'])}", f"  P95: {_fmt(lat['p95'])}", f"  P99: {_fmt(lat['p99'])}",
             f"  Max: {_fmt(lat['max'])}", "", "Success Rate:", f"  Message Success: {rate(m['success_rate'])}", "",
             "Criteria:"]
    if s.get("by_type"):  # a traffic model's types (docs/traffic.md), before the criteria
        at = lines.index("Criteria:")
        block = ["By Message Type (sent, fan-out, owed = received + errors + lost, P99):"]
        for name, t in s["by_type"].items():
            fan = "n/a" if t["fan_out"] is None else f"{t['fan_out']:.2f}"
            block.append(f"  {name}: sent {t['sent']}, fan-out {fan}, owed {t['owed']} = {t['received']} + "
                         f"{t['errors']} + {t['lost']}, P99 {_fmt(t['latency_ms']['p99'])}")
        lines[at:at] = block + [""]
    for r in s["criteria"]:
        lines.append(f"  {criterion_line(r)}")
    result = {"PASS": "PASSED", "FAIL": "FAILED", "PARTIAL": "PARTIAL", "ABORTED": "ABORTED"}[s["status"]]
    if s.get("aborted"):
        lines += ["", s["aborted"]["text"]]
    if s["partial_reasons"]:
        result += f" ({'; '.join(s['partial_reasons'])})"
    lines += ["", f"Result: {result}"]
    print("\n".join(lines), file=out)
