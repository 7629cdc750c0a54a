"""Keyed random draws: a draw is a pure function of (seed, user, sequence, stream), so `--seed` fixes the whole
schedule however the event loop interleaves users, and a user's draws need no state beyond its sequence number."""

from __future__ import annotations

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
INV_2_53 = 1.0 / (1 << 53)

# streams: independent draws for one (user, sequence)
GAP, TYPE, SIZE, SESSION, PAUSE, GROUP, STORM = range(7)


def splitmix64(x: int) -> int:
    x = (x + GOLDEN) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def user_key(seed: int, name: str) -> int:
    """One 64-bit key per (seed, user name): computed once per user, the base of all its draws."""
    h = splitmix64(seed & MASK)
    for b in name.encode():
        h = splitmix64(h ^ b)
    return h


INV_2_32 = 1.0 / (1 << 32)


def message_draws(key: int, seq: int) -> tuple[float, float, float]:
    """The three uniform draws of a user's seq-th message, in (0, 1): its gap (53 bits), its type and its size
    (32 bits each, from a second round of the hash). splitmix64 inlined twice: the agent's per-message path."""
    x = ((key ^ (seq * GOLDEN & MASK)) + GOLDEN) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    x ^= x >> 31
    y = (x + GOLDEN) & MASK
    y = ((y ^ (y >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    y = ((y ^ (y >> 27)) * 0x94D049BB133111EB) & MASK
    y ^= y >> 31
    return ((x >> 11) + 0.5) * INV_2_53, ((y >> 32) + 0.5) * INV_2_32, ((y & 0xFFFFFFFF) + 0.5) * INV_2_32


def uniform(key: int, seq: int, stream: int) -> float:
    """A uniform draw in the open interval (0, 1)."""
    h = splitmix64(key ^ ((seq << 3 | stream) * GOLDEN & MASK))
    return ((h >> 11) + 0.5) * INV_2_53
