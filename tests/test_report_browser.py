"""Open generated reports in headless Chromium (DevTools protocol): no console errors, every chart rendered.

Needs Debian's `chromium` package (apt-get install --no-install-recommends chromium). The browser only
ever loads file:// pages; the flags keep it off the network.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time

import pytest

from synthetic import AgentSpec, make_run, three_agents

HOVER_JS = r"""
(() => {
  const chart = document.querySelector("svg.chart g.values").closest("svg");
  chart.scrollIntoView();
  const r = chart.getBoundingClientRect();
  chart.dispatchEvent(new MouseEvent("mousemove", {clientX: r.left + r.width * 0.5, clientY: r.top + r.height / 2, bubbles: true}));
  const box = chart.parentNode.querySelector(".readout");
  return {shown: getComputedStyle(box).display, text: box.textContent};
})()
"""

pytestmark = pytest.mark.browser

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", "--window-size=1100,900"]

CHECK_JS = r"""
(() => {
  const charts = [...document.querySelectorAll("svg.chart")];
  const bad = [];
  for (const c of charts) {
    const marks = [...c.querySelectorAll("path.series, rect.bar")];
    const r = c.getBoundingClientRect();
    const drawn = marks.filter(m => { const b = m.getBBox(); return b.width > 0 || b.height > 0; });
    if (!marks.length || drawn.length !== marks.length || r.width < 200 || r.height < 50)
      bad.push(c.getAttribute("aria-label") + ` (${drawn.length}/${marks.length} marks, ${r.width}x${r.height})`);
    // the top tick is at or above the data: nothing is drawn above the top grid line
    const top = Math.min(...[...c.querySelectorAll("line.grid")].map(g => g.y1.baseVal.value));
    const highest = Math.min(...marks.map(m => m.getBBox().y));
    if (highest < top - 0.5) bad.push(c.getAttribute("aria-label") + ` (drawn at y ${highest} above the top tick at ${top})`);
  }
  const sections = [...document.querySelectorAll("body > section")].map(s => s.id);
  const external = [...document.querySelectorAll("[src],[href]")]
      .map(e => e.getAttribute("src") || e.getAttribute("href")).filter(u => /^(https?:)?\/\//.test(u));
  return {charts: charts.length, bad, sections, external, ready: document.documentElement.getAttribute("data-charts-ready"),
          status: document.getElementById("status").textContent.trim(),
          notCollected: [...document.querySelectorAll(".nc")].map(e => e.textContent.trim()),
          height: document.documentElement.scrollHeight};
})()
"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not installed (apt-get install -y --no-install-recommends chromium)")


class Browser:
    """A headless Chromium and one page, spoken to over the DevTools protocol (websockets, sync client)."""

    def __init__(self, profile_dir: str) -> None:
        from websockets.sync.client import connect

        self.proc = subprocess.Popen([_chromium(), *FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = os.path.join(profile_dir, "DevToolsActivePort")
        deadline = time.time() + 30
        while not (os.path.exists(port_file) and len(open(port_file).read().split()) >= 2):
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                pytest.fail("chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        port, path = open(port_file).read().split()[:2]
        self.ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=64 * 2**20, open_timeout=10).__enter__()
        self.next_id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)

    def call(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 30) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.time() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.time())))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        deadline = time.time() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["method"] == method:
                    return self.events.pop(i)
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.time())))
            if "method" in reply:
                self.events.append(reply)

    def open(self, path: str) -> None:
        self.events.clear()
        self.call("Page.navigate", {"url": "file://" + os.path.abspath(path)}, session=True)
        self.wait_event("Page.loadEventFired")

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:300])
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                out.append("console: " + json.dumps(p.get("args"))[:300])
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
                out.append("log: " + p["entry"].get("text", "")[:300])
        return out

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"check script failed: {res['exceptionDetails']}")
        return res["result"]["value"]

    def screenshot(self, path: str, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", {"width": 1100, "height": min(height, 12000),
                                                         "deviceScaleFactor": 1, "mobile": False}, session=True)
        data = self.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(str(tmp_path_factory.mktemp("chromium-profile")))
    yield b
    b.close()


