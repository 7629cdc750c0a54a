"""The traffic model of a plan: parsed and checked once, from a `traffic:` YAML section (docs/traffic.md).

`load(NAME_OR_FILE)` reads a shipped model (loadgen/traffic/models/NAME.yaml) or a file; `TrafficModel.from_dict`
checks a model's dict (as plan.json carries it) and `to_dict` writes it back canonically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import yaml

from loadgen.errors import UsageError
from loadgen.plan.stages import parse_duration
from loadgen.traffic import dists
from loadgen.traffic.arrivals import Arrivals, Burst, Spike

MODELS_DIR = os.path.join(os.path.dirname(__file__), "models")
MAX_TYPES = 8  # the type travels in the low 3 bits of the message id (TYPE_BITS)
TYPE_BITS = 3
TARGETS = ("peer", "group")
MAX_SIZE = 1_048_576
MAX_GROUP = 10_000
KEYS = {"arrival", "types", "bursts", "spike", "churn", "groups"}


@dataclass(frozen=True)
class MessageType:
    name: str
    weight: float  # share of a user's messages, 0-1 (weights are normalized)
    size: object  # a loadgen.traffic.dists distribution, bytes
    to: str  # 'peer': the user's partner; 'group': every other member of the user's group


@dataclass(frozen=True)
class Churn:
    session: object | None  # distribution of session lengths (s); None: sessions last the whole run
    pause: object  # distribution of the pause before the user reconnects (s)
    storm_at_s: float | None = None  # a reconnect storm: `storm_fraction` of users drop together at this time
    storm_fraction: float = 0.0
    storm_pause: object | None = None


@dataclass(frozen=True)
class Groups:
    members: float  # fraction of users who are in a group
    size: object  # distribution of group sizes (members)


def _duration(value, what):
    return parse_duration(value, what) if isinstance(value, str) else value


def _seconds(value, what: str) -> float:
    v = _duration(value, what)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 7 * 86400:
        raise UsageError(f"{what} {value!r} must be a duration (e.g. 10s, 2m)")
    return float(v)


def _section(data, what: str, keys: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(data, dict):
        raise UsageError(f"{what} must be a mapping (got {data!r})")
    unknown = sorted(set(data) - keys)
    if unknown:
        raise UsageError(f"{what}: unknown key(s) {', '.join(map(str, unknown))} (known: {', '.join(sorted(keys))})")
    missing = sorted(required - set(data))
    if missing:
        raise UsageError(f"{what}: missing {', '.join(missing)}")
    return data


def _multiplier(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise UsageError(f"{what} must be between 0 and 100 (got {value!r})")
    return float(value)


class TrafficModel:
    def __init__(self, name: str, poisson: bool, types: list[MessageType], burst: Burst | None = None,
                 spike: Spike | None = None, churn: Churn | None = None, groups: Groups | None = None) -> None:
        self.name, self.poisson, self.types = name, poisson, types
        self.burst, self.spike, self.churn, self.groups = burst, spike, churn, groups
        total = sum(t.weight for t in types)
        acc, self.cum = 0.0, []
        for t in types:
            acc += t.weight / total
            self.cum.append(acc)
        self.cum[-1] = 1.0
        # members who draw no group message: the same mix without the group types
        peer_total = sum(t.weight for t in types if t.to == "peer")
        acc, self.cum_peer = 0.0, []
        for t in types:
            acc += t.weight / peer_total if t.to == "peer" and peer_total else 0.0
            self.cum_peer.append(acc)
        self.names = [t.name for t in types]
        self.max_size = int(max(t.size.high for t in types))

    @property
    def has_groups(self) -> bool:
        return any(t.to == "group" for t in self.types)

    @property
    def is_constant(self) -> bool:
        """Today's behaviour: one type to the partner, fixed size, constant arrivals, no bursts, churn or groups."""
        return (not self.poisson and len(self.types) == 1 and self.types[0].to == "peer" and self.burst is None
                and self.spike is None and self.churn is None and self.groups is None)

    def arrivals(self, rate: float) -> Arrivals:
        return Arrivals(rate, self.poisson, self.burst, self.spike)

    def weights(self) -> dict[str, float]:
        total = sum(t.weight for t in self.types)
        return {t.name: t.weight / total for t in self.types}

    def offered_mix(self) -> dict[str, float]:
        """The share of messages each type is offered at: group members draw from every type, the other users
        from the types to a partner only (so a group type's share is its weight x the member fraction)."""
        weights = self.weights()
        if self.groups is None:
            return weights
        f = self.groups.members
        peer_total = sum(w for t, w in zip(self.types, weights.values()) if t.to == "peer")
        return {t.name: f * w + ((1 - f) * w / peer_total if t.to == "peer" and peer_total else 0.0)
                for t, w in zip(self.types, weights.values())}

    def mean_size(self) -> float:
        return sum(w * t.size.mean for w, t in zip(self.weights().values(), self.types))

    # --- parsing ------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data, name: str = "traffic") -> "TrafficModel":
        what = f"traffic {name}"
        data = _section(data, what, KEYS | {"name"}, {"types"})
        name = str(data.get("name", name))
        arrival = data.get("arrival", "constant")
        if arrival not in ("constant", "poisson"):
            raise UsageError(f"{what}: arrival {arrival!r} is not one of: constant, poisson")
        raw_types = data["types"]
        if not isinstance(raw_types, dict) or not raw_types:
            raise UsageError(f"{what}: types must map NAME: {{weight, size, to}}")
        if len(raw_types) > MAX_TYPES:
            raise UsageError(f"{what}: at most {MAX_TYPES} message types (got {len(raw_types)})")
        types = []
        for tname, spec in raw_types.items():
            tw = f"{what} type {tname}"
            if not isinstance(tname, str) or not tname.replace("_", "").replace("-", "").isalnum():
                raise UsageError(f"{what}: type name {tname!r} must be letters, digits, - or _")
            spec = _section(spec, tw, {"weight", "size", "to"}, {"weight", "size"})
            weight = spec["weight"]
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= 1e6:
                raise UsageError(f"{tw}: weight must be a number above 0 (got {weight!r})")
            to = spec.get("to", "peer")
            if to not in TARGETS:
                raise UsageError(f"{tw}: to {to!r} is not one of: {', '.join(TARGETS)}")
            size = dists.parse(spec["size"], f"{tw} size", 1, MAX_SIZE)
            types.append(MessageType(tname, float(weight), size, to))
        burst = spike = churn = groups = None
        if data.get("bursts") is not None:
            b = _section(data["bursts"], f"{what} bursts", {"every", "for", "multiplier", "start"},
                         {"every", "for", "multiplier"})
            every, length = _seconds(b["every"], f"{what} bursts every"), _seconds(b["for"], f"{what} bursts for")
            if not 0 < length < every:
                raise UsageError(f"{what} bursts: 'for' must be longer than 0s and shorter than 'every'")
            burst = Burst(every, length, _multiplier(b["multiplier"], f"{what} bursts multiplier"),
                          _seconds(b.get("start", 0), f"{what} bursts start"))
        if data.get("spike") is not None:
            s = _section(data["spike"], f"{what} spike", {"at", "for", "multiplier"}, {"at", "for", "multiplier"})
            spike = Spike(_seconds(s["at"], f"{what} spike at"), _seconds(s["for"], f"{what} spike for"),
                          _multiplier(s["multiplier"], f"{what} spike multiplier"))
        if data.get("churn") is not None:
            c = _section(data["churn"], f"{what} churn", {"session", "pause", "storm"}, {"pause"})
            session = dists.parse(c["session"], f"{what} churn session", 0.1, 7 * 86400, _duration) \
                if c.get("session") is not None else None
            pause = dists.parse(c["pause"], f"{what} churn pause", 0, 86400, _duration)
            storm_at = storm_pause = None
            fraction = 0.0
            if c.get("storm") is not None:
                st = _section(c["storm"], f"{what} churn storm", {"at", "fraction", "pause"}, {"at", "fraction"})
                storm_at = _seconds(st["at"], f"{what} churn storm at")
                fraction = st["fraction"]
                if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
                    raise UsageError(f"{what} churn storm fraction must be above 0 and at most 1 (got {fraction!r})")
                storm_pause = dists.parse(st.get("pause", 1), f"{what} churn storm pause", 0, 86400, _duration)
            churn = Churn(session, pause, storm_at, float(fraction), storm_pause)
        if data.get("groups") is not None:
            g = _section(data["groups"], f"{what} groups", {"members", "size"}, {"members", "size"})
            members = g["members"]
            if isinstance(members, bool) or not isinstance(members, (int, float)) or not 0 < members <= 1:
                raise UsageError(f"{what} groups members must be a fraction above 0 and at most 1 (got {members!r})")
            size = dists.parse(g["size"], f"{what} groups size", 2, MAX_GROUP)
            groups = Groups(float(members), size)
        model = cls(name, arrival == "poisson", types, burst, spike, churn, groups)
        if model.has_groups and groups is None:
            raise UsageError(f"{what}: a type sent to 'group' needs a groups section (members, size)")
        return model

    def to_dict(self) -> dict:
        out = {"name": self.name, "arrival": "poisson" if self.poisson else "constant",
               "types": {t.name: {"weight": t.weight, "size": t.size.to_json(), "to": t.to} for t in self.types}}
        if self.burst:
            out["bursts"] = {"every": self.burst.every_s, "for": self.burst.for_s,
                             "multiplier": self.burst.multiplier, "start": self.burst.start_s}
        if self.spike:
            out["spike"] = {"at": self.spike.at_s, "for": self.spike.for_s, "multiplier": self.spike.multiplier}
        if self.churn:
            c = self.churn
            out["churn"] = {"pause": c.pause.to_json()}
            if c.session is not None:
                out["churn"]["session"] = c.session.to_json()
            if c.storm_at_s is not None:
                out["churn"]["storm"] = {"at": c.storm_at_s, "fraction": c.storm_fraction,
                                         "pause": c.storm_pause.to_json()}
        if self.groups:
            out["groups"] = {"members": self.groups.members, "size": self.groups.size.to_json()}
        return out


def shipped() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(MODELS_DIR) if f.endswith(".yaml"))


def load(name_or_file: str) -> TrafficModel:
    """A shipped model by name, or a YAML file whose `traffic:` section is the model."""
    path = os.path.join(MODELS_DIR, f"{name_or_file}.yaml")
    if not os.path.isfile(path):
        path = name_or_file
        if not os.path.isfile(path):
            raise UsageError(f"--traffic {name_or_file!r} is neither a shipped model ({', '.join(shipped())}) "
                             "nor a file")
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"--traffic {path}: cannot read it: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict) or "traffic" not in doc:
        raise UsageError(f"--traffic {path} has no 'traffic:' section")
    default_name = os.path.splitext(os.path.basename(path))[0]
    return TrafficModel.from_dict(doc["traffic"], doc["traffic"].get("name", default_name)
                                  if isinstance(doc["traffic"], dict) else default_name)
