"""Inbound frame rules apart from I/O: what a frame is (match) and where a value sits in it (extract).

A match is a mapping of tests that must all hold: `prefix`, `contains`, `regex` on the frame's bytes, and
`field` ({path: value}) on the frame's fields (the JSON object of a text frame, or what a binary codec's
`decode` returns). An extract is `after` (the digits after a fixed marker: the fast path), `regex` (group 1),
or `field` (a dotted path), optionally `field` + `regex` (group 1 of the field's text).
"""

from __future__ import annotations

import json
import re

from loadgen.errors import UsageError

MATCH_KEYS = ("prefix", "contains", "regex", "field")
EXTRACT_KEYS = ("after", "regex", "field")


def _regex(text, where: str):
    if not isinstance(text, str):
        raise UsageError(f"protocol: {where} must be a regular expression as text")
    try:
        return re.compile(text.encode(), re.S)
    except re.error as exc:
        raise UsageError(f"protocol: {where} {text!r} is not a valid regular expression: {exc}") from None


def get_path(obj, path: str):
    for part in path.split("."):
        if isinstance(obj, dict):
            obj = obj.get(part)
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return None
    return obj


def _same(value, wanted) -> bool:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, bool) or isinstance(wanted, bool):
        return value is wanted
    return value == wanted or (isinstance(wanted, str) and isinstance(value, (int, float)) and str(value) == wanted)


class Fields:
    """A frame's fields, decoded at most once however many rules ask."""

    __slots__ = ("payload", "decode", "_obj")
    _UNSET = object()

    def __init__(self, payload: bytes, decode) -> None:
        self.payload, self.decode, self._obj = payload, decode, Fields._UNSET

    def get(self):
        if self._obj is Fields._UNSET:
            try:
                self._obj = self.decode(self.payload)
            except Exception:  # not JSON, or a frame the codec does not know: no fields
                self._obj = None
        return self._obj


def json_fields(payload: bytes):
    return json.loads(payload)


class Match:
    __slots__ = ("prefix", "contains", "regex", "fields", "where")

    def __init__(self, spec, where: str) -> None:
        if not isinstance(spec, dict) or not spec or set(spec) - set(MATCH_KEYS):
            raise UsageError(f"protocol: {where} must be a mapping of {', '.join(MATCH_KEYS)}")
        self.where = where
        self.prefix = spec["prefix"].encode() if "prefix" in spec else None
        self.contains = spec["contains"].encode() if "contains" in spec else None
        for key in ("prefix", "contains"):
            if key in spec and not isinstance(spec[key], str):
                raise UsageError(f"protocol: {where}.{key} must be text")
        self.regex = _regex(spec["regex"], f"{where}.regex") if "regex" in spec else None
        fields = spec.get("field")
        if fields is not None and (not isinstance(fields, dict) or not fields):
            raise UsageError(f"protocol: {where}.field must be a mapping of field path to value")
        self.fields = list(fields.items()) if fields else None

    @property
    def needs_fields(self) -> bool:
        return self.fields is not None

    def matches(self, payload: bytes, fields: Fields) -> bool:
        if self.prefix is not None and not payload.startswith(self.prefix):
            return False
        if self.contains is not None and self.contains not in payload:
            return False
        if self.regex is not None and self.regex.search(payload) is None:
            return False
        if self.fields is not None:
            obj = fields.get()
            if obj is None or not all(_same(get_path(obj, p), v) for p, v in self.fields):
                return False
        return True


class Extract:
    __slots__ = ("after", "regex", "field", "where")

    def __init__(self, spec, where: str) -> None:
        if not isinstance(spec, dict) or not spec or set(spec) - set(EXTRACT_KEYS) or \
                ("after" in spec and len(spec) > 1):
            raise UsageError(f"protocol: {where} must be one of: after, regex, field (field may add a regex)")
        self.where = where
        if "after" in spec and not isinstance(spec["after"], str):
            raise UsageError(f"protocol: {where}.after must be text")
        # after: the digits right after a fixed marker, found by one compiled search (C speed)
        self.after = re.compile(re.escape(spec["after"].encode()) + rb"(-?\d+)") if "after" in spec else None
        self.regex = _regex(spec["regex"], f"{where}.regex") if "regex" in spec else None
        if self.regex is not None and self.regex.groups < 1:
            raise UsageError(f"protocol: {where}.regex needs a group ( ) around the value")
        self.field = spec.get("field")
        if self.field is not None and not isinstance(self.field, str):
            raise UsageError(f"protocol: {where}.field must be a dotted path")

    def value(self, payload: bytes, fields: Fields):
        """The value as bytes (or a JSON scalar), None when the frame does not carry it."""
        if self.after is not None:
            m = self.after.search(payload)
            return m.group(1) if m else None
        text = payload
        if self.field is not None:
            v = get_path(fields.get(), self.field)
            if v is None or self.regex is None:
                return v
            text = v if isinstance(v, bytes) else str(v).encode()
        m = self.regex.search(text)
        return m.group(1) if m else None

    @property
    def needs_fields(self) -> bool:
        return self.field is not None

    def integer(self, payload: bytes, fields: Fields):
        v = self.value(payload, fields)
        if v is None or isinstance(v, bool):
            return None
        if isinstance(v, int):
            return v
        try:
            return int(v)
        except (TypeError, ValueError):
            return None
