"""The LOT route tree: what the parser produces and the emitter/compiler consume.

Positions (line, column) are kept for error messages but excluded from equality, so a
route parsed back from rendered text compares equal to the route the compiler intended.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lotdeploy.protocol import SENSITIVE_CLUSTER_KEYS
from lotdeploy.secret import SENSITIVE

#: Keys whose values are secrets: shown as "(sensitive)" in every repr and plan.
SENSITIVE_KEYS = SENSITIVE_CLUSTER_KEYS


@dataclass(frozen=True)
class Str:
    """A double-quoted string: WITH KEY "value"."""

    value: str


@dataclass(frozen=True)
class Int:
    """An integer; `quoted` is the vendor's documented form: WITH BROKER_PORT '1883'."""

    value: int
    quoted: bool = True


@dataclass(frozen=True)
class Bool:
    """true/false, bare (WITH USE_TLS true) or quoted ("true")."""

    value: bool
    quoted: bool = False


@dataclass(frozen=True)
class SecretRef:
    """GET SECRET "NAME": the broker resolves it from its secret store."""

    name: str


@dataclass(frozen=True)
class EnvRef:
    """GET ENV "NAME": the broker resolves it from its environment."""

    name: str


Value = Str | Int | Bool | SecretRef | EnvRef


def string_value(text: str) -> Value:
    """A double-quoted value: "true"/"false" are the quoted spelling of a Bool."""
    if text == "true" or text == "false":
        return Bool(text == "true", quoted=True)
    return Str(text)


@dataclass(frozen=True)
class Setting:
    key: str
    value: Value
    line: int = field(default=0, compare=False)
    column: int = field(default=0, compare=False)

    def __repr__(self) -> str:
        sensitive = self.key in SENSITIVE_KEYS and isinstance(self.value, Str)
        shown = SENSITIVE if sensitive else self.value
        return f"Setting({self.key}={shown!r})"


@dataclass(frozen=True)
class Block:
    """ADD <KIND> [name] followed by indented WITH settings (and, for MAPPING, nested blocks)."""

    kind: str
    name: str | None = None
    settings: tuple[Setting, ...] = ()
    children: tuple[Block, ...] = ()
    line: int = field(default=0, compare=False)
    column: int = field(default=0, compare=False)

    def get(self, key: str) -> Value | None:
        for setting in self.settings:
            if setting.key == key:
                return setting.value
        return None


@dataclass(frozen=True)
class Route:
    """DEFINE ROUTE <name> WITH TYPE <type>, then its blocks."""

    name: str
    type: str
    blocks: tuple[Block, ...] = ()
    line: int = field(default=0, compare=False)
    column: int = field(default=0, compare=False)

    def block(self, kind: str) -> Block | None:
        for block in self.blocks:
            if block.kind == kind:
                return block
        return None
