"""A protocol profile: read once, checked once, compiled into typed data the agent's hot path uses.

The file format is docs/protocols.md's. The agent never sees the raw mapping: templates are compiled
(loadgen.protocols.template), inbound rules are matchers (loadgen.protocols.match), a binary codec is an
instance of the class the profile names.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os

import yaml

from loadgen.errors import UsageError
from loadgen.protocols.match import Extract, Fields, Match, json_fields
from loadgen.protocols.template import MESSAGE_FIELDS, Template

SHIPPED_DIR = os.path.dirname(os.path.abspath(__file__))
SHIPPED = ("reference", "xmpp", "mqtt")
# what an inbound frame is, as the agent's frame kinds (loadgen.agent.frames: MSG, ECHO, ACK, PONG, ERROR, OTHER)
KINDS = ("delivery", "ack", "pong", "error", "ignore")
KIND_CODES = {"delivery": 0, "ack": 2, "pong": 3, "error": 4, "ignore": 5}
DELIVERY, ACK, PONG, ERROR, IGNORE = 0, 2, 3, 4, 5
ACTIONS = ("send", "echo", "heartbeat", "close")
TOP_KEYS = ("name", "description", "frames", "codec", "vars", "derived", "connect", "login", "actions", "inbound",
            "unmatched")
CONN_FIELDS = ("user", "token")
DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 300.0


def digest_of(raw: dict) -> str:
    """The profile's identity: the same mapping gives the same digest on every host."""
    canon = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canon.encode()).hexdigest()[:16]


def read(name_or_path: str) -> dict:
    """A shipped profile's name or a YAML/JSON file -> its mapping (checked by compile())."""
    if name_or_path in SHIPPED:
        path = os.path.join(SHIPPED_DIR, f"{name_or_path}.yaml")
    else:
        path = name_or_path
        if not os.path.exists(path):
            raise UsageError(f"--protocol {name_or_path!r} is neither a shipped profile ({', '.join(SHIPPED)}) "
                             "nor a file")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except OSError as exc:
        raise UsageError(f"--protocol {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"--protocol {path} is not YAML/JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"--protocol {path} must hold a mapping (name, connect, actions, inbound, ...)")
    return raw


class Action:
    """One frame the agent writes: a text template, or (binary profiles) a mapping of fields for the codec."""

    __slots__ = ("text", "fields", "codec", "where")

    def __init__(self, spec, where: str, codec) -> None:
        self.where, self.codec = where, codec
        self.text = self.fields = None
        if codec is None:
            self.text = Template.compile(spec, where)
        else:
            if not isinstance(spec, dict) or not spec:
                raise UsageError(f"protocol: {where} must be a mapping of fields for the codec")
            self.fields = {k: Template.compile(v, f"{where}.{k}") if isinstance(v, str) else v
                           for k, v in spec.items()}
            try:
                codec.check(spec)
            except ValueError as exc:
                raise UsageError(f"protocol: {where}: {exc}") from None

    def templates(self) -> list[Template]:
        return [self.text] if self.text is not None else [v for v in self.fields.values() if isinstance(v, Template)]

    def names(self) -> set[str]:
        return {n for t in self.templates() for n in t.names}

    def check_names(self, allowed) -> None:
        for t in self.templates():
            t.check_names(allowed)

    def bind(self, values: dict) -> "Action":
        out = Action.__new__(Action)
        out.where, out.codec = self.where, self.codec
        out.text = self.text.bind(values) if self.text is not None else None
        out.fields = {k: v.bind(values) if isinstance(v, Template) else v for k, v in self.fields.items()} \
            if self.fields is not None else None
        return out

    def render(self, values: dict) -> bytes:
        if self.text is not None:
            return self.text.render(values)
        return self.codec.encode({k: v.render(values) if isinstance(v, Template) else v
                                  for k, v in self.fields.items()})

    def renderer(self):
        """f(to, from, id, ts, body, group) -> frame bytes (the action bound to its connection first)."""
        if self.text is not None:
            return self.text.message_renderer()
        parts = [(k, v.message_renderer() if isinstance(v, Template) else None, v) for k, v in self.fields.items()]
        encode = self.codec.encode

        def render(*args):
            return encode({k: (r(*args) if r is not None else v) for k, r, v in parts})
        return render


class Expect:
    __slots__ = ("match", "captures", "timeout_s")

    def __init__(self, match: Match, captures: list[tuple[str, Extract]], timeout_s: float) -> None:
        self.match, self.captures, self.timeout_s = match, captures, timeout_s


class Rule:
    __slots__ = ("match", "kind", "ts", "needs_fields")

    def __init__(self, match: Match, kind: int, ts: Extract | None) -> None:
        self.match, self.kind, self.ts = match, kind, ts
        # a frame is parsed (JSON or codec) only for a rule that reads its fields
        self.needs_fields = match.needs_fields or (ts is not None and ts.needs_fields)


class Bound:
    """One connection's frames: renderers f(to, from, id, ts, body, group) and the polite close."""

    __slots__ = ("send", "echo", "heartbeat", "close")

    def __init__(self, send, echo, heartbeat, close) -> None:
        self.send, self.echo, self.heartbeat, self.close = send, echo, heartbeat, close


