"""Charts as inline SVG, drawn in Python: the report opens offline with no library at all.

Every chart is an `<svg class="chart">` holding `path.series` (lines) or `rect.bar` (bars); the values
ride along in a `data-values` attribute so a small inline script can show a readout on hover.
"""

from __future__ import annotations

import json
import math
from html import escape

import numpy as np

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")
W, H = 920, 240
ML, MR, MT, MB = 70, 16, 30, 34


BYTE_UNITS = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def _byte_unit(v: float) -> tuple[str, int]:
    return next(((u, f) for u, f in BYTE_UNITS if abs(v) >= f), ("B", 1))


def fmt_value(v: float, unit: str = "") -> str:
    if v is None or not math.isfinite(v):
        return "-"
    if unit == "B":
        u, f = _byte_unit(v)
        return f"{v / f:.3g} {u}" if f > 1 else f"{v:.0f} B"
    if unit == "%":
        return f"{v:.3g}%"
    a = abs(v)
    if a >= 1e9:
        s = f"{v / 1e9:.3g}G"
    elif a >= 1e6:
        s = f"{v / 1e6:.3g}M"
    elif a >= 1e4:
        s = f"{v / 1e3:.3g}k"
    elif a >= 100 or v == int(v):
        s = f"{v:.0f}"
    else:
        s = f"{v:.3g}"
    return s + (f" {unit}" if unit and unit not in ("%",) else "")


def fmt_clock(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"


def nice_ticks(lo: float, hi: float, n: int = 5, unit: str = "") -> list[float]:
    """Axis ticks 1, 2 or 5 x 10^k apart (of MiB, KiB... for bytes), from at or below lo to at or above hi."""
    if hi <= lo:
        hi = lo + 1
    scale = _byte_unit(max(abs(lo), abs(hi)))[1] if unit == "B" else 1
    lo_u, hi_u = lo / scale, hi / scale
    raw = (hi_u - lo_u) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))
    first, last = math.floor(lo_u / step + 1e-9), math.ceil(hi_u / step - 1e-9)
    return [round(i * step, 10) * scale for i in range(first, last + 1)]


def tick_labels(ticks: list[float], unit: str = "") -> list[str]:
    """One unit and one number of decimals for every tick of an axis (no '534 / 553 MiB', no '1 MiB' next to '512 KiB')."""
    if unit != "B":
        return [fmt_value(t, unit) for t in ticks]
    name, scale = _byte_unit(max(abs(t) for t in ticks))
    step = abs(ticks[1] - ticks[0]) / scale if len(ticks) > 1 else 1
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step else 0
    return [f"{t / scale:.{decimals}f} {name}" for t in ticks]


def _time_ticks(x_max: float) -> list[float]:
    step = next((s for s in (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400) if x_max / s <= 10), 28800)
    return list(np.arange(0, x_max + 1e-9, step))


