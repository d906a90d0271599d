"""YAML → plain Python, remembering where every key and value came from.

PyYAML's composer gives a node graph with start marks; we walk it ourselves so that
duplicate keys become diagnostics (not silent overwrites) and every later error, from the
schema or from semantic checks, can point at `file:line:col` of the offending value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from lotdeploy.errors import Diagnostic

Path_ = tuple[str | int, ...]

try:  # the C loader is much faster; same behaviour
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - libyaml missing
    _Loader = yaml.SafeLoader


@dataclass
class Located:
    """A loaded document plus the position of every value (and every mapping key)."""

    filename: str
    data: Any
    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def where(self, path: Path_, key: bool = False) -> tuple[int, int]:
        """Best position for `path`: the key or value itself, else its nearest ancestor."""
        table = self.keys if key else self.values
        probe = tuple(path)
        while probe:
            if probe in table:
                return table[probe]
            if probe in self.values:
                return self.values[probe]
            probe = probe[:-1]
        return self.values.get((), (1, 1))

    def error(self, path: Path_, message: str, key: bool = False, severity: str = "error") -> None:
        line, col = self.where(path, key)
        self.diagnostics.append(Diagnostic(self.filename, line, col, message, severity))


def load_located(text: str, filename: str) -> Located:
    """Parse YAML text; syntax errors and duplicate keys land in `diagnostics`."""
    located = Located(filename, None)
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        located.diagnostics.append(Diagnostic(filename, line, col, f"YAML syntax: {problem}"))
        return located
    except yaml.YAMLError as exc:
        located.diagnostics.append(Diagnostic(filename, 1, 1, f"YAML syntax: {exc}"))
        return located
    if node is None:
        located.data = None
        located.values[()] = (1, 1)
        return located
    located.data = _convert(node, (), located, depth=0)
    return located


_MAX_DEPTH = 64
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _convert(node: yaml.Node, path: Path_, located: Located, depth: int) -> Any:
    located.values[path] = _pos(node)
    if depth > _MAX_DEPTH:
        located.error(path, "document nested too deeply")
        return None
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                line, col = _pos(key_node)
                located.diagnostics.append(
                    Diagnostic(located.filename, line, col, "mapping keys must be plain strings")
                )
                continue
            key = _scalar(key_node, located, path)
            if key == "<<":
                line, col = _pos(key_node)
                located.diagnostics.append(
                    Diagnostic(
                        located.filename, line, col, "YAML merge keys (<<) are not supported"
                    )
                )
                continue
            hashable_key = (
                key if isinstance(key, str | int | float | bool) or key is None else str(key)
            )
            child = (*path, str(hashable_key))
            if hashable_key in result:
                line, col = _pos(key_node)
                first = located.keys.get(child, (0, 0))
                located.diagnostics.append(
                    Diagnostic(
                        located.filename,
                        line,
                        col,
                        f"duplicate key '{hashable_key}' (first defined at line {first[0]})",
                    )
                )
                continue
            located.keys[child] = _pos(key_node)
            result[hashable_key] = _convert(value_node, child, located, depth + 1)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _convert(item, (*path, index), located, depth + 1)
            for index, item in enumerate(node.value)
        ]
    return _scalar(node, located, path)


def _scalar(node: yaml.Node, located: Located, path: Path_) -> Any:
    """Resolve one scalar with the safe constructor (ints, bools, nulls, floats, strings)."""
    try:
        return _CONSTRUCTOR.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        line, col = _pos(node)
        located.diagnostics.append(Diagnostic(located.filename, line, col, f"YAML value: {exc}"))
        return None
