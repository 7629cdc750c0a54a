"""Which users are in which group (the traffic model's `groups:`), apart from I/O.

A worker's first `members` fraction of slots are cut into groups whose sizes are keyed draws from the size
distribution (the last group takes what is left, at least 2). With a gateway cluster (cross-node pairing) the
groups are cut from consecutive slots, which alternate between gateway endpoints, so a group's members spread
over the nodes; with independent gateways (same-node pairing) a group's members are all on one node (slots taken
node by node), as independent nodes cannot fan out to each other. A user joins its group at login (`groups=` in
the URL, docs/protocol.md).
"""

from __future__ import annotations

from array import array

from loadgen.traffic import keyed

NO_GROUP = -1


def assign(n: int, groups, key: int, node_of=None) -> tuple[array, list[int]]:
    """(group index per slot or NO_GROUP, the groups' sizes) for n slots. node_of(slot): the slot's gateway
    endpoint, when every group is to stay on one node (None: groups spread over the nodes)."""
    of = array("i", [NO_GROUP]) * n
    sizes: list[int] = []
    members = int(round(groups.members * n)) if groups is not None else 0
    order = list(range(members))
    if node_of is not None:
        by_node: dict[int, list[int]] = {}
        for s in order:
            by_node.setdefault(node_of(s), []).append(s)
        # a node's last group may not cross to the next node: cut each node's slots separately
        for node_slots in by_node.values():
            _cut(node_slots, groups, key, of, sizes)
        return of, sizes
    _cut(order, groups, key, of, sizes)
    return of, sizes


def _cut(slots: list[int], groups, key: int, of: array, sizes: list[int]) -> None:
    members = len(slots)
    start = 0
    while members - start >= 2:
        size = int(groups.size.sample(keyed.uniform(key, len(sizes), keyed.GROUP)) + 0.5)
        size = max(2, min(size, members - start))
        if members - start - size == 1:  # never leave a group of one behind
            size += 1
        for s in slots[start:start + size]:
            of[s] = len(sizes)
        sizes.append(size)
        start += size
