"""Preflight's clock measurement: the best of several round trips, with its own error stated; the start lead
that follows preflight's measured round over the generators."""

from __future__ import annotations

import pytest

from loadgen.fleet.hosts import LocalHost
from loadgen.fleet.lead import LEAD_FLOOR_S, LEAD_MARGIN_S, LEAD_ROUNDS, start_lead
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


def test_start_lead_follows_the_measured_round_with_a_margin_and_a_floor():
    assert (LEAD_FLOOR_S, LEAD_ROUNDS, LEAD_MARGIN_S) == (4.0, 3.0, 2.0)
    assert start_lead(0.3)[0] == 4.0  # a fast fleet: the floor
    assert start_lead(0.6)[0] == 4.0  # 3 x 0.6 + 2 = 3.8 < 4
    lead, how = start_lead(6.0)  # e.g. 100 lab hosts sharing 2 cores: 3 x 6 + 2
    assert lead == 20.0
    assert how == "max(4 s, 3 x preflight's 6.00 s round over the generators + 2 s)"
    assert start_lead(10.0)[0] > start_lead(6.0)[0]  # a slower round, a longer lead
    assert start_lead(6.0, given_s=45.0) == (45.0, "--lead")  # the override wins, whatever was measured
    assert start_lead(None, given_s=1.5) == (1.5, "--lead")
    assert start_lead(None) == (4.0, "the 4 s floor (no preflight round measured)")