SECTIONS = ["verdict", "summary", "timeseries", "distribution", "hosts", "facts", "diagnostics"]


def _open_and_check(browser, run_dir, tmp_path, name):
    from loadgen.report import build_report

    summary = build_report(str(run_dir))
    browser.open(summary["report"])
    result = browser.evaluate(CHECK_JS)
    shot = tmp_path / f"{name}.png"
    browser.screenshot(str(shot), result["height"])
    assert shot.stat().st_size > 10_000
    assert browser.errors() == []
    assert result["bad"] == [], result["bad"]
    assert result["external"] == []
    assert result["sections"] == SECTIONS
    assert result["ready"] == str(result["charts"])  # the inline script ran to its end
    assert result["status"] == summary["status"]
    return summary, result


def test_full_report_renders_every_chart(browser, tmp_path):
    run = tmp_path / "run-full"
    three_agents(str(run), gateway_metrics=True)
    summary, result = _open_and_check(browser, run, tmp_path, "full")
    # 6 time series + per-role host charts (gateway cpu/mem/rss/fds/established, generator cpu/mem, infra cpu)
    # + 2 distribution bars
    assert result["charts"] >= 14, result
    assert not any("Active connections per gateway node" in t for t in result["notCollected"])
    hover = browser.evaluate(HOVER_JS)
    assert hover["shown"] == "block" and hover["text"].startswith("t = ") and "total: 120" in hover["text"], hover
    assert browser.errors() == []


def test_comparison_page_renders(browser, tmp_path):
    from loadgen.report import compare_runs

    a, b = tmp_path / "a", tmp_path / "b"
    make_run(str(a), [AgentSpec("g", 20, 0.2)], samples=False, probes=False)
    make_run(str(b), [AgentSpec("g", 45, 0.2)], samples=False, probes=False)
    res = compare_runs(str(a), str(b))
    browser.open(res["report"])
    result = browser.evaluate(CHECK_JS)
    browser.screenshot(str(tmp_path / "compare.png"), result["height"])
    assert browser.errors() == [] and result["bad"] == [] and result["external"] == []
    assert result["charts"] == 4 and result["status"] == "REGRESSION"


def test_bare_run_dir_says_not_collected(browser, tmp_path):
    run = tmp_path / "run-bare"
    make_run(str(run), [AgentSpec("only", dead_at=30)], samples=False, probes=False)
    summary, result = _open_and_check(browser, run, tmp_path, "bare")
    assert summary["status"] == "PARTIAL"
    texts = " ".join(result["notCollected"])
    for what in ("Active connections per gateway node", "Host samples", "etcd, Redis and Kafka", "ss -s"):
        assert what in texts, (what, texts)
    assert result["charts"] >= 5


def test_capacity_section_renders_its_step_table_and_charts(browser, tmp_path):
    """A recorded `fab capacity` run (tests/data/capacity/run: 1,500 connections per node allowed)."""
    from loadgen.report import build_report

    run = tmp_path / "run-capacity"
    shutil.copytree(os.path.join(os.path.dirname(__file__), "data", "capacity", "run"), run)
    summary = build_report(str(run))
    browser.open(summary["report"])
    result = browser.evaluate(CHECK_JS)
    browser.screenshot(str(tmp_path / "capacity.png"), result["height"])
    assert browser.errors() == [] and result["bad"] == [] and result["external"] == []
    assert result["sections"] == ["capacity", *SECTIONS]
    cap = browser.evaluate(r"""(() => ({
      rows: document.querySelectorAll("#capacity-steps tbody tr").length,
      charts: document.querySelectorAll("#capacity svg.chart").length,
      knee: document.getElementById("knee").textContent,
      cause: document.getElementById("cause").textContent}))()""")
    assert cap["rows"] == 4 and cap["charts"] == 5, cap
    assert "Knee: 1500 connections per gateway node" in cap["knee"] and "server.max_connections" in cap["cause"]
    assert summary["status"] == result["status"] == "PASS" and summary["capacity"]["knee"] == 1500