def line_chart(title: str, x, series: dict, unit: str = "", spans: list[dict] | None = None, y_min0: bool = True) -> str | None:
    """Lines over time (x in seconds since the run start); None when no series has a finite point."""
    x = np.asarray(x, dtype=float)
    clean = {}
    for name, y in series.items():
        y = np.asarray(y, dtype=float)
        if len(y) == len(x) and np.isfinite(y).any():
            clean[name] = y
    if not clean or not len(x):
        return None
    finite = np.concatenate([y[np.isfinite(y)] for y in clean.values()])
    lo, hi = (0.0 if y_min0 else float(finite.min())), float(finite.max())
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    yt = nice_ticks(lo, hi, unit=unit)
    lo, hi = yt[0], yt[-1]  # the axis spans its ticks: the top tick is at or above the data's max
    x_max = float(x.max()) if len(x) else 1.0
    pw, ph = W - ML - MR, H - MT - MB

    def sx(v):
        return ML + pw * (v / x_max if x_max else 0)

    def sy(v):
        return MT + ph * (1 - (v - lo) / (hi - lo))

    parts = [f'<svg class="chart" viewBox="0 0 {W} {H}" width="100%" role="img" aria-label="{escape(title)}" '
             f'data-unit="{escape(unit)}">', f'<text class="title" x="{ML}" y="18">{escape(title)}</text>']
    for sp in spans or []:
        if sp.get("phase") == "start" and x_max and 0 <= sp["from"] <= x_max:
            xs = sx(sp["from"])
            parts.append(f'<line class="start" x1="{xs:.1f}" x2="{xs:.1f}" y1="{MT}" y2="{MT + ph}"><title>planned start</title></line>')
        if sp.get("phase") == "hold" and x_max:
            x1, x2 = sx(max(0, sp["from"])), sx(min(x_max, sp["to"]))
            parts.append(f'<rect class="hold" x="{x1:.1f}" y="{MT}" width="{max(0, x2 - x1):.1f}" height="{ph}"><title>hold phase</title></rect>')
    for t, label in zip(yt, tick_labels(yt, unit)):
        y = sy(t)
        parts.append(f'<line class="grid" x1="{ML}" x2="{W - MR}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="tick" x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>')
    for t in _time_ticks(x_max):
        xx = sx(t)
        parts.append(f'<line class="axis" x1="{xx:.1f}" x2="{xx:.1f}" y1="{MT + ph}" y2="{MT + ph + 4}"/>'
                     f'<text class="tick" x="{xx:.1f}" y="{MT + ph + 17}" text-anchor="middle">{fmt_clock(t)}</text>')
    parts.append(f'<line class="axis" x1="{ML}" x2="{W - MR}" y1="{MT + ph}" y2="{MT + ph}"/>')
    legend_x = W - MR
    names = list(clean)
    for i, name in reversed(list(enumerate(names))):
        color = PALETTE[i % len(PALETTE)]
        label = escape(str(name))
        legend_x -= 22 + 6.5 * len(str(name))
        parts.append(f'<rect x="{legend_x:.0f}" y="9" width="10" height="10" fill="{color}"/>'
                     f'<text class="legend" x="{legend_x + 13:.0f}" y="18">{label}</text>')
    values = {}
    for i, name in enumerate(names):
        y = clean[name]
        color = PALETTE[i % len(PALETTE)]
        # a series sampled less often than the bins (e.g. probes every 2 s) is drawn through its gaps;
        # a gap much longer than its usual spacing (an agent that died, a probe that failed) breaks the line
        idx = np.flatnonzero(np.isfinite(y))
        gaps = np.diff(idx)
        max_gap = max(3, 2 * int(np.median(gaps))) if len(gaps) else 1
        d, last = [], None
        for i in idx:
            d.append(f"{'L' if last is not None and i - last <= max_gap else 'M'}{sx(x[i]):.1f},{sy(y[i]):.1f}")
            last = i
        if len(d) == 1:  # a single point: draw a short tick so it is visible
            d.append("h2")
        parts.append(f'<path class="series" fill="none" stroke="{color}" stroke-width="1.6" d="{" ".join(d)}">'
                     f'<title>{escape(str(name))}</title></path>')
        values[str(name)] = [None if not math.isfinite(v) else round(float(v), 3) for v in y]
    data = {"x": [round(float(v), 1) for v in x], "y": values}
    parts.append(f'<g class="values" data-values="{escape(json.dumps(data, separators=(",", ":")))}"></g>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(title: str, labels: list[str], values: list[float], unit: str = "", mean_line: bool = True) -> str | None:
    """Vertical bars (one per node or generator), sorted as given; labels shown when they fit."""
    pairs = [(str(label), float(v)) for label, v in zip(labels, values) if v is not None and math.isfinite(float(v))]
    if not pairs:
        return None
    hi = max(v for _, v in pairs) or 1.0
    yt = nice_ticks(0, hi, unit=unit)
    hi = yt[-1]
    pw, ph = W - ML - MR, H - MT - MB
    n = len(pairs)
    bw = pw / n
    parts = [f'<svg class="chart" viewBox="0 0 {W} {H}" width="100%" role="img" aria-label="{escape(title)}">',
             f'<text class="title" x="{ML}" y="18">{escape(title)}</text>']
    for t, label in zip(yt, tick_labels(yt, unit)):
        y = MT + ph * (1 - t / hi)
        parts.append(f'<line class="grid" x1="{ML}" x2="{W - MR}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="tick" x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>')
    show_labels = n <= 24
    for i, (label, v) in enumerate(pairs):
        h = ph * v / hi
        x = ML + i * bw
        parts.append(f'<rect class="bar" x="{x + bw * 0.1:.1f}" y="{MT + ph - h:.1f}" width="{max(bw * 0.8, 0.8):.1f}" '
                     f'height="{max(h, 0.5):.1f}" fill="{PALETTE[0]}"><title>{escape(label)}: {escape(fmt_value(v, unit))}</title></rect>')
        if show_labels:
            parts.append(f'<text class="tick" x="{x + bw / 2:.1f}" y="{MT + ph + 14}" text-anchor="middle">'
                         f'{escape(label[:18])}</text>')
    if not show_labels:
        parts.append(f'<text class="tick" x="{ML}" y="{MT + ph + 14}">{n} bars, hover for names</text>')
    if mean_line:
        mean = sum(v for _, v in pairs) / n
        y = MT + ph * (1 - mean / hi)
        parts.append(f'<line class="mean" x1="{ML}" x2="{W - MR}" y1="{y:.1f}" y2="{y:.1f}"><title>mean {escape(fmt_value(mean, unit))}</title></line>')
    parts.append(f'<line class="axis" x1="{ML}" x2="{W - MR}" y1="{MT + ph}" y2="{MT + ph}"/></svg>')
    return "".join(parts)


MANY_LINES = 8  # more hosts/nodes than this: a chart shows min / median / max instead of one line each


def band(per: dict) -> dict:
    """{name: values} -> itself, or max / median / min across names per point when there are many."""
    if len(per) <= MANY_LINES:
        return per
    arr = np.vstack(list(per.values()))
    ok = np.isfinite(arr).any(0)
    out = {k: np.full(arr.shape[1], np.nan) for k in (f"max of {len(per)}", "median", "min")}
    if ok.any():
        sub = arr[:, ok]
        out[f"max of {len(per)}"][ok] = np.nanmax(sub, 0)
        out["median"][ok] = np.nanmedian(sub, 0)
        out["min"][ok] = np.nanmin(sub, 0)
    return out


def steps_chart(title: str, labels: list[str], series: dict, unit: str = "") -> str | None:
    """Lines with a dot per step over categorical x (a capacity search's steps, labelled by their load)."""
    clean = {}
    for name, y in series.items():
        y = np.asarray([np.nan if v is None else v for v in y], dtype=float)
        if len(y) == len(labels) and np.isfinite(y).any():
            clean[name] = y
    if not clean:
        return None
    hi = float(max(np.nanmax(y) for y in clean.values())) or 1.0
    yt = nice_ticks(0, hi, unit=unit)
    hi = yt[-1] or 1.0
    pw, ph = W - ML - MR, H - MT - MB
    n = len(labels)

    def sx(i):
        return ML + pw * ((i + 0.5) / n)

    def sy(v):
        return MT + ph * (1 - v / hi)

    parts = [f'<svg class="chart" viewBox="0 0 {W} {H}" width="100%" role="img" aria-label="{escape(title)}" '
             f'data-unit="{escape(unit)}">', f'<text class="title" x="{ML}" y="18">{escape(title)}</text>']
    for t, label in zip(yt, tick_labels(yt, unit)):
        parts.append(f'<line class="grid" x1="{ML}" x2="{W - MR}" y1="{sy(t):.1f}" y2="{sy(t):.1f}"/>'
                     f'<text class="tick" x="{ML - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{escape(label)}</text>')
    for i, label in enumerate(labels):
        if n <= 24 or i % max(1, n // 12) == 0:
            parts.append(f'<text class="tick" x="{sx(i):.1f}" y="{MT + ph + 17}" text-anchor="middle">{escape(label)}</text>')
    parts.append(f'<line class="axis" x1="{ML}" x2="{W - MR}" y1="{MT + ph}" y2="{MT + ph}"/>')
    legend_x = W - MR
    names = list(clean)
    for i, name in reversed(list(enumerate(names))):
        legend_x -= 22 + 6.5 * len(str(name))
        parts.append(f'<rect x="{legend_x:.0f}" y="9" width="10" height="10" fill="{PALETTE[i % len(PALETTE)]}"/>'
                     f'<text class="legend" x="{legend_x + 13:.0f}" y="18">{escape(str(name))}</text>')
    for k, name in enumerate(names):
        color, y = PALETTE[k % len(PALETTE)], clean[name]
        pts = [(sx(i), sy(v)) for i, v in enumerate(y) if math.isfinite(v)]
        d = " ".join(f"{'M' if j == 0 else 'L'}{px:.1f},{py:.1f}" for j, (px, py) in enumerate(pts))
        if len(pts) == 1:  # a single step: a short tick, so the line has extent (its dot shows the value)
            d += " h2"
        parts.append(f'<path class="series" fill="none" stroke="{color}" stroke-width="1.6" d="{d}">'
                     f'<title>{escape(str(name))}</title></path>')
        for i, v in enumerate(y):
            if math.isfinite(v):
                parts.append(f'<circle cx="{sx(i):.1f}" cy="{sy(v):.1f}" r="3" fill="{color}">'
                             f'<title>{escape(str(name))} at {escape(labels[i])}: {escape(fmt_value(float(v), unit))}</title></circle>')
    parts.append("</svg>")
    return "".join(parts)
