"""The compiler: resolved site → intended LOT routes per node → rendered, verified text."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lotdeploy.compiler.routes import ROUTE_FILE

if TYPE_CHECKING:
    from lotdeploy.compiler.compile import NodeArtifact, compile_node, compile_site

__all__ = ["ROUTE_FILE", "NodeArtifact", "compile_node", "compile_site"]

#: Loaded on first use (PEP 562): `plan` needs only ROUTE_FILE, not Jinja and the templates.
_LAZY = frozenset({"NodeArtifact", "compile_node", "compile_site"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module("lotdeploy.compiler.compile"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
