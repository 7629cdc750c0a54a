"""--junit FILE: the criteria as JUnit XML, checked against the rules of the common JUnit schema (the Ant/Jenkins
JUnit.xsd; no network here to fetch it, so its rules are written out below), from `loadgen run`, `fab report`
and a summary with every kind of row."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from xml.etree import ElementTree as ET

from conftest import run_loadgen
from loadgen.results.junit import junit_xml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAB = os.path.join(os.path.dirname(sys.executable), "fab")
RECORDED = os.path.join(ROOT, "tests", "data", "run-200-cluster")

# JUnit.xsd, as rules: element -> (required attributes with their XSD types, optional attributes, children in order
# as (name, min, max))
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")  # ISO8601_DATETIME_PATTERN: no time zone
RULES = {
    "testsuite": ({"name": "token", "timestamp": "datetime", "hostname": "token", "tests": "int",
                   "failures": "int", "errors": "int", "time": "decimal"}, {"skipped", "package", "id"},
                  [("properties", 1, 1), ("testcase", 0, None), ("system-out", 1, 1), ("system-err", 1, 1)]),
    "properties": ({}, set(), [("property", 0, None)]),
    "property": ({"name": "token", "value": "string"}, set(), []),
    "testcase": ({"name": "token", "classname": "token", "time": "decimal"}, set(), "error|failure"),
    "failure": ({"type": "token"}, {"message"}, []),
    "error": ({"type": "token"}, {"message"}, []),
    "system-out": ({}, set(), []),
    "system-err": ({}, set(), []),
}


def _type_ok(kind: str, value: str) -> bool:
    if kind == "token":  # xs:token with minLength 1: no leading/trailing/double spaces, no tabs or newlines
        return bool(value) and value == " ".join(value.split())
    if kind == "int":
        return re.fullmatch(r"[+-]?\d+", value) is not None
    if kind == "decimal":
        return re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)", value) is not None
    if kind == "datetime":
        return DATETIME.match(value) is not None
    return True


def schema_errors(xml_text: str) -> list[str]:
    """Every violation of the JUnit.xsd rules above, plus the counts agreeing with the testcases."""
    root = ET.fromstring(xml_text)
    errors = []

    def check(el, path):
        rule = RULES.get(el.tag)
        if rule is None:
            errors.append(f"{path}: element {el.tag} not allowed")
            return
        required, optional, children = rule
        for name, kind in required.items():
            if name not in el.attrib:
                errors.append(f"{path}: missing attribute {name}")
            elif not _type_ok(kind, el.attrib[name]):
                errors.append(f"{path}: {name}={el.attrib[name]!r} is not an xs:{kind}")
        for name in set(el.attrib) - set(required) - optional:
            errors.append(f"{path}: attribute {name} not allowed")
        kids = list(el)
        if children == "error|failure":  # xs:choice minOccurs=0: at most one error or failure
            if len(kids) > 1 or any(k.tag not in ("error", "failure") for k in kids):
                errors.append(f"{path}: children {[k.tag for k in kids]} (at most one error or failure)")
        else:
            i = 0
            for name, lo, hi in children:  # xs:sequence
                n = 0
                while i < len(kids) and kids[i].tag == name:
                    i, n = i + 1, n + 1
                if n < lo or (hi is not None and n > hi):
                    errors.append(f"{path}: {n} x {name}, allowed {lo}..{hi or 'unbounded'}")
            if i < len(kids):
                errors.append(f"{path}: unexpected {kids[i].tag} (order: {[c[0] for c in children]})")
        if el.tag in ("failure", "error", "system-out", "system-err", "property") and len(el):
            errors.append(f"{path}: {el.tag} must hold text only")
        for k in kids:
            check(k, f"{path}/{k.tag}")

    if root.tag != "testsuite":
        return [f"root is {root.tag}, not testsuite"]
    check(root, "testsuite")
    cases = root.findall("testcase")
    for attr, tag in (("failures", "failure"), ("errors", "error")):
        if int(root.get(attr, -1)) != sum(1 for c in cases if c.find(tag) is not None):
            errors.append(f"testsuite {attr}={root.get(attr)} does not count the testcases' {tag}s")
    if int(root.get("tests", -1)) != len(cases):
        errors.append(f"tests={root.get('tests')} but {len(cases)} testcases")
    return errors


def test_every_kind_of_criterion_row_and_an_abort_follow_the_schema():
    summary = {"scenario": "cluster", "run_id": "r1", "status": "FAIL", "started_at": 1_800_000_000.0,
               "ended_at": 1_800_000_062.5, "partial_reasons": ["not measured: Gateway CPU"],
               "aborted": {"text": "ABORTED at t+31s: message_p99_ms>1000 over 60s (value 1520 ms)"},
               "criteria": [
                   {"name": "connection_success_rate", "label": "Connection success rate", "op": ">", "target": 0.99,
                    "actual": 0.9995, "passed": True},
                   {"name": "message_p99_ms", "label": "P99 message latency (ms)", "op": "<", "target": 200,
                    "actual": 212.5, "passed": False},
                   {"name": "gateway_cpu_percent", "label": "Gateway CPU", "op": "<", "target": 80, "actual": None,
                    "passed": None}]}
    xml = junit_xml(summary, "fab cluster-test cluster")
    assert schema_errors(xml) == []
    root = ET.fromstring(xml)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "2", "1")
    assert root.get("time") == "62.500"
    cases = {c.get("name"): c for c in root.findall("testcase")}
    assert list(cases) == ["connection_success_rate", "message_p99_ms", "gateway_cpu_percent", "aborted"]
    assert len(cases["connection_success_rate"]) == 0
    fail = cases["message_p99_ms"].find("failure")
    assert fail.get("message") == "P99 message latency (ms): 212.5, target < 200"  # the figures
    assert cases["gateway_cpu_percent"].find("error").get("type") == "not_measured"
    assert "message_p99_ms>1000" in cases["aborted"].find("failure").get("message")
    # the checker itself refuses what the schema refuses
    bad = xml.replace("<properties>", "<properties><property name=\"x\"/>").replace('time="62.500"', 'time="1m"', 1)
    assert len(schema_errors(bad)) == 2


def test_loadgen_run_writes_junit_one_testcase_per_criterion(gateway, tmp_path):
    out, junit = tmp_path / "out", tmp_path / "results.xml"
    r = run_loadgen("run", "throughput", "--vus", "20", "--rate", "2", "--duration", "3s", "--workers", "1",
                    "-e", "GATEWAY_HOST=127.0.0.1", "-e", f"GATEWAY_PORT={gateway.port}", "--out", str(out),
                    "--junit", str(junit), "--quiet", "--criterion", "message_p99_ms<0.001")
    assert r.returncode == 99, r.stderr
    xml = junit.read_text()
    assert schema_errors(xml) == []
    import json

    rows = json.loads((out / "summary.json").read_text())["criteria"]
    cases = ET.fromstring(xml).findall("testcase")
    assert [c.get("name") for c in cases] == [row["name"] for row in rows]
    failed = {c.get("name"): c.find("failure") for c in cases if c.find("failure") is not None}
    assert "message_p99_ms" in failed and "target < 0.001" in failed["message_p99_ms"].get("message")


def test_fab_report_junit_of_a_recorded_run_and_a_bad_path_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(RECORDED, run_dir)
    junit = tmp_path / "fab.xml"
    r = subprocess.run([FAB, "-r", ROOT, "report", str(run_dir), "--junit", str(junit)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert schema_errors(junit.read_text()) == []
    assert len(ET.fromstring(junit.read_text()).findall("testcase")) >= 4
    r = subprocess.run([FAB, "-r", ROOT, "report", str(run_dir), "--junit", "/nonexistent/dir/x.xml"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "fab: error: --junit /nonexistent/dir/x.xml: not a file in a writable directory"]
