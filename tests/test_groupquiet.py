"""loadgen.agent.groupquiet: a member joins and leaves only while its group is quiet and idle."""

from array import array

from loadgen.agent.groupquiet import JOIN, LEAVE, GroupQuiet


def test_a_member_joins_once_its_group_is_idle_and_the_group_is_quiet_meanwhile():
    gq = GroupQuiet(array("i", [0, 0, 0, -1]), 1)
    gq.sent(0)  # member 0 sends; its ack owes 1 delivery (to member 1)
    gq.opened(2)  # member 2 connects: the group goes quiet, the join waits for the message in flight
    assert gq.quiet(0) and gq.busy(2) and gq.to_send() == []
    gq.acked(0, 1)
    assert gq.to_send() == []  # acked, but its delivery has not arrived yet
    gq.delivered(1)
    assert gq.to_send() == [(2, JOIN)] and gq.quiet(1)
    gq.joined(2)
    assert not gq.quiet(0) and not gq.busy(2) and gq.to_send() == []


def test_a_planned_close_leaves_after_the_groups_deliveries_and_acks():
    gq = GroupQuiet(array("i", [0, 0, -1]), 1)
    gq.opened(0), gq.opened(1)
    assert sorted(gq.to_send()) == [(0, JOIN), (1, JOIN)]
    gq.joined(0), gq.joined(1)
    gq.sent(0)
    gq.begin(1)  # member 1 closes as planned while member 0's message is unacked
    gq.begin(2)  # not in a group: nothing to wait for
    assert gq.busy(1) and not gq.busy(2) and gq.quiet(0) and gq.to_send() == []
    gq.refused(0)  # refused: nothing owed
    assert gq.to_send() == [(1, LEAVE)] and gq.busy(1)
    gq.left(1)
    assert not gq.busy(1) and not gq.quiet(0)


def test_a_close_during_a_join_leaves_after_it_and_an_ended_connection_settles():
    gq = GroupQuiet(array("i", [0, 0]), 1)
    gq.opened(0)
    assert gq.to_send() == [(0, JOIN)]
    gq.begin(0)  # closing while its join is on its way: it joins, then leaves
    gq.joined(0)
    assert gq.busy(0) and gq.to_send() == [(0, LEAVE)]
    gq.opened(1)
    gq.ended(0)  # dropped before the answer
    assert not gq.busy(0) and gq.to_send() == [(1, JOIN)]
    gq.ended(1)
    assert not gq.quiet(0)
    gq.opened(0)
    gq.begin(0)  # closing before its join went: never a member, nothing to leave
    assert not gq.busy(0) and not gq.quiet(0) and gq.to_send() == []


def test_a_delivery_that_never_arrives_keeps_a_join_waiting_only_for_the_bound():
    """A member dropped with a group delivery on its way to it: the delivery never arrives. A member joining meanwhile
    waits for the group's idle at most the quiet period's bound, then the group's books are written off (the report
    counts the delivery lost) and the join goes: the group does not stay silent for the rest of the run."""
    gq = GroupQuiet(array("i", [0, 0, 0]), 1, bound_ns=10)
    gq.opened(0), gq.opened(1)
    assert sorted(gq.to_send(0)) == [(0, JOIN), (1, JOIN)]
    gq.joined(0), gq.joined(1)
    gq.sent(0)
    gq.acked(0, 1)  # owes one delivery, to member 1, which drops before it arrives
    gq.ended(1)
    gq.opened(2)
    assert gq.quiet(0) and gq.to_send(100) == [] and gq.to_send(109) == []
    assert gq.to_send(110) == [(2, JOIN)] and gq.written_off == 1
    gq.joined(2)
    assert not gq.quiet(0) and gq.idle(0)
