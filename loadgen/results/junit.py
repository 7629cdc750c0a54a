"""A summary's criteria as JUnit XML (`--junit FILE`): one testcase per criterion, for CI systems.

The form is the common JUnit schema's (the Ant/Jenkins `JUnit.xsd`): a single <testsuite> with name,
timestamp (no time zone), hostname, tests, failures, errors and time; then <properties>, the testcases,
<system-out> and <system-err>, in that order. A criterion that failed is a <failure> with the figures; one
that could not be measured is an <error> (never a pass); a run stopped by --abort-on adds an `aborted`
testcase that failed with the threshold, the value and the time.
"""

from __future__ import annotations

import os
import socket
import time
from xml.etree import ElementTree as ET

from loadgen.plan.criteria import criterion_line


def _figure(x) -> str:
    return "not measured" if x is None else f"{x:.6g}"


def check_path(path: str) -> str:
    """--junit FILE is checked where it enters, before any load: its directory must exist and be writable."""
    from loadgen.errors import UsageError

    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UsageError(f"--junit {path}: not a file in a writable directory")
    return path


def junit_xml(summary: dict, suite: str) -> str:
    rows = summary.get("criteria", [])
    aborted = summary.get("aborted")
    started = summary.get("started_at") or time.time()
    duration = max(0.0, (summary.get("ended_at") or started) - started)
    failures = sum(1 for r in rows if r["passed"] is False) + (1 if aborted else 0)
    errors = sum(1 for r in rows if r["passed"] is None)
    root = ET.Element("testsuite", {
        "name": suite, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)),
        "hostname": socket.gethostname() or "localhost", "tests": str(len(rows) + (1 if aborted else 0)),
        "failures": str(failures), "errors": str(errors), "time": f"{duration:.3f}"})
    props = ET.SubElement(root, "properties")
    for name, value in (("status", summary.get("status")), ("scenario", summary.get("scenario")),
                        ("run_id", summary.get("run_id") or summary.get("agent"))):
        if value:
            ET.SubElement(props, "property", {"name": name, "value": str(value)})
    classname = f"loadgen.{summary.get('scenario') or 'run'}.criteria"
    for r in rows:
        case = ET.SubElement(root, "testcase", {"name": r["name"], "classname": classname, "time": f"{duration:.3f}"})
        line = criterion_line(r)
        if r["passed"] is False:
            ET.SubElement(case, "failure", {
                "message": f"{r['label']}: {_figure(r['actual'])}, target {r['op']} {r['target']:g}",
                "type": "criterion_failed"}).text = line
        elif r["passed"] is None:
            ET.SubElement(case, "error", {"message": f"{r['label']}: not measured", "type": "not_measured"}).text = line
    if aborted:
        case = ET.SubElement(root, "testcase", {"name": "aborted", "classname": classname, "time": f"{duration:.3f}"})
        ET.SubElement(case, "failure", {"message": aborted["text"], "type": "aborted"}).text = aborted["text"]
    ET.SubElement(root, "system-out").text = f"status {summary.get('status')}"
    ET.SubElement(root, "system-err").text = "; ".join(summary.get("partial_reasons") or [])
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(summary: dict, path: str, suite: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(junit_xml(summary, suite))
    os.replace(tmp, path)
