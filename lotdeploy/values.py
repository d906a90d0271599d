"""The one rule for what a value may contain, given the role it plays.

A spec value ends up in a LOT string, as a route name, as a word on a broker command line
(`-addUser <user> <password>`), or as a path on a node. interface.md section 1 knows no escape
for quotes in LOT, and the route text travels raw in a command payload, so the rule is a
refusal list, never an escaping scheme. The spec checks, the compiler, lint and the broker
client all ask this module, so a value the spec accepts is one every later layer accepts.

Bottom layer: stdlib only. Reasons never contain the value itself (it may be a password);
they name the offending character by code point at most.
"""

from __future__ import annotations

import enum
import posixpath
import re
import unicodedata
from dataclasses import dataclass

__all__ = [
    "ADDRESS_MAX_BYTES",
    "FILE_NAME_MAX_BYTES",
    "NAME_MAX_BYTES",
    "PATH_MAX_BYTES",
    "RESERVED_BUNDLE_NAMES",
    "TEXT_MAX_BYTES",
    "VALUE_MAX_BYTES",
    "Code",
    "Problem",
    "Role",
    "check_bundle_name",
    "check_command_token",
    "check_local_path",
    "check_node_path",
    "paths_overlap",
    "problem",
    "reason",
]

#: MQTT strings are length-prefixed with 16 bits: nothing longer can travel at all.
VALUE_MAX_BYTES = 65_535
#: Node names, user names, client ids: far beyond any real one, small enough to log.
NAME_MAX_BYTES = 128
#: A DNS name is at most 253 characters; an IP address is shorter.
ADDRESS_MAX_BYTES = 253
#: Shell commands and other single-line text that never reaches LOT.
TEXT_MAX_BYTES = 4_096
#: A path on a node (Linux PATH_MAX) and one of its components (NAME_MAX).
PATH_MAX_BYTES = 4_096
FILE_NAME_MAX_BYTES = 255
#: Files every bundle already has: a spec-chosen name must not replace them.
RESERVED_BUNDLE_NAMES = frozenset({"routes.lot", "manifest.json"})


class Role(enum.Enum):
    """Where a value goes; each role adds refusals to the one before it."""

    TEXT = "text"  # one line of visible text (shell commands; never LOT)
    LOT_STRING = "LOT string"  # inside "..." in a route, sent raw in -addRoute
    COMMAND_TOKEN = "command-line word"  # -addUser <user> <password>: one word
    IDENTIFIER = "route name"  # a bare LOT word and an MQTT topic level


class Code(enum.Enum):
    EMPTY = "empty"
    LINE_BREAK = "line break"
    CONTROL = "control character"
    INVISIBLE = "invisible or unsafe character"
    DOUBLE_QUOTE = "double quote"
    SINGLE_QUOTE = "single quote"
    COMMENT = "comment marker"
    LEADING_DASH = "leading dash"
    DASH_WORD = "word starting with a dash"
    SPACE = "space"
    TOO_LONG = "too long"
    NOT_IDENTIFIER = "not an identifier"
    READS_AS_BOOLEAN = "reads as a boolean"


@dataclass(frozen=True)
class Problem:
    """Why a value is refused: a code callers may word differently, and a default message."""

    code: Code
    message: str
    char: str | None = None

    def __str__(self) -> str:
        return self.message


_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
#: Starts with a letter or digit; no space, quote, slash or control character: safe in
#: every role (no leading dash, no dash word, no comment marker), as long as it fits.
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+=,-]*")
_BOOLEAN_WORDS = frozenset({"true", "false"})
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
_DASH_WORD = re.compile(r"\s-")
_CATEGORY_TEXT = {
    "Cc": "a control character",
    "Cf": "an invisible format character",
    "Cs": "a lone surrogate",
    "Co": "a private-use character",
    "Cn": "an unassigned code point",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Zs": "a space other than the ASCII space",
}


def describe_char(char: str) -> str:
    """`U+202E RIGHT-TO-LEFT OVERRIDE`: a character named without printing it."""
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X}" + (f" {name}" if name else "")


def _first_unprintable(value: str) -> str | None:
    """First character in Cc, Cf, Cs, Co, Cn, Zl, Zp or Zs (bar ' '): what str.isprintable
    refuses, so the common case is one C-speed call."""
    if value.isprintable():
        return None
    return next(c for c in value if not c.isprintable())


def _utf8_len(value: str) -> int:
    return len(value.encode("utf-8", "surrogatepass"))


