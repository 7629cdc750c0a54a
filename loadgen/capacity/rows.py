"""The agents' per-second rows while they run: each agent's timeseries.csv read incrementally through the Host it
is reached by (local or SSH: one code path), so a step is judged on the fleet's rows of that step only."""

from __future__ import annotations

import csv
import io
import shlex

from loadgen.results.columns import BY_TYPE, COLUMNS, HISTOGRAMS

_TEXT = ("agent", "phase", *HISTOGRAMS, BY_TYPE)


def parse_row(row: dict) -> dict | None:
    """A CSV row with numbers as numbers; None for a damaged one. Columns an older agent lacks read as 0."""
    out = {}
    try:
        for c in COLUMNS:
            v = row.get(c)
            if c in _TEXT:
                out[c] = v or ""
            elif c in ("ts", "elapsed_s"):
                out[c] = float(v)
            else:
                out[c] = int(v) if v not in (None, "") else 0
    except (TypeError, ValueError):
        return None
    return out


class RowTail:
    """New whole rows of one agent's timeseries.csv since the last read."""

    def __init__(self, host, path: str) -> None:
        self.host, self.path = host, path
        self.offset = 0  # bytes consumed (whole lines only)
        self.header: list[str] | None = None

    def read(self, timeout: float = 20.0) -> list[dict]:
        r = self.host.run(f"tail -c +{self.offset + 1} {shlex.quote(self.path)} 2>/dev/null", timeout=timeout)
        text = r.stdout if r.ok else ""
        end = text.rfind("\n")
        if end < 0:
            return []
        chunk = text[:end + 1]
        self.offset += len(chunk.encode())
        lines = chunk.splitlines()
        if self.header is None:
            self.header, lines = next(csv.reader([lines[0]])), lines[1:]
        rows = []
        for raw in csv.DictReader(io.StringIO("\n".join(lines)), fieldnames=self.header):
            row = parse_row(raw)
            if row is not None:
                rows.append(row)
        return rows
