"""Preflight's clock measurement: the best of several round trips, with its own error stated."""

from __future__ import annotations

import pytest

from loadgen.fleet.hosts import LocalHost
from loadgen.fleet.preflight import CLOCK_SAMPLES, clock_offset, describe_clock, local_boot_id


def test_clock_offset_states_its_error_and_holds_within_it():
    f = clock_offset(LocalHost("here", {}))  # a real `date` through bash: the same clock, so the truth is 0
    assert f["clock_samples"] == CLOCK_SAMPLES
    assert f["clock_error_ms"] == pytest.approx(f["clock_rtt_ms"] / 2, abs=0.001)
    assert abs(f["clock_offset_ms"]) <= f["clock_error_ms"] + 0.002  # the remote read lies within the round trip
    text = describe_clock(f)
    assert text.startswith(f"clock offset {f['clock_offset_ms']:+.3f} ms +/- {f['clock_error_ms']:.3f} ms")
    assert f"best of {CLOCK_SAMPLES} samples" in text


def test_same_kernel_needs_no_measurement():
    assert local_boot_id()  # Linux: /proc/sys/kernel/random/boot_id
    assert describe_clock({"clock_same_kernel": True, "clock_offset_ms": 0.0}) == \
        "clock offset 0 (the controller's own clock: same kernel)"
