"""Facts about a full mesh's client ids proven from the format and the names, without
making the ids: a 1,000-node site has 999,000 of them, and a set of them all was most of
what render's and plan's memory grew by with the route count.

Both proofs are sufficient, not necessary: when one fails, the callers (spec checks, the
compiler) check every id, as before. They are exact where they answer True:

- `unique_by_construction`: every id can be read back to its (node, peer), so two links
  never share one. The format must name both {node} and {peer}, put a literal between any
  two placeholders, and no value a placeholder takes may hold the literal that follows it
  earlier than where the value ends (then reading left to right, each value ends at the
  first occurrence of the literal after it).
- `plain_by_construction`: every id is a plain ASCII word (`values.problem`'s first,
  always-safe case): every literal and every value is made of the plain characters, the
  id starts with a letter or digit, it fits NAME_MAX_BYTES, and it is too long to be
  "true" or "false".
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping

from lotdeploy.values import NAME_MAX_BYTES

#: The characters of values._PLAIN (after its first one).
_PLAIN_CHARS = re.compile(r"[A-Za-z0-9._:@+=,-]*")
_FIRST_PLAIN = re.compile(r"[A-Za-z0-9]")

#: (literal text before the placeholder, placeholder or None for the tail)
Pieces = list[tuple[str, str | None]]


def pieces(fmt: str) -> Pieces | None:
    """The format as (literal, field) pairs; None for anything beyond bare {field}s."""
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return None
    out: Pieces = []
    for literal, field, spec, conversion in parsed:
        if field is not None and (spec or conversion):
            return None  # {node!r}, {node:>9}: not worth proving
        out.append((literal, field))
    return out


def unique_by_construction(fmt: str, values: Mapping[str, Iterable[str]]) -> bool:
    """True when no two (node, peer) pairs can give the same id (`values`: every value
    each placeholder takes in the site)."""
    parsed = pieces(fmt)
    if parsed is None:
        return False
    fields = [field for _, field in parsed if field is not None]
    if "node" not in fields or "peer" not in fields:
        return False
    for index, (_, field) in enumerate(parsed):
        if field is None:
            continue
        if field not in values:
            return False
        following = parsed[index + 1][0] if index + 1 < len(parsed) else ""
        last_field = all(f is None for _, f in parsed[index + 1 :])
        if not following:
            if not last_field:
                return False  # "{node}{peer}": where one ends is not known
            continue  # the last placeholder runs to the end of the id (or its tail)
        if any((value + following).find(following) != len(value) for value in values[field]):
            return False
    return True


def plain_by_construction(fmt: str, values: Mapping[str, Iterable[str]]) -> bool:
    """True when every id is a plain ASCII word that fits: safe in LOT and on a command
    line (values.problem returns None for each)."""
    parsed = pieces(fmt)
    if parsed is None:
        return False
    shortest = longest = 0
    first: list[str] | None = None  # the strings the id can start with
    for literal, field in parsed:
        if not _PLAIN_CHARS.fullmatch(literal):
            return False
        shortest += len(literal)
        longest += len(literal)
        if first is None and literal:
            first = [literal]
        if field is None:
            continue
        if field not in values:
            return False
        taken = list(values[field])
        if not taken or not all(_PLAIN_CHARS.fullmatch(v) and v.isascii() for v in taken):
            return False
        shortest += min(len(v) for v in taken)
        longest += max(len(v) for v in taken)
        if first is None:
            first = taken
    if first is None or not all(_FIRST_PLAIN.match(s) for s in first):
        return False
    return longest <= NAME_MAX_BYTES and shortest > len("false")
