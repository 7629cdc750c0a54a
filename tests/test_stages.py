import pytest

from loadgen.errors import UsageError
from loadgen.plan.stages import Profile, Stage, format_duration, parse_duration, parse_stage


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("1m30s", 90), ("2h", 7200), ("500ms", 0.5), ("45", 45),
                                          ("1.5m", 90), ("1h1m1s", 3661)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "10x", "1m-3s", "s", "-5", "10s10", "8d", "nan"])
def test_parse_duration_rejects(text):
    with pytest.raises(UsageError):
        parse_duration(text)


def test_format_round_trip():
    for s in (0.5, 30, 90, 3661, 7200):
        assert parse_duration(format_duration(s)) == pytest.approx(s)


def test_parse_stage():
    assert parse_stage("1m:10000") == Stage(60, 10000)
    assert str(parse_stage("1m30s:5")) == "1m30s:5"


@pytest.mark.parametrize("text", ["1m", "1m:abc", "1m:-1", "x:10", ":10", "1m:20000000"])
def test_parse_stage_rejects(text):
    with pytest.raises(UsageError):
        parse_stage(text)


def test_profile_ramps_linearly_from_zero_like_k6():
    p = Profile([Stage(10, 100), Stage(20, 100), Stage(10, 0)])
    assert p.total_s == 40 and p.peak == 100 and p.hold_s() == 20
    assert p.target_at(0) == 0
    assert p.target_at(5) == 50
    assert p.target_at(10) == 100
    assert p.target_at(25) == 100
    assert p.target_at(35) == 50
    assert p.target_at(40) == 0
    assert [p.phase_at(t) for t in (1, 15, 35, 41)] == ["ramp-up", "hold", "ramp-down", "done"]


def test_zero_length_stage_jumps():
    p = Profile([Stage(0, 200), Stage(10, 200)])
    assert p.target_at(0) == 200 and p.phase_at(0) == "hold" and p.hold_s() == 10


def test_share_splits_targets_exactly():
    p = Profile([Stage(10, 1001), Stage(10, 0)])
    shares = [p.share(i, 3) for i in range(3)]
    assert sum(s.peak for s in shares) == 1001
    assert all(s.total_s == 20 for s in shares)
    assert Profile([Stage(1, 2)]).share(2, 3) is None  # nothing left for the third part


@pytest.mark.parametrize("stages", [[], [Stage(0, 10)], [Stage(10, 0)]])
def test_profile_rejects_empty_plans(stages):
    with pytest.raises(UsageError):
        Profile(stages)
