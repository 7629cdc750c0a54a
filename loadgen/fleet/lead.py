"""The start lead: how long after dispatch begins fab plans the agents' common start.

Before the planned start every generator must have received its plan (one round trip each, all at once), opened
its watch stream and started the agent's Python. How long that takes depends on the fleet (network, SSH, the
controller's threads, the hosts' CPU), not on a per-host constant: a guess of 4 s + 0.05 s per host gave 9 s at
100 lab generators, whose launch round trips took 17-20 s. Preflight has just made the same kind of round over
the same SSH connections (`loadgen --version` on every generator at once), so the lead follows its wall time.
"""

from __future__ import annotations

LEAD_FLOOR_S = 4.0  # never less: a fast round still leaves the agents time to import and open their workers
LEAD_ROUNDS = 3.0  # the launch round, the watch streams' opening, and the agents' start (heavier than --version)
LEAD_MARGIN_S = 2.0  # a round that happens to be slower than preflight's


def start_lead(round_s: float | None, given_s: float | None = None) -> tuple[float, str]:
    """(lead in seconds, how it was chosen): --lead when given, else
    max(LEAD_FLOOR_S, LEAD_ROUNDS x preflight's round over the generators + LEAD_MARGIN_S);
    the floor alone when no round was measured."""
    if given_s is not None:
        return float(given_s), "--lead"
    if round_s is None:
        return LEAD_FLOOR_S, f"the {LEAD_FLOOR_S:g} s floor (no preflight round measured)"
    lead = max(LEAD_FLOOR_S, LEAD_ROUNDS * round_s + LEAD_MARGIN_S)
    return round(lead, 3), (f"max({LEAD_FLOOR_S:g} s, {LEAD_ROUNDS:g} x preflight's {round_s:.2f} s round over "
                            f"the generators + {LEAD_MARGIN_S:g} s)")
