"""Latency histograms as mergeable values (HdrHistogram), encoded for CSV transport.

Every duration is recorded in microseconds. An interval histogram is encoded as HdrHistogram's
standard compressed base64 string, so percentiles of any union of intervals, workers and agents
are exact to the histogram's precision: we merge counts, never average percentiles.
"""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 24 * 3600 * 1_000_000  # a day: session durations fit too
SIGNIFICANT_DIGITS = 3  # values within 0.1 %


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def record_us(hist: HdrHistogram, value_us: int) -> None:
    """Record one duration, clamped into the trackable range (never dropped)."""
    if value_us < LOWEST_US:
        value_us = LOWEST_US
    elif value_us > HIGHEST_US:
        value_us = HIGHEST_US
    hist.record_value(value_us)


def encode(hist: HdrHistogram) -> str:
    """Compressed base64 text ('' for an empty histogram, to keep CSV rows small)."""
    if hist.get_total_count() == 0:
        return ""
    return hist.encode().decode("ascii")


def merge_encoded(into: HdrHistogram, encoded: str) -> None:
    if encoded:
        into.decode_and_add(encoded)


def decode(encoded: str) -> HdrHistogram:
    hist = new_histogram()
    merge_encoded(hist, encoded)
    return hist


def percentiles_ms(hist: HdrHistogram, points=(50, 95, 99)) -> dict:
    """{'p50': ms, ..., 'min', 'max', 'mean', 'count'}; None values for an empty histogram."""
    count = hist.get_total_count()
    out: dict = {"count": count}
    for p in points:
        key = f"p{p:g}".replace(".", "_")
        out[key] = hist.get_value_at_percentile(p) / 1000.0 if count else None
    out["min"] = hist.get_min_value() / 1000.0 if count else None
    out["max"] = hist.get_max_value() / 1000.0 if count else None
    out["mean"] = hist.get_mean_value() / 1000.0 if count else None
    return out
