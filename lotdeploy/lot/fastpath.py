"""A fast path for the regular LOT lotdeploy renders; lark (parser.py) stays the authority.

Profiling the lark path on a rendered 200-node mesh: ~35% LALR steps and callbacks, ~60%
lark's generic lexer (a Python-level loop per token and per run of spaces). Rendered files
are regular: one construct per line, spaces only. The fast path matches each line with one
regex and builds the AST directly. It accepts a strict subset of the grammar (spaces between
tokens and in indentation, a tab only inside a string or comment, no stray CR, ints of at
most 18 digits, at most 100 levels) and returns None for anything else, including every
error, so lark decides those and words their messages. tests/test_lot.py checks
with hypothesis that whatever it accepts, lark accepts with an equal AST and positions.
"""

from __future__ import annotations

import re
from typing import Any

from lotdeploy.lot.ast import (
    Block,
    Bool,
    EnvRef,
    Int,
    Route,
    SecretRef,
    Setting,
    Value,
    string_value,
)

_ID = r"[A-Za-z_][A-Za-z0-9_]*"
_UP = r"[A-Z][A-Z0-9_]*"
_END = r" *(?://.*)?"  # trailing spaces and an optional comment
_FAST_ROUTE = re.compile(rf"DEFINE +ROUTE +({_ID}) +WITH +TYPE +({_UP}){_END}")
_FAST_BLOCK = re.compile(rf"ADD +({_UP})(?: +({_ID}))?{_END}")
_FAST_SETTING = re.compile(
    rf"WITH +({_UP}) +"
    r"(?:\"([^\"]*)\""  # "string"
    r"|'(-?[0-9]{1,18})'"  # 'int'
    r"|(-?[0-9]{1,18})"  # int
    r"|(true|false)"
    r"|GET +(SECRET|ENV) +\"([^\"]*)\")" + _END
)
_MAX_DEPTH = 100

# A block being filled: [kind, name, settings, children, line, column]; a route: [name,
# type, blocks, line, column]. Frozen into AST nodes once the whole text is read.
_Builder = list[Any]


def fast_parse(text: str) -> tuple[Route, ...] | None:
    """Parse the common, regular form of LOT quickly; None means "ask lark"."""
    routes: list[_Builder] = []
    levels = [0]  # indentation of each open body, as the postlexer keeps it
    owners: list[_Builder | None] = [None]  # whose body each level is (None: top level)
    owner_kinds = [0]  # 0 top level, 1 route body (blocks only), 2 block body
    header: _Builder | None = None  # the previous line's route/block, which may open a body
    header_kind = 0
    lineno = 0
    for raw in text.split("\n"):
        lineno += 1
        line = raw[:-1] if raw.endswith("\r") else raw
        body = line.lstrip(" ")
        if not body or body.startswith("//"):
            continue
        if "\r" in body:
            return None
        indent = len(line) - len(body)
        if indent > levels[-1]:
            if header is None or len(levels) > _MAX_DEPTH:
                return None
            levels.append(indent)
            owners.append(header)
            owner_kinds.append(header_kind)
        elif indent < levels[-1]:
            while indent < levels[-1]:
                levels.pop()
                owners.pop()
                owner_kinds.pop()
            if indent != levels[-1]:
                return None
        header = None
        where = owner_kinds[-1]
        first = body[0]
        if first == "W" and where == 2:
            m = _FAST_SETTING.fullmatch(body)
            if m is None:
                return None
            key, string, qint, bare, boolean, ref, ref_name = m.groups()
            value: Value
            if string is not None:
                value = string_value(string)
            elif qint is not None:
                value = Int(int(qint), quoted=True)
            elif bare is not None:
                value = Int(int(bare), quoted=False)
            elif boolean is not None:
                value = Bool(boolean == "true")
            elif ref == "SECRET":
                value = SecretRef(ref_name)
            else:
                value = EnvRef(ref_name)
            owners[-1][2].append(Setting(key, value, lineno, indent + 1))  # type: ignore[index]
        elif first == "A" and where != 0:
            m = _FAST_BLOCK.fullmatch(body)
            if m is None:
                return None
            header = [m.group(1), m.group(2), [], [], lineno, indent + 1]
            header_kind = 2
            owners[-1][2 if where == 1 else 3].append(header)  # type: ignore[index]
        elif first == "D" and where == 0:
            m = _FAST_ROUTE.fullmatch(body)
            if m is None:
                return None
            header = [m.group(1), m.group(2), [], lineno, 1]
            header_kind = 1
            routes.append(header)
        else:
            return None
    # A header whose body never came is fine (the grammar makes bodies optional), but a body
    # must hold something: guaranteed, since a level is only opened by a content line.
    return tuple(
        Route(name, type_, tuple(_freeze_block(b) for b in blocks), line, column)
        for name, type_, blocks, line, column in routes
    )


def _freeze_block(b: _Builder) -> Block:
    """Builder -> frozen Block (recursion depth is bounded by _MAX_DEPTH)."""
    kind, name, settings, children, line, column = b
    return Block(
        kind, name, tuple(settings), tuple(_freeze_block(c) for c in children), line, column
    )