class Profile:
    """A compiled profile. `classify(payload)` -> (kind, scheduled send time or None)."""

    def __init__(self, raw: dict, digest: str) -> None:
        if not isinstance(raw, dict):
            raise UsageError("protocol: a profile is a mapping")
        unknown = sorted(set(raw) - set(TOP_KEYS))
        if unknown:
            raise UsageError(f"protocol: unknown key(s) {', '.join(unknown)} (known: {', '.join(TOP_KEYS)})")
        self.raw, self.digest = raw, digest
        self.name = raw.get("name")
        if not isinstance(self.name, str) or not self.name:
            raise UsageError("protocol: 'name' must be a non-empty text")
        frames = raw.get("frames", "text")
        if frames not in ("text", "binary"):
            raise UsageError(f"protocol: frames {frames!r} is not one of: text, binary")
        self.binary = frames == "binary"
        self.codec = self._codec(raw.get("codec"))
        self.decode = self.codec.decode if self.codec is not None else json_fields
        known = set(CONN_FIELDS)
        self.vars = self._vars(raw.get("vars", {}))
        known |= set(self.vars)
        self.derived = []
        for name, spec in self._mapping(raw.get("derived", {}), "derived").items():
            if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("base64", "text"):
                raise UsageError(f"protocol: derived.{name} must be {{base64: TEMPLATE}} or {{text: TEMPLATE}}")
            how, text = next(iter(spec.items()))
            tpl = Template.compile(text, f"derived.{name}")
            tpl.check_names(known)
            self.derived.append((name, how, tpl))
            known.add(name)
        connect = self._mapping(raw.get("connect", {}), "connect")
        bad = sorted(set(connect) - {"path", "headers", "subprotocols"})
        if bad:
            raise UsageError(f"protocol: connect has unknown key(s) {', '.join(bad)} (known: path, headers, subprotocols)")
        self.path = Template.compile(connect.get("path", "/"), "connect.path")
        self.path.check_names(known)
        if not self.path.fmt.startswith(b"/"):
            raise UsageError("protocol: connect.path must start with /")
        self.headers = []
        for name, value in self._mapping(connect.get("headers", {}), "connect.headers").items():
            tpl = Template.compile(value, f"connect.headers.{name}")
            tpl.check_names(known)
            self.headers.append((str(name), tpl))
        subs = connect.get("subprotocols", [])
        if not isinstance(subs, list) or not all(isinstance(s, str) and s for s in subs):
            raise UsageError("protocol: connect.subprotocols must be a list of names")
        if subs:
            self.headers.append(("Sec-WebSocket-Protocol", Template.compile(", ".join(subs), "connect.subprotocols")))
        self.needs_token = any("token" in t.names for _, t in self.headers) or "token" in self.path.names
        self.login = self._login(raw.get("login", []), known)  # adds the captures to known
        self.actions = self._actions(raw.get("actions"), known)
        self.needs_token = self.needs_token or any("token" in a.names() for a in self.actions.values()) or any(
            isinstance(s, Action) and "token" in s.names() for s in self.login) or any(
            "token" in t.names for _, _, t in self.derived)
        self.rules = self._rules(raw.get("inbound"))
        unmatched = raw.get("unmatched", "ignore")
        if unmatched not in ("ignore", "error"):
            raise UsageError(f"protocol: unmatched {unmatched!r} is not one of: ignore, error")
        self.unmatched = KIND_CODES[unmatched]
        self.has_ack = any(r.kind == ACK for r in self.rules)
        if not any(r.kind == DELIVERY for r in self.rules):
            raise UsageError("protocol: inbound needs a rule of kind delivery (what a received message looks like)")

    # --- reading the parts -------------------------------------------------------------------------
    @staticmethod
    def _mapping(value, where: str) -> dict:
        if not isinstance(value, dict):
            raise UsageError(f"protocol: {where} must be a mapping")
        return value

    def _vars(self, value) -> dict:
        out = {}
        for k, v in self._mapping(value, "vars").items():
            if not isinstance(v, (str, int)) or isinstance(v, bool):
                raise UsageError(f"protocol: vars.{k} must be text or a whole number")
            if k in MESSAGE_FIELDS or k in CONN_FIELDS:
                raise UsageError(f"protocol: vars.{k} would hide the built-in placeholder {{{k}}}")
            out[str(k)] = str(v).encode()
        return out

    @staticmethod
    def _codec(spec):
        if spec is None:
            return None
        if not isinstance(spec, str) or ":" not in spec:
            raise UsageError(f"protocol: codec {spec!r} must be 'module:Class'")
        module, _, cls = spec.partition(":")
        try:
            return getattr(importlib.import_module(module), cls)()
        except (ImportError, AttributeError) as exc:
            raise UsageError(f"protocol: codec {spec}: {exc}") from None

    def _login(self, steps, known: set) -> list:
        if not isinstance(steps, list):
            raise UsageError("protocol: login must be a list of steps (send, or expect with capture and timeout)")
        out = []
        for i, step in enumerate(steps):
            where = f"login[{i}]"
            if not isinstance(step, dict):
                raise UsageError(f"protocol: {where} must be a mapping with send or expect")
            if set(step) == {"send"}:
                action = Action(step["send"], f"{where}.send", self.codec)
                action.check_names(known)
                out.append(action)
                continue
            if "expect" not in step or set(step) - {"expect", "capture", "timeout"}:
                raise UsageError(f"protocol: {where} must be {{send: FRAME}} or {{expect: MATCH, capture: ..., "
                                 "timeout: SECONDS}")
            timeout = step.get("timeout", DEFAULT_TIMEOUT_S)
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT_S:
                raise UsageError(f"protocol: {where}.timeout must be seconds between 0 and {MAX_TIMEOUT_S:g}")
            captures = []
            for name, spec in self._mapping(step.get("capture", {}), f"{where}.capture").items():
                if name in MESSAGE_FIELDS or name in CONN_FIELDS or name in self.vars:
                    raise UsageError(f"protocol: {where}.capture.{name} would hide the placeholder {{{name}}}")
                captures.append((str(name), Extract(spec, f"{where}.capture.{name}")))
                known.add(str(name))
            out.append(Expect(Match(step["expect"], f"{where}.expect"), captures, float(timeout)))
        return out

    def _actions(self, spec, known: set) -> dict:
        spec = self._mapping(spec, "actions") if spec is not None else {}
        bad = sorted(set(spec) - set(ACTIONS))
        if bad:
            raise UsageError(f"protocol: actions has unknown key(s) {', '.join(bad)} (known: {', '.join(ACTIONS)})")
        if "send" not in spec:
            raise UsageError("protocol: actions.send is required (the frame that sends a message to a peer)")
        out = {}
        for name, value in spec.items():
            action = Action(value, f"actions.{name}", self.codec)
            allowed = known | set(MESSAGE_FIELDS) if name in ("send", "echo") else \
                known | {"ts"} if name == "heartbeat" else known
            action.check_names(allowed)
            out[name] = action
        return out

    def _rules(self, spec) -> list[Rule]:
        if not isinstance(spec, list) or not spec:
            raise UsageError("protocol: inbound must be a list of rules {match: ..., kind: ..., ts: ...}")
        out = []
        for i, rule in enumerate(spec):
            where = f"inbound[{i}]"
            if not isinstance(rule, dict) or set(rule) - {"match", "kind", "ts"} or "match" not in rule:
                raise UsageError(f"protocol: {where} must be {{match: MATCH, kind: {'|'.join(KINDS)}, ts: EXTRACT}}")
            kind = rule.get("kind")
            if kind not in KINDS:
                raise UsageError(f"protocol: {where}.kind {kind!r} is not one of: {', '.join(KINDS)}")
            ts = Extract(rule["ts"], f"{where}.ts") if "ts" in rule else None
            if kind == "delivery" and ts is None:
                raise UsageError(f"protocol: {where}: a delivery rule needs ts (where the scheduled send time is)")
            out.append(Rule(Match(rule["match"], f"{where}.match"), KIND_CODES[kind], ts))
        return out

    # --- per connection ----------------------------------------------------------------------------
    def connection_values(self, user: bytes, token: str) -> dict:
        """A connection's values before login: user, token, vars, derived."""
        values = dict(self.vars)
        values["user"] = user
        values["token"] = token.encode()
        for name, how, tpl in self.derived:
            text = tpl.render(values)
            values[name] = base64.b64encode(text) if how == "base64" else text
        return values

    def bind(self, values: dict) -> "Bound":
        """The actions of one connection (after login: its captures are in values)."""
        send = self.actions["send"]
        echo = self.actions.get("echo")
        # without an echo action, an echo is a message to oneself
        echo = echo.bind(values) if echo is not None else send.bind({**values, "to": values["user"]})
        beat = self.actions.get("heartbeat")
        close = self.actions.get("close")
        return Bound(send.bind(values).renderer(), echo.renderer(),
                     beat.bind(values).renderer() if beat is not None else None,
                     close.render(values) if close is not None else None)

    def classify(self, payload: bytes) -> tuple[int, int | None]:
        fields = None
        for rule in self.rules:
            if fields is None and rule.needs_fields:
                fields = Fields(payload, self.decode)
            if rule.match.matches(payload, fields):
                return rule.kind, rule.ts.integer(payload, fields) if rule.ts is not None else None
        return self.unmatched, None


def compile_profile(raw: dict, digest: str | None = None) -> Profile:
    """Check a profile (and, when given, that it is the one the digest names)."""
    actual = digest_of(raw)
    if digest is not None and digest != actual:
        raise UsageError(f"plan: the protocol profile's digest is {actual}, the plan says {digest}: "
                         "the profile was changed after the plan was written")
    return Profile(raw, actual)


def load(name_or_path: str) -> Profile:
    return compile_profile(read(name_or_path))


def shipped_digest(name: str) -> str:
    return digest_of(read(name))
