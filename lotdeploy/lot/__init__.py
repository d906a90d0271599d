"""The LOT language: parse, render, clean and lint Coreflux route text.

Grammar in grammar.lark; the AST in ast.py (positions excluded from equality, so a route
parsed back from rendered text compares equal to the route the compiler meant).
"""

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
from lotdeploy.lot.lint import lint_file, lint_text
from lotdeploy.lot.parser import parse, parse_file

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
