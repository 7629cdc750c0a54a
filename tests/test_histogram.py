import random

from hypothesis import given, settings, strategies as st

from loadgen.results import histogram as hdr


def exact_percentile(values, p):
    ordered = sorted(values)
    k = max(0, int(-(-p / 100 * len(ordered) // 1)) - 1)  # nearest-rank
    return ordered[k]


def test_merged_percentiles_equal_percentiles_of_all_samples():
    rng = random.Random(7)
    agents = [[rng.randint(100, 5_000) for _ in range(3000)],      # fast agent
              [rng.randint(20_000, 90_000) for _ in range(500)],   # slow agent
              [int(rng.expovariate(1 / 8000)) + 1 for _ in range(2000)]]
    merged = hdr.new_histogram()
    for values in agents:
        h = hdr.new_histogram()
        for v in values:
            h.record_value(v)
        hdr.merge_encoded(merged, hdr.encode(h))  # through the CSV encoding, as the report does
    everything = [v for values in agents for v in values]
    for p in (50, 95, 99, 99.9):
        want = exact_percentile(everything, p)
        got = merged.get_value_at_percentile(p)
        assert abs(got - want) <= want * 0.001 + 1, (p, got, want)
    # the average of per-agent p99s is far from the truth: the reason we merge
    per_agent = []
    for values in agents:
        per_agent.append(exact_percentile(values, 99))
    assert abs(sum(per_agent) / 3 - exact_percentile(everything, 99)) > 10_000


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(1, 10**9), min_size=1, max_size=200), min_size=1, max_size=5))
def test_merge_is_exact_for_any_split(chunks):
    merged = hdr.new_histogram()
    whole = hdr.new_histogram()
    for chunk in chunks:
        h = hdr.new_histogram()
        for v in chunk:
            h.record_value(v)
            whole.record_value(v)
        hdr.merge_encoded(merged, hdr.encode(h))
    assert merged.get_total_count() == whole.get_total_count()
    for p in (50, 90, 99, 100):
        assert merged.get_value_at_percentile(p) == whole.get_value_at_percentile(p)


def test_empty_encodes_to_empty_cell_and_clamps_out_of_range():
    empty = hdr.new_histogram()
    hdr.merge_encoded(empty, "")
    assert hdr.encode(empty) == "" and hdr.percentiles_ms(empty)["p99"] is None
    recorder = hdr.Recorder()
    recorder.record(0)
    recorder.record(10**15)
    h = recorder.to_histogram()
    assert h.get_total_count() == 2 and h.get_min_value() == hdr.LOWEST_US
    assert h.get_max_value() == h.get_highest_equivalent_value(hdr.HIGHEST_US)


def test_flush_and_merge_leave_no_histogram_for_the_collector():
    # an agent encodes 3 interval histograms per worker per second and decodes them again to merge: none of
    # them may wait for the cyclic collector (they held ~230 KB each and piled up between collections)
    import gc

    from hdrh.histogram import HdrHistogram

    recorder = hdr.Recorder()
    for v in (5, 900, 40_000, 3_000_000):
        recorder.record(v)
    total = hdr.new_histogram()
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(5):
            hdr.merge_encoded(total, hdr.encode(recorder))
        gc.collect()
        assert not [o for o in gc.garbage if isinstance(o, HdrHistogram)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert total.get_total_count() == 20
