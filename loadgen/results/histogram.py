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


def encode(hist) -> str:
    """Compressed base64 text ('' for an empty histogram, to keep CSV rows small). Takes a Recorder too."""
    if isinstance(hist, Recorder):
        hist = hist.to_histogram()
        try:
            return encode(hist)
        finally:
            release(hist)
    if hist.get_total_count() == 0:
        return ""
    return hist.encode().decode("ascii")


def release(hist: HdrHistogram) -> None:
    """Free a histogram now: hdrh's histogram and its encoder refer to each other, a cycle only the
    collector frees - measured, an agent's 3 interval histograms per worker per second (230 KB of counts
    each) and their decoded copies piled up by megabytes per second between collections."""
    hist.encoder.histogram = None


# HdrHistogram's bucket layout for (LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS): unit magnitude 0,
# 2048 sub-buckets (half: 1024, magnitude 10), 27 buckets. Recorder counts with the same index math.
_SUB_HALF_MAG = 10
_SUB_MASK = (1 << (_SUB_HALF_MAG + 1)) - 1  # 2047
_COUNTS_LEN = 28 << _SUB_HALF_MAG  # (bucket_count + 1) * sub_bucket_half_count
DIRECT_US = 1 << (_SUB_HALF_MAG + 1)  # values below this (2.048 ms) are their own counts index


def counts_index(value_us: int) -> int:
    """HdrHistogram's counts index of a value (same math as HdrHistogram._counts_index_for)."""
    bucket = (value_us | _SUB_MASK).bit_length() - (_SUB_HALF_MAG + 1)
    return ((bucket + 1) << _SUB_HALF_MAG) + (value_us >> bucket) - (1 << _SUB_HALF_MAG)


class Recorder:
    """An interval histogram that costs a list increment per value.

    Values are counted into a plain list laid out exactly like HdrHistogram's counts array; the
    HdrHistogram (and its standard encoding) is built once, at flush. The hot path may inline
    `counts[v] += 1` for 1 <= v < DIRECT_US (where the index is the value itself) and call
    record() otherwise.
    """

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts = [0] * _COUNTS_LEN

    def record(self, value_us: int) -> None:
        """Record one duration, clamped into the trackable range (never dropped)."""
        if value_us < DIRECT_US:
            self.counts[value_us if value_us >= LOWEST_US else LOWEST_US] += 1
        else:
            if value_us > HIGHEST_US:
                value_us = HIGHEST_US
            self.counts[counts_index(value_us)] += 1

    def total(self) -> int:
        return sum(self.counts)

    def to_histogram(self) -> HdrHistogram:
        hist = new_histogram()
        if not any(self.counts):
            return hist
        counts = hist.counts
        lo = hi = -1
        total = 0
        for i, c in enumerate(self.counts):
            if c:
                counts[i] = c
                total += c
                if lo < 0:
                    lo = i
                hi = i
        if total:
            hist.set_internal_tacking_values(lo, hi, total)
        return hist


def merge_encoded(into: HdrHistogram, encoded: str) -> None:
    """into.decode_and_add(encoded), freeing the decoded copy at once (see release)."""
    if encoded:
        other = HdrHistogram.decode(encoded)
        try:
            into.add(other)
        finally:
            release(other)


def percentile_ms(hist: HdrHistogram, p: float) -> float | None:
    """One percentile (as percentiles_ms gives it), for the live status: ~1 ms, where the mean that
    percentiles_ms also computes walks every bucket in Python (~70 ms)."""
    return hist.get_value_at_percentile(p) / 1000.0 if hist.get_total_count() else None


def percentiles_ms(hist: HdrHistogram, points=(50, 95, 99)) -> dict:
    """{'p50': ms, ..., 'min', 'max', 'mean', 'count'}; None values for an empty histogram."""
    count = hist.get_total_count()
    out: dict = {"count": count}
    for p in points:
        key = f"p{p:g}".replace(".", "_")
        out[key] = percentile_ms(hist, p)
    out["min"] = hist.get_min_value() / 1000.0 if count else None
    out["max"] = hist.get_max_value() / 1000.0 if count else None
    out["mean"] = hist.get_mean_value() / 1000.0 if count else None
    return out


# Prometheus bucket bounds (seconds) for latency and connect time: 8 per doubling from 0.1 ms to ~2 min, so
# histogram_quantile's interpolation inside one bucket is off by at most 9 % (a bucket is 2^(1/8) wide).
PROMETHEUS_BOUNDS_S = tuple(round(0.0001 * 2 ** (i / 8), 7) for i in range(0, 8 * 21))


_BOUND_INDEXES: dict = {}
_INDEX_VALUES_US = []


def _index_values_us():
    """Each counts index's lowest value (µs), as numpy: HdrHistogram's value_from_index, vectorized once."""
    import numpy as np

    if not _INDEX_VALUES_US:
        idx = np.arange(_COUNTS_LEN, dtype=np.int64)
        bucket = (idx >> _SUB_HALF_MAG) - 1
        sub = (idx & ((1 << _SUB_HALF_MAG) - 1)) + (1 << _SUB_HALF_MAG)
        low = bucket < 0
        sub[low] -= 1 << _SUB_HALF_MAG
        bucket[low] = 0
        _INDEX_VALUES_US.append((sub << bucket).astype(np.float64))
    return _INDEX_VALUES_US[0]


def cumulative_counts(hist: HdrHistogram, bounds_s=PROMETHEUS_BOUNDS_S) -> tuple[list[int], float]:
    """For each bound, how many recorded values are <= it (Prometheus' cumulative `le` buckets), and the sum
    of all values in seconds (each value as its bucket's lowest: within 0.1 %).

    numpy over the counts array (~1 ms), never a Python walk over its 28K entries (HdrHistogram's
    get_mean_value takes ~70 ms)."""
    import numpy as np

    counts = np.frombuffer(hist.counts, dtype=np.uint64)  # a view of HdrHistogram's ctypes array: no copy
    cum = np.cumsum(counts)
    idx = _BOUND_INDEXES.get(bounds_s)
    if idx is None:
        idx = _BOUND_INDEXES[bounds_s] = np.array(
            [counts_index(max(LOWEST_US, min(HIGHEST_US, int(round(b * 1_000_000))))) for b in bounds_s])
    total_s = float(np.dot(counts, _index_values_us())) / 1e6
    return cum[idx].tolist(), total_s
