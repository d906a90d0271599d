"""YAML → plain Python, remembering where every key and value came from.

PyYAML's composer gives a node graph with start marks; we walk it ourselves so that
duplicate keys become diagnostics (not silent overwrites) and every later error, from the
schema or from semantic checks, can point at `file:line:col` of the offending value.

Scalars are resolved here, not by YAML 1.1's implicit rules: a plain scalar is a decimal
integer (`30`, `-4`), `true` / `false`, `null` / `~` / empty, or text; anything one YAML tool
or another reads as something else (`1:30` = 90, `017`, `0o17`, `0x1F`, `1_000`, `+5`, `1e3`,
`.inf`, `yes`, `on`, `2024-01-01`) is an error saying what to write. Aliases share nodes in
the composed graph, and expanding them is bounded, so a few lines cannot expand to gigabytes.
"""

from __future__ import annotations

import re
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
    #: values taken from another file (a site's `extends:`): a problem with one of them is
    #: reported at its place in that file
    borrowed: dict[Path_, Located] = field(default_factory=dict)

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
        source = self
        for depth in range(len(path), 0, -1):
            if tuple(path[:depth]) in self.borrowed:
                source = self.borrowed[tuple(path[:depth])]
                break
        line, col = source.where(path, key)
        self.diagnostics.append(Diagnostic(source.filename, line, col, message, severity))


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
    except RecursionError:
        located.diagnostics.append(Diagnostic(filename, 1, 1, "document nested too deeply"))
        return located
    except UnicodeEncodeError as exc:  # text holding lone surrogates (never from a file)
        line = text[: exc.start].count("\n") + 1
        located.diagnostics.append(Diagnostic(filename, line, 1, "text is not valid Unicode"))
        return located
    if node is None:
        located.data = None
        located.values[()] = (1, 1)
        return located
    located.data = _Converter(located).convert(node, (), depth=0)
    return located


_MAX_DEPTH = 64
#: Nodes an alias may bring in again, summed over the document; a real spec needs a handful.
MAX_ALIAS_NODES = 10_000
_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_RESOLVER = yaml.resolver.Resolver()
_INT_11 = "tag:yaml.org,2002:int"
_FLOAT_11 = "tag:yaml.org,2002:float"
_BOOL_11 = "tag:yaml.org,2002:bool"
_NULL_11 = "tag:yaml.org,2002:null"
_DATE_11 = "tag:yaml.org,2002:timestamp"
_TEXT_11 = frozenset({_STR, "tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"})

#: Plain decimal integers, at most 18 digits (far beyond any setting; int() stays cheap).
_DECIMAL = re.compile(r"0|-?[1-9][0-9]{0,17}")
# YAML 1.2 core schema forms, which PyYAML's 1.1 rules read as text.
_BOOL_LIKE = re.compile(r"true|True|TRUE|false|False|FALSE")
_NULL_LIKE = re.compile(r"null|Null|NULL|~")
_NUMBER_LIKE = re.compile(
    r"[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+"
    r"|[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?"
    r"|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)"
)
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _shown(value: str) -> str:
    """The value for a message: short, and escaped unless plainly printable."""
    text = value if value.isprintable() else ascii(value)[1:-1]
    return text if len(text) <= 40 else text[:37] + "..."


