"""The LOT language: parse, render, clean and lint Coreflux route text.

Grammar in grammar.lark; the AST in ast.py (positions excluded from equality, so a route
parsed back from rendered text compares equal to the route the compiler meant).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lotdeploy.lot.ast import (
    SENSITIVE_KEYS,
    Block,
    Bool,
    EnvRef,
    Int,
    Route,
    SecretRef,
    Setting,
    Str,
    Value,
)
from lotdeploy.lot.emit import format_route, format_routes, normalize, strip_comments

if TYPE_CHECKING:
    from lotdeploy.lot.lint import lint_file, lint_text
    from lotdeploy.lot.parser import parse, parse_file

#: Loaded on first use (PEP 562): the parser pulls in lark and its grammar, which plan and
#: render of the built-in template never need (~60 ms of their start-up).
_LAZY = {
    "lint_file": "lotdeploy.lot.lint",
    "lint_text": "lotdeploy.lot.lint",
    "parse": "lotdeploy.lot.parser",
    "parse_file": "lotdeploy.lot.parser",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SENSITIVE_KEYS",
    "Block",
    "Bool",
    "EnvRef",
    "Int",
    "Route",
    "SecretRef",
    "Setting",
    "Str",
    "Value",
    "format_route",
    "format_routes",
    "lint_file",
    "lint_text",
    "normalize",
    "parse",
    "parse_file",
    "strip_comments",
]
