"""Frame templates compiled once into a bytes %-format: no template engine on the per-message path.

A placeholder is `{name}` with a plain identifier inside; every other brace is literal text, so JSON and XML
templates need no escaping. Numbers of a message (`id`, `ts`) are formatted with %d, everything else is bytes.
"""

from __future__ import annotations

import re
from operator import itemgetter

from loadgen.errors import UsageError

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# a message's own values, in the order a message renderer takes them
MESSAGE_FIELDS = ("to", "from", "id", "ts", "body", "group")
INTEGER_FIELDS = frozenset(("id", "ts"))


def to_bytes(value) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


class Template:
    """A compiled template: `fmt % values` in the order of `names`."""

    __slots__ = ("fmt", "names", "where")

    def __init__(self, fmt: bytes, names: tuple[str, ...], where: str) -> None:
        self.fmt, self.names, self.where = fmt, names, where

    @classmethod
    def compile(cls, text, where: str) -> "Template":
        if not isinstance(text, str):
            raise UsageError(f"protocol: {where} must be text (got {type(text).__name__})")
        parts, names, pos = [], [], 0
        for m in PLACEHOLDER.finditer(text):
            parts.append(text[pos:m.start()].encode().replace(b"%", b"%%"))
            name = m.group(1)
            parts.append(b"%d" if name in INTEGER_FIELDS else b"%s")
            names.append(name)
            pos = m.end()
        parts.append(text[pos:].encode().replace(b"%", b"%%"))
        return cls(b"".join(parts), tuple(names), where)

    def check_names(self, allowed) -> None:
        unknown = [n for n in self.names if n not in allowed]
        if unknown:
            raise UsageError(f"protocol: {self.where} uses unknown placeholder {{{unknown[0]}}} "
                             f"(known here: {', '.join(sorted(allowed))})")

    def bind(self, values: dict) -> "Template":
        """Bake in the values this template knows now (a connection's user, captures...); the rest stay."""
        if not any(n in values for n in self.names):
            return self
        pieces = re.split(rb"(%[sd%])", self.fmt)
        out, names, i = [], [], 0
        for piece in pieces:
            if piece in (b"%s", b"%d"):
                name = self.names[i]
                i += 1
                if name in values:
                    out.append(to_bytes(values[name]).replace(b"%", b"%%"))
                    continue
                names.append(name)
            out.append(piece)
        return Template(b"".join(out), tuple(names), self.where)

    def render(self, values: dict) -> bytes:
        try:
            return self.fmt % tuple(values[n] if n in INTEGER_FIELDS else to_bytes(values[n]) for n in self.names)
        except KeyError as exc:
            raise UsageError(f"protocol: {self.where}: no value for {{{exc.args[0]}}}") from None

    def message_renderer(self):
        """f(to, from, id, ts, body, group) -> bytes, for a template bound to its connection."""
        self.check_names(MESSAGE_FIELDS)
        fmt = self.fmt
        if not self.names:
            return lambda *_args: fmt
        get = itemgetter(*(MESSAGE_FIELDS.index(n) for n in self.names))
        if len(self.names) == 1:
            return lambda *args: fmt % (get(args),)
        return lambda *args: fmt % get(args)