def plain_scalar(value: str) -> tuple[Any, str | None]:
    """Resolve an unquoted scalar by the strict rules: (value, None) or (None, why not)."""
    if value in ("true", "false"):
        return value == "true", None
    if value in ("null", "~", ""):
        return None, None
    if _DECIMAL.fullmatch(value):
        return int(value), None
    tag = _RESOLVER.resolve(yaml.ScalarNode, value, (True, False))
    shown = _shown(value)
    quote = f'or quote it ("{shown}") for text'
    if tag == _BOOL_11 or (tag in _TEXT_11 and _BOOL_LIKE.fullmatch(value)):
        return (
            None,
            f"'{shown}' reads as a boolean in some YAML tools: write true or false, {quote}",
        )
    if tag == _NULL_11 or (tag in _TEXT_11 and _NULL_LIKE.fullmatch(value)):
        return None, f"'{shown}' reads as null in some YAML tools: write null, {quote}"
    if tag == _DATE_11:
        return None, f"'{shown}' reads as a date in YAML: quote it (\"{shown}\") for text"
    if re.fullmatch(r"-?[1-9][0-9]*", value):
        return None, f"'{shown}' has more than 18 digits (no setting takes such a number): {quote}"
    if tag in (_INT_11, _FLOAT_11) or _NUMBER_LIKE.fullmatch(value):
        read_as, example = "", "e.g. 90"
        if tag == _INT_11:
            try:
                number = _CONSTRUCTOR.construct_yaml_int(yaml.ScalarNode(tag, value))
            except (ValueError, yaml.YAMLError):  # pragma: no cover - the resolver matched
                number = None
            if number is not None and abs(number) < 10**18:
                read_as, example = f" (YAML 1.1 reads it as {number})", f"e.g. {number}"
        return None, (
            f"'{shown}' is not a valid integer as written{read_as}: write numbers in decimal "
            f"digits only ({example}), {quote}"
        )
    return value, None


class _Converter:
    """One walk over the composed graph; counts what aliases bring in again."""

    def __init__(self, located: Located) -> None:
        self.located = located
        self.seen: set[int] = set()
        self.active: set[int] = set()
        self.repeated = 0
        self.stopped = False

    def convert(self, node: yaml.Node, path: Path_, depth: int) -> Any:
        located = self.located
        if self.stopped:
            return None
        located.values[path] = _pos(node)
        if depth > _MAX_DEPTH:
            located.error(path, "document nested too deeply")
            return None
        ident = id(node)
        if ident in self.active:
            located.error(path, "recursive YAML alias (an alias inside its own anchor)", key=True)
            return None
        if ident in self.seen:
            self.repeated += 1
            if self.repeated > MAX_ALIAS_NODES:
                located.error(
                    path,
                    f"YAML aliases expand to more than {MAX_ALIAS_NODES} nodes; "
                    "write the values out or use `defaults:`",
                    key=True,
                )
                self.stopped = True
                return None
        self.seen.add(ident)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        self.active.add(ident)
        try:
            if isinstance(node, yaml.MappingNode):
                if node.tag != _MAP:
                    return self.tag_error(node, path)
                return self.mapping(node, path, depth)
            if isinstance(node, yaml.SequenceNode):
                if node.tag != _SEQ:
                    return self.tag_error(node, path)
                return [
                    self.convert(item, (*path, index), depth + 1)
                    for index, item in enumerate(node.value)
                ]
        finally:
            self.active.discard(ident)
        return None  # pragma: no cover - the composer makes no other node kinds

    def tag_error(self, node: yaml.Node, path: Path_) -> None:
        line, col = _pos(node)
        self.located.diagnostics.append(
            Diagnostic(
                self.located.filename,
                line,
                col,
                f"YAML tag {node.tag} is not supported (write the value plainly, "
                "or quote it for text)",
            )
        )
        return None

    def mapping(self, node: yaml.MappingNode, path: Path_, depth: int) -> dict[Any, Any]:
        located = self.located
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                line, col = _pos(key_node)
                located.diagnostics.append(
                    Diagnostic(located.filename, line, col, "mapping keys must be plain strings")
                )
                continue
            key = self.scalar(key_node, path)
            if key == "<<" and key_node.style in (None, ""):
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
            result[hashable_key] = self.convert(value_node, child, depth + 1)
        return result

    def scalar(self, node: yaml.ScalarNode, path: Path_) -> Any:
        """Quoted and block scalars are text; plain ones follow `plain_scalar`."""
        plain = node.style in (None, "")
        if not plain or node.tag != _RESOLVER.resolve(yaml.ScalarNode, node.value, (True, False)):
            if node.tag == _STR:
                return node.value
            return self.tag_error(node, path)
        value, problem = plain_scalar(node.value)
        if problem is not None:
            line, col = _pos(node)
            self.located.diagnostics.append(Diagnostic(self.located.filename, line, col, problem))
        return value
