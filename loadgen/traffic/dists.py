"""Distributions of the traffic model (message sizes in bytes, session lengths and pauses in seconds).

YAML forms: a number (fixed), {fixed: X}, {uniform: [LO, HI]}, {lognormal: {median: M, sigma: S, min: LO, max: HI}}
(truncated to [LO, HI]), {table: {VALUE: WEIGHT, ...}} (empirical). Every distribution samples by inverse CDF from
one uniform draw (so keyed draws stay deterministic) and gives its CDF (for goodness-of-fit tests) and its mean.
"""

from __future__ import annotations

import bisect
import math
from statistics import NormalDist

from loadgen.errors import UsageError

_STD = NormalDist()
TABLE_POINTS = 4096


class Fixed:
    def __init__(self, value: float) -> None:
        self.value = value
        self.low = self.high = self.mean = value

    def sample(self, u: float) -> float:
        return self.value

    def cdf(self, x: float) -> float:
        return 1.0 if x >= self.value else 0.0

    def to_json(self):
        return {"fixed": self.value}


class Uniform:
    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high
        self.mean = (low + high) / 2

    def sample(self, u: float) -> float:
        return self.low + u * (self.high - self.low)

    def cdf(self, x: float) -> float:
        return min(1.0, max(0.0, (x - self.low) / (self.high - self.low))) if self.high > self.low else float(x >= self.low)

    def to_json(self):
        return {"uniform": [self.low, self.high]}


class LogNormal:
    """Log-normal with this median and sigma (of the logarithm), truncated to [low, high]."""

    def __init__(self, median: float, sigma: float, low: float, high: float) -> None:
        self.median, self.sigma, self.low, self.high = median, sigma, low, high
        self.mu = math.log(median)
        self.f_low, self.f_high = self._f(low), self._f(high)
        if self.f_high - self.f_low < 1e-9:
            raise UsageError(f"lognormal median {median:g} sigma {sigma:g} has almost no mass in [{low:g}, {high:g}]")
        # The inverse CDF at TABLE_POINTS + 1 evenly spaced probabilities, interpolated linearly: the agent draws a
        # size per message, and NormalDist.inv_cdf costs a few microseconds of Python each time.
        self.table = [self._exact(i / TABLE_POINTS) for i in range(TABLE_POINTS + 1)]
        # the mean of the truncated distribution, numerically (used for figures, not per message)
        n = 2000
        self.mean = sum(self.sample((i + 0.5) / n) for i in range(n)) / n

    def _f(self, x: float) -> float:
        return _STD.cdf((math.log(x) - self.mu) / self.sigma)

    def _exact(self, u: float) -> float:
        p = self.f_low + u * (self.f_high - self.f_low)
        p = min(max(p, 1e-12), 1 - 1e-12)
        return min(self.high, max(self.low, math.exp(self.mu + self.sigma * _STD.inv_cdf(p))))

    def sample(self, u: float) -> float:
        x = u * TABLE_POINTS
        i = int(x)
        if i >= TABLE_POINTS:
            return self.table[TABLE_POINTS]
        lo = self.table[i]
        return lo + (x - i) * (self.table[i + 1] - lo)

    def cdf(self, x: float) -> float:
        if x < self.low:
            return 0.0
        if x >= self.high:
            return 1.0
        return (self._f(x) - self.f_low) / (self.f_high - self.f_low)

    def to_json(self):
        return {"lognormal": {"median": self.median, "sigma": self.sigma, "min": self.low, "max": self.high}}


class Table:
    """An empirical table of value: weight."""

    def __init__(self, table: dict[float, float]) -> None:
        self.values = sorted(table)
        total = sum(table.values())
        acc, self.cum = 0.0, []
        for v in self.values:
            acc += table[v] / total
            self.cum.append(acc)
        self.cum[-1] = 1.0
        self.weights = {v: table[v] / total for v in self.values}
        self.low, self.high = self.values[0], self.values[-1]
        self.mean = sum(v * w for v, w in self.weights.items())

    def sample(self, u: float) -> float:
        return self.values[bisect.bisect_left(self.cum, u)]

    def cdf(self, x: float) -> float:
        i = bisect.bisect_right(self.values, x)
        return self.cum[i - 1] if i else 0.0

    def to_json(self):
        return {"table": {_key(v): w for v, w in self.weights.items()}}


def _key(v: float) -> str:
    return f"{v:g}"


def _number(value, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{what} {value!r} is not a number")
    if not low <= value <= high:
        raise UsageError(f"{what} must be between {low:g} and {high:g} (got {value:g})")
    return float(value)


def parse(spec, what: str, low: float, high: float, parse_value=None):
    """One distribution from its YAML form; values must lie in [low, high]. parse_value turns a value's text
    (e.g. a duration '30s') into a number; numbers pass as they are."""

    def num(v, name):
        if isinstance(v, str) and parse_value is not None:
            v = parse_value(v, f"{what} {name}")
        return _number(v, f"{what} {name}", low, high)

    if isinstance(spec, (int, float, str)) and not isinstance(spec, bool):
        return Fixed(num(spec, "value"))
    if not isinstance(spec, dict) or len(spec) != 1:
        raise UsageError(f"{what} must be a number or one of fixed, uniform, lognormal, table (got {spec!r})")
    (kind, arg), = spec.items()
    if kind == "fixed":
        return Fixed(num(arg, "fixed"))
    if kind == "uniform":
        if not isinstance(arg, list) or len(arg) != 2:
            raise UsageError(f"{what} uniform must be [LOW, HIGH] (got {arg!r})")
        lo, hi = num(arg[0], "uniform low"), num(arg[1], "uniform high")
        if lo > hi:
            raise UsageError(f"{what} uniform low {lo:g} is above high {hi:g}")
        return Uniform(lo, hi)
    if kind == "lognormal":
        keys = {"median", "sigma", "min", "max"}
        if not isinstance(arg, dict) or set(arg) != keys:
            raise UsageError(f"{what} lognormal needs exactly median, sigma, min, max (got {arg!r})")
        lo, hi, med = num(arg["min"], "lognormal min"), num(arg["max"], "lognormal max"), num(arg["median"], "lognormal median")
        sigma = _number(arg["sigma"], f"{what} lognormal sigma", 0.01, 10)
        if not 0 < lo < hi:
            raise UsageError(f"{what} lognormal needs 0 < min < max (got {lo:g}, {hi:g})")
        return LogNormal(med, sigma, lo, hi)
    if kind == "table":
        if not isinstance(arg, dict) or not arg:
            raise UsageError(f"{what} table must map VALUE: WEIGHT (got {arg!r})")
        table = {}
        for v, w in arg.items():
            value = num(float(v) if isinstance(v, str) and _is_float(v) else v, "table value")
            table[value] = _number(w, f"{what} table weight", 0, 1e9)
        if not sum(table.values()) > 0:
            raise UsageError(f"{what} table weights add up to 0")
        return Table(table)
    raise UsageError(f"{what}: unknown distribution {kind!r} (fixed, uniform, lognormal, table)")


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
