"""What a node tells about itself: each fact a shell fragment and a pure parser (as pyinfra's
facts are), read together in one command.

A fragment prints lines `KEY=value` (its own KEY), never fails the command and never
prints a secret; a parser turns its lines into the fact. `read` runs every fact asked for
in one exec (one round trip after the channel opens, however many facts), so drift, the
refresh and verify read the same things the same way.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from lotdeploy.transport.base import Transport

T = TypeVar("T")


@dataclass(frozen=True)
class Fact(Generic[T]):
    key: str
    script: str
    parse: Callable[[list[str]], T]


def read(transport: Transport, facts: Sequence[Fact[Any]], timeout: float = 30) -> list[Any]:
    """Every fact's value, in order, from one command on the node."""
    keys = [f.key for f in facts]
    if len(set(keys)) != len(keys):
        raise ValueError(f"two facts print the same key: {keys}")
    out = transport.run("; ".join([f.script for f in facts] + ["true"]), timeout=timeout).stdout
    lines: dict[str, list[str]] = {key: [] for key in keys}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in lines:
            lines[key].append(value)
    return [f.parse(lines[f.key]) for f in facts]


def _q(text: str) -> str:
    return shlex.quote(text)


def _release_of(values: list[str]) -> str | None:
    name = posixpath.basename(values[-1].strip()) if values else ""
    return name if name.isalnum() else None


def current_release(current_link: str, key: str = "current") -> Fact[str | None]:
    """The release id `current` points at (None: no `current`, or not one of ours)."""
    return Fact(key, f"echo {key}=$(readlink {_q(current_link)} 2>/dev/null || true)", _release_of)


def _sums(values: list[str]) -> dict[str, str]:
    found = {}
    for value in values:
        digest, _, path = value.partition("  ")
        if len(digest) == 64:
            found[path.strip()] = digest
    return found


def digests(key: str, paths: Mapping[str, str]) -> Fact[dict[str, str]]:
    """name -> sha256 of the file at each path (a file that is not there is left out)."""
    if not paths:
        return Fact(key, ":", lambda _: {})
    by_path = {path: name for name, path in paths.items()}
    listed = " ".join(_q(p) for p in paths.values())
    return Fact(
        key,
        f"sha256sum {listed} 2>/dev/null | sed 's/^/{key}=/'",
        lambda values: {by_path[p]: d for p, d in _sums(values).items() if p in by_path},
    )


def owner(key: str, directory: str) -> Fact[str | None]:
    """uid:gid of a directory (None: it does not exist)."""
    return Fact(
        key,
        f"echo {key}=$(stat -c %u:%g {_q(directory)} 2>/dev/null || true)",
        lambda values: (values[-1].strip() or None) if values else None,
    )


def timers(key: str, directory: str) -> Fact[tuple[list[str], list[str]]]:
    """(armed, firing) confirm-or-revert timers in `directory` (lotdeploy.rollout.confirm)."""

    def parse(values: list[str]) -> tuple[list[str], list[str]]:
        armed: list[str] = []
        firing: list[str] = []
        for value in values:
            token, _, state = value.strip().partition(".")
            (firing if state == "firing" else armed).append(token)
        return armed, firing

    return Fact(
        key,
        f"(cd {_q(directory)} 2>/dev/null && for f in *.sh *.firing; do "
        f'[ -f "$f" ] && echo "{key}=$f"; done)',
        parse,
    )