def problem(value: str, role: Role, max_bytes: int = VALUE_MAX_BYTES) -> Problem | None:
    """Why `value` is unsafe in `role` (None if it is safe); the single place of the rule."""
    if role is Role.IDENTIFIER:
        if not _IDENTIFIER.fullmatch(value):
            return Problem(
                Code.NOT_IDENTIFIER, "must match ^[A-Za-z][A-Za-z0-9_]{0,63}$ (a LOT identifier)"
            )
        return None
    fits = min(max_bytes, TEXT_MAX_BYTES) if role is Role.TEXT else max_bytes
    if _PLAIN.fullmatch(value) and len(value) <= fits and value not in _BOOLEAN_WORDS:
        # A plain ASCII word (addresses, ids, user names): nothing below can refuse it.
        return None
    bad = _first_unprintable(value)
    if bad is not None:
        if bad in _LINE_BREAKS:
            return Problem(Code.LINE_BREAK, f"contains a line break ({describe_char(bad)})", bad)
        category = unicodedata.category(bad)
        if category == "Cc":
            return Problem(Code.CONTROL, f"contains control character {bad!r}", bad)
        return Problem(
            Code.INVISIBLE,
            f"contains {describe_char(bad)} ({_CATEGORY_TEXT.get(category, category)}), "
            "which could make the value read differently from what it is",
            bad,
        )
    size = _utf8_len(value)
    limit = min(max_bytes, TEXT_MAX_BYTES) if role is Role.TEXT else max_bytes
    if size > limit:
        return Problem(Code.TOO_LONG, f"is {size} bytes long (at most {limit} in UTF-8)")
    if role is Role.TEXT:
        return None
    if '"' in value:
        return Problem(Code.DOUBLE_QUOTE, "contains a double quote (LOT has no escape for it)", '"')
    if "'" in value:
        return Problem(Code.SINGLE_QUOTE, "contains a single quote", "'")
    if "//" in value:
        return Problem(Code.COMMENT, "contains // (a comment marker)")
    if value.startswith("-"):
        return Problem(Code.LEADING_DASH, "starts with - (would read as a command option)", "-")
    if _DASH_WORD.search(value):
        return Problem(
            Code.DASH_WORD, "contains a word starting with - (would read as a command option)"
        )
    if value in ("true", "false"):
        return Problem(
            Code.READS_AS_BOOLEAN, 'is "true" or "false", which LOT reads as a boolean, not text'
        )
    if role is Role.COMMAND_TOKEN:
        if not value:
            return Problem(Code.EMPTY, "is empty (a command-line word cannot be)")
        if " " in value:
            return Problem(
                Code.SPACE, "contains a space (it must be one word on a broker command line)", " "
            )
    return None


def reason(value: str, role: Role, max_bytes: int = VALUE_MAX_BYTES) -> str | None:
    """`problem()` as text, for callers that only print."""
    found = problem(value, role, max_bytes)
    return found.message if found else None


def check_command_token(value: str, max_bytes: int = VALUE_MAX_BYTES) -> str | None:
    """Why `value` cannot be a word of a broker command (`-addUser <user> <password>`,
    `-removeUser <user>`, `-changeUserPassword <user> <password>`), or None.

    The broker client calls this for every user name and password before building a
    command; the spec refuses the same user names earlier, with a position.
    """
    return reason(value, Role.COMMAND_TOKEN, max_bytes)


# --- paths -----------------------------------------------------------------------------------

#: POSIX portable file name characters, plus '+' and '@': nothing a shell or ssh reinterprets.
_PORTABLE = re.compile(r"[A-Za-z0-9._+@-]+")


def _component_problem(part: str) -> str | None:
    if len(part.encode()) > FILE_NAME_MAX_BYTES:
        return f"has a component longer than {FILE_NAME_MAX_BYTES} bytes"
    if not _PORTABLE.fullmatch(part):
        return "may only use letters, digits and . _ + @ - (portable file name characters)"
    return None


def check_node_path(value: str) -> str | None:
    """Why `value` is not a safe directory or file path on a node, or None.

    Absolute and normalised: starts with '/', no '.', '..' or empty components (so no '//'
    and no trailing '/'), portable characters only, not '/' itself. Apply code checks every
    node path it writes with this, so what it writes is what the spec shows.
    """
    bad = _first_unprintable(value)
    if bad is not None:
        return f"contains {describe_char(bad)}, which a path must not"
    if not value.startswith("/"):
        return "must be an absolute path (start with /)"
    if value == "/":
        return "must name a directory below /"
    if len(value.encode()) > PATH_MAX_BYTES:
        return f"is longer than {PATH_MAX_BYTES} bytes"
    for part in value[1:].split("/"):
        if part == "":
            return "must be normalised: no '//' and no trailing '/'"
        if part in (".", ".."):
            return f"must be normalised: no '{part}' components"
        found = _component_problem(part)
        if found:
            return found
    return None


def check_bundle_name(value: str) -> str | None:
    """Why `value` is not a plain file name inside a node bundle (cert_file...), or None.

    No '/', not '.' or '..', not hidden (atomic writes use '.name.*.tmp' beside the file),
    not a file the bundle already has.
    """
    bad = _first_unprintable(value)
    if bad is not None:
        return f"contains {describe_char(bad)}, which a file name must not"
    if not value:
        return "must not be empty"
    if "/" in value:
        return "must be a plain file name (no '/')"
    if value.startswith("."):
        return "must not start with '.' (hidden and temporary files start so)"
    if value.startswith("-"):
        return "must not start with '-'"
    if value in RESERVED_BUNDLE_NAMES:
        return f"is a file every bundle already has ({', '.join(sorted(RESERVED_BUNDLE_NAMES))})"
    return _component_problem(value)


def check_local_path(value: str) -> str | None:
    """Why `value` is not a usable path on this machine (key, known_hosts, templates...).

    These are only read, relative to the site file or absolute; any visible characters are
    fine, but no '.' or empty components, no trailing '/', and '..' only at the start.
    """
    bad = _first_unprintable(value)
    if bad is not None:
        return f"contains {describe_char(bad)}, which a path must not"
    if not value:
        return "must not be empty"
    if len(value.encode("utf-8", "surrogatepass")) > PATH_MAX_BYTES:
        return f"is longer than {PATH_MAX_BYTES} bytes"
    parts = value[1:].split("/") if value.startswith("/") else value.split("/")
    leading = True
    for part in parts:
        if part == "":
            return "must be normalised: no '//' and no trailing '/'"
        if part == ".":
            return "must be normalised: no '.' components"
        if part == "..":
            if not leading or value.startswith("/"):
                return "must be normalised: '..' only at the start of a relative path"
            continue
        leading = False
    return None


def paths_overlap(a: str, b: str) -> bool:
    """Whether two normalised absolute paths are equal or one is inside the other."""
    a, b = posixpath.normpath(a), posixpath.normpath(b)
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")
