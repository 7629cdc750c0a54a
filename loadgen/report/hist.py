"""Merged HDR histograms for the report: the agents' encoded cells as numpy count arrays.

The agents encode every interval histogram with `loadgen.results.histogram` (HdrHistogram V2, 1 us to
24 h, 3 significant digits). A report merges hundreds of thousands of those cells; decoding each one
into an `HdrHistogram` object costs ~100 us, so here a cell is decoded with the same C varint decoder
hdrh uses (`pyhdrh.decode`) into a scratch numpy array and added to an accumulator: exact counts,
the same bucket layout, ~25 us a cell. Percentiles follow hdrh's `get_value_at_percentile` exactly
(tests compare both), so a figure is a percentile of the merged counts, never an average.
"""

from __future__ import annotations

import base64
import struct
import zlib
from functools import lru_cache

import numpy as np
from pyhdrh import decode as _varint_decode  # the C decoder behind hdrh.codec

from loadgen.results import histogram as hdr

_EXT_HEADER = struct.Struct(">II")
_PAYLOAD_HEADER = struct.Struct(">IIIIqqd")
_COMPRESSION_COOKIE_BASE = 0x1C849304
_ENCODING_COOKIE_BASE = 0x1C849303


class Layout:
    """Bucket layout of the agents' histograms: value tables per counts index (from hdrh itself)."""

    def __init__(self) -> None:
        ref = hdr.new_histogram()
        self.counts_len = ref.counts_len
        self.lowest, self.highest, self.digits = ref.lowest_trackable_value, ref.highest_trackable_value, ref.significant_figures
        idx = range(self.counts_len)
        value = [ref.get_value_from_index(i) for i in idx]
        self.low = np.array([ref.get_lowest_equivalent_value(v) for v in value], dtype=np.int64)
        self.high = np.array([ref.get_highest_equivalent_value(v) for v in value], dtype=np.int64)
        self.median = self.low + (self.high - self.low + 1) // 2  # hdrh's median equivalent value
        self.value = np.array(value, dtype=np.int64)


@lru_cache(maxsize=1)
def layout() -> Layout:
    return Layout()


class Hist:
    """Counts of one merged histogram (microseconds)."""

    __slots__ = ("counts",)

    def __init__(self, counts: np.ndarray | None = None) -> None:
        self.counts = np.zeros(layout().counts_len, dtype=np.int64) if counts is None else counts

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def add(self, other: "Hist") -> None:
        self.counts += other.counts

    def add_encoded(self, cell) -> None:
        _decoder().add(self.counts, cell)

    def value_at_percentile(self, percentile: float) -> int | None:
        """hdrh semantics: the highest equivalent value of the first index reaching the target count."""
        total = self.total
        if not total:
            return None
        lay = layout()
        target = max(int(min(percentile, 100.0) * total / 100 + 0.5), 1)
        index = int(np.searchsorted(np.cumsum(self.counts), target))
        return int(lay.high[index] if percentile else lay.low[index])

    def percentiles_ms(self, points=(50, 95, 99)) -> dict:
        """The same dict as loadgen.results.histogram.percentiles_ms, from merged counts."""
        lay = layout()
        total = self.total
        out: dict = {"count": total}
        cum = np.cumsum(self.counts) if total else None
        for p in points:
            key = f"p{p:g}".replace(".", "_")
            if not total:
                out[key] = None
                continue
            target = max(int(min(p, 100.0) * total / 100 + 0.5), 1)
            out[key] = int(lay.high[int(np.searchsorted(cum, target))]) / 1000.0
        nz = np.flatnonzero(self.counts)
        out["min"] = int(lay.low[nz[0]]) / 1000.0 if total else None
        out["max"] = int(lay.high[nz[-1]]) / 1000.0 if total else None
        out["mean"] = float((self.counts[nz] * lay.median[nz]).sum()) / total / 1000.0 if total else None
        return out

    def encode(self) -> str:
        """HdrHistogram's compressed base64 text ('' when empty), readable by any HdrHistogram library."""
        h = hdr.new_histogram()
        lay = layout()
        for i in np.flatnonzero(self.counts):
            h.record_value(int(lay.value[i]), int(self.counts[i]))
        return hdr.encode(h)


class _Decoder:
    def __init__(self) -> None:
        lay = layout()
        self.scratch = np.zeros(lay.counts_len, dtype=np.int64)
        self.addr = self.scratch.ctypes.data
        self.expect = (lay.digits, lay.lowest, lay.highest)

    def add(self, into: np.ndarray, cell, also: np.ndarray | None = None) -> None:
        """Add one encoded cell to `into` (and to `also`, e.g. a per-agent total)."""
        if not isinstance(cell, str) or not cell:
            return  # empty cell (or NaN from pandas) = empty histogram
        raw = base64.b64decode(cell)
        cookie, _length = _EXT_HEADER.unpack_from(raw)
        if cookie & ~0xF0 != _COMPRESSION_COOKIE_BASE:
            raise ValueError("not an HdrHistogram V2 compressed histogram")
        data = zlib.decompress(raw[8:])
        cookie, _plen, offset, digits, lowest, highest, _ratio = _PAYLOAD_HEADER.unpack_from(data)
        if cookie & ~0xF0 != _ENCODING_COOKIE_BASE:
            raise ValueError("bad HdrHistogram payload cookie")
        if (digits, lowest, highest) != self.expect or offset:
            _add_foreign(into, cell)  # another layout: let hdrh re-record it into ours
            if also is not None:
                _add_foreign(also, cell)
            return
        res = _varint_decode(data, _PAYLOAD_HEADER.size, self.addr, len(self.scratch), 8)
        if not res["total"]:
            return
        lo, hi = res["min_nonzero_index"], res["max_nonzero_index"] + 1
        into[lo:hi] += self.scratch[lo:hi]
        if also is not None:
            also[lo:hi] += self.scratch[lo:hi]
        self.scratch[lo:hi] = 0


def _add_foreign(into: np.ndarray, cell: str) -> None:
    from hdrh.histogram import HdrHistogram

    other = HdrHistogram.decode(cell)
    mine = hdr.new_histogram()
    mine.add(other)
    lay = layout()
    for item in mine.get_recorded_iterator():
        into[int(np.searchsorted(lay.high, item.value_iterated_to))] += item.count_at_value_iterated_to


@lru_cache(maxsize=1)
def _decoder() -> _Decoder:
    return _Decoder()


def decoder() -> _Decoder:
    return _decoder()

