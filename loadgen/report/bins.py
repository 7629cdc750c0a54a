"""The report's clock: which chart bin a timestamp falls in, and where a bin is drawn.

Bins are `bin_s` wide, counted from the window's t0, which is the planned start moved back by whole bins
(so the agents' one-second intervals, which end at start + 1, + 2, ..., each fill one bin instead of
straddling two). A bin is drawn at its middle. An agent row is stamped with the END of the second it
counts, so it is binned by that second's middle; a probe sample is an instant and is binned as it is.
"""

from __future__ import annotations

import numpy as np

ROW_S = 1.0  # an agent's timeseries.csv row counts the second before its ts


def sample_bins(ts, win: dict) -> np.ndarray:
    """Bin of each instantaneous sample (probes, gateway scrapes)."""
    return np.clip(((np.asarray(ts, dtype=float) - win["t0"]) // win["bin_s"]).astype("int64"), 0, win["nbins"] - 1)


def row_bins(ts, win: dict) -> np.ndarray:
    """Bin of each agent row: where the middle of the second it counts falls."""
    return sample_bins(np.asarray(ts, dtype=float) - ROW_S / 2, win)


def bin_centers(win: dict) -> np.ndarray:
    return np.arange(win["nbins"]) * win["bin_s"] + win["bin_s"] / 2 if win["nbins"] else np.array([])
