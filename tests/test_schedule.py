import random

from loadgen.agent.schedule import OpenSchedule

S = 1_000_000_000


def test_each_user_sends_at_its_rate_with_fixed_scheduled_times():
    sched = OpenSchedule(10.0, random.Random(1))
    for u in range(5):
        sched.add(u, 0)
    fired = list(sched.due(2 * S))
    per_user = {u: [t for uu, t in fired if uu == u] for u in range(5)}
    for times in per_user.values():
        assert len(times) == 20  # 2 s at 10/s
        gaps = {b - a for a, b in zip(times, times[1:])}
        assert gaps == {S // 10}  # exactly the period: scheduled, not when the loop ran


def test_late_loop_still_reports_original_schedule():
    """No coordinated omission: a loop that wakes 1 s late gets every missed send with its own time."""
    sched = OpenSchedule(100.0, random.Random(2))
    sched.add(0, 0)
    fired = list(sched.due(S))
    assert len(fired) == 100
    assert fired[0][1] < S // 100 and fired[-1][1] <= S


def test_remove_stops_sends_and_readd_restarts():
    sched = OpenSchedule(1.0, random.Random(3))
    sched.add(7, 0)
    sched.remove(7)
    assert list(sched.due(10 * S)) == [] and 7 not in sched
    sched.add(7, 10 * S)
    assert 7 in sched and len(list(sched.due(12 * S))) == 2


def test_zero_rate_schedules_nothing():
    sched = OpenSchedule(0)
    sched.add(1, 0)
    assert sched.next_due_ns() is None and list(sched.due(100 * S)) == []


def test_phases_spread_over_one_period():
    sched = OpenSchedule(1.0, random.Random(4))
    for u in range(1000):
        sched.add(u, 0)
    first = [t for _, t in sched.due(S - 1)]
    assert len(first) == 1000  # everyone's first send within the first period
    assert max(first) - min(first) > 0.9 * S  # spread, not a thundering herd
