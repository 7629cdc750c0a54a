"""Which users are in which group (the traffic model's `groups:`), apart from I/O.

A worker's first `members` fraction of slots are cut into consecutive groups whose sizes are keyed draws from
the size distribution (the last group takes what is left, at least 2). Consecutive slots alternate between
gateway endpoints (loadgen.agent.pairs.node_index), so a group's members spread over the nodes. A user joins
its group at login (`groups=` in the URL, docs/protocol.md).
"""

from __future__ import annotations

from array import array

from loadgen.traffic import keyed

NO_GROUP = -1


def assign(n: int, groups, key: int) -> tuple[array, list[int]]:
    """(group index per slot or NO_GROUP, the groups' sizes) for n slots."""
    of = array("i", [NO_GROUP]) * n
    sizes: list[int] = []
    members = int(round(groups.members * n)) if groups is not None else 0
    start = 0
    while members - start >= 2:
        size = int(groups.size.sample(keyed.uniform(key, len(sizes), keyed.GROUP)) + 0.5)
        size = max(2, min(size, members - start))
        if members - start - size == 1:  # never leave a group of one behind
            size += 1
        for s in range(start, start + size):
            of[s] = len(sizes)
        sizes.append(size)
        start += size
    return of, sizes
