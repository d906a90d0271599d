"""Parse LOT route text into the `lotdeploy.lot.ast` tree.

The compiler parses back every file it renders (tens of thousands of routes for a large
mesh), so the parser is tuned: one LALR parser built once per process, the contextual lexer,
and the AST built by a transformer run inside the parser (no parse tree is ever built).

Every failure, whatever the input string, surfaces as `LotSyntaxError(file, line, col, msg)`
pointing at the offending token: a lark exception or a traceback reaching a user is a bug.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from lark import Lark, Token, Transformer
from lark.exceptions import (
    LarkError,
    UnexpectedCharacters,
    UnexpectedInput,
    UnexpectedToken,
)
from lark.indenter import Indenter

from lotdeploy.errors import LotSyntaxError
from lotdeploy.lot.ast import (
    SENSITIVE_KEYS,
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
from lotdeploy.lot.fastpath import fast_parse
from lotdeploy.secret import SENSITIVE

__all__ = ["parse", "parse_file"]

#: How a value may be written; quoted in every "expected a value" message.
VALUE_FORMS = '(a "string", \'int\', int, true/false, GET SECRET "X")'

_VALUE_TERMINALS = frozenset({"STRING", "QINT", "INT", "TRUE", "FALSE", "_GET"})
_KEYWORDS = frozenset({"DEFINE", "ROUTE", "WITH", "TYPE", "ADD", "GET", "SECRET", "ENV"})
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LEADING_BLANKS = re.compile(r"[ \t]*")

# Human names of grammar terminals, for "expected ..." messages.
_TERMINAL_NAMES: dict[str, str] = {
    "NAME": "a name",
    "UPPER": "an UPPER_CASE name",
    "STRING": 'a "string"',
    "QINT": "a 'quoted' int",
    "INT": "an int",
    "TRUE": "true",
    "FALSE": "false",
    "_NL": "end of line",
    "$END": "end of file",
    "_INDENT": "an indented line",
    "_DEDENT": "end of block",
    "_ROUTE": "ROUTE",
    "_TYPE": "TYPE",
    "_GET": "GET",
}


class _Located(Exception):
    """Raised inside the lark pipeline (postlexer, transformer); `parse` adds the file name."""

    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.column = column
        self.message = message


class LotIndenter(Indenter):
    """Lark's Indenter, made re-entrant and strict for LOT.

    The stock `Indenter.process` keeps its indentation stack on the instance, which the one
    shared parser would share between threads; this version keeps it in the generator. It
    also rejects tabs in indentation, and gives _INDENT/_DEDENT tokens the position of the
    first character of the line they start, so "unexpected indentation" points at that line.
    """

    NL_type = "_NL"
    OPEN_PAREN_types: ClassVar[list[str]] = []
    CLOSE_PAREN_types: ClassVar[list[str]] = []
    INDENT_type = "_INDENT"
    DEDENT_type = "_DEDENT"
    tab_len = 4  # unused: a tab is an error

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        return _indented(stream)


def _indented(stream: Iterator[Token]) -> Iterator[Token]:
    """Yield `stream`, inserting _INDENT/_DEDENT after each _NL by its trailing indentation."""
    levels = [0]
    token = None
    for token in stream:
        yield token
        if token.type != "_NL":
            continue
        _, newline, indent_str = token.value.rpartition("\n")
        if not newline:  # a comment at the very end: no following line
            continue
        line = _pos(token.end_line)
        if "\t" in indent_str:
            raise _Located(
                line,
                indent_str.index("\t") + 1,
                "tab in indentation (indent with 4 spaces per level)",
            )
        indent = len(indent_str)
        column = indent + 1
        if indent > levels[-1]:
            levels.append(indent)
            yield Token(
                "_INDENT", indent_str, token.end_pos, line, column, line, column, token.end_pos
            )
        elif indent < levels[-1]:
            while indent < levels[-1]:
                levels.pop()
                yield Token(
                    "_DEDENT", indent_str, token.end_pos, line, column, line, column, token.end_pos
                )
            if indent != levels[-1]:
                raise _Located(
                    line,
                    column,
                    f"inconsistent indentation: column {column} matches no enclosing block"
                    f" (expected column {levels[-1] + 1}; indent with 4 spaces per level)",
                )
    while len(levels) > 1:  # close blocks still open at the end of the input
        levels.pop()
        if token is None:  # pragma: no cover - an indent needs at least one token
            break
        yield Token("_DEDENT", "", token.end_pos, token.end_line, token.end_column)


class _ToAst(Transformer[Token, tuple[Route, ...]]):
    """Grammar rule -> AST node. Called by the LALR parser on each reduction (no parse tree).

    Methods take the raw child list (no `v_args` wrapper: one call less per node).
    """

    def start(self, children: list[Any]) -> tuple[Route, ...]:
        return tuple(children)

    def route(self, children: list[Any]) -> Route:
        # DEFINE NAME WITH UPPER block*   (ROUTE and TYPE are filtered out)
        define, name, type_ = children[0], children[1], children[3]
        return Route(name.value, type_.value, tuple(children[4:]), define.line, define.column)

    def block(self, children: list[Any]) -> Block:
        # ADD UPPER [NAME] (setting | block)*
        add, kind = children[0], children[1]
        rest = children[2:]
        name = None
        if rest and isinstance(rest[0], Token):
            name = rest[0].value
            rest = rest[1:]
        settings = tuple(item for item in rest if type(item) is Setting)
        nested = tuple(item for item in rest if type(item) is Block)
        return Block(kind.value, name, settings, nested, add.line, add.column)

    def setting(self, children: list[Token]) -> Setting:
        # WITH UPPER value-token | WITH UPPER (SECRET|ENV) STRING   (GET is filtered out)
        with_, key, first = children[0], children[1], children[2]
        kind = first.type
        value: Value
        if kind == "STRING":
            value = string_value(first.value[1:-1])
        elif kind == "QINT":
            value = Int(_to_int(first, first.value[1:-1]), quoted=True)
        elif kind == "INT":
            value = Int(_to_int(first, first.value), quoted=False)
        elif kind == "TRUE" or kind == "FALSE":
            value = Bool(kind == "TRUE")
        elif kind == "SECRET":
            value = SecretRef(children[3].value[1:-1])
        else:
            value = EnvRef(children[3].value[1:-1])
        return Setting(key.value, value, _pos(with_.line), _pos(with_.column))


def _to_int(token: Token, digits: str) -> int:
    """int(), but Python's 4300-digit conversion limit becomes a located syntax error."""
    try:
        return int(digits)
    except ValueError:
        raise _Located(token.line or 1, token.column or 1, "integer too large") from None


@functools.cache
def _lark() -> Lark:
    """The one parser, built on first use (~tens of ms).

    No `cache=True`: lark would pickle the tables into the shared temp directory and unpickle
    them on the next start, which a deploy tool often running as root should not trust.
    """
    grammar = resources.files(__package__).joinpath("grammar.lark").read_text(encoding="utf-8")
    return Lark(
        grammar,
        parser="lalr",
        lexer="contextual",
        postlex=LotIndenter(),
        transformer=_ToAst(),
        maybe_placeholders=False,
    )


def parse(text: str, filename: str = "<string>") -> tuple[Route, ...]:
    """Parse LOT text (any number of routes) into Route trees.

    Tries the line-at-a-time fast path first (rendered files: ~8x faster than lark), and
    hands anything it is not sure of to the lark parser, which is the authority: same AST and
    positions for what the fast path accepts, and every error message.
    Raises LotSyntaxError for every malformed input, located at the offending token.
    """
    routes = fast_parse(text)
    if routes is not None:
        return routes
    return parse_with_lark(text, filename)


def parse_with_lark(text: str, filename: str = "<string>") -> tuple[Route, ...]:
    """Parse with the grammar only (LALR, contextual lexer, inline transformer)."""
    source = text if text.endswith("\n") else text + "\n"  # every line ends with a _NL
    _check_first_line(source, filename)
    lark = _lark()  # outside the try: a broken grammar is a bug, not a syntax error
    try:
        routes: tuple[Route, ...] = lark.parse(source)  # type: ignore[assignment]
    except _Located as exc:
        raise LotSyntaxError(filename, exc.line, exc.column, exc.message) from None
    except UnexpectedToken as exc:
        line, column, message = _unexpected_token(exc, text)
        raise LotSyntaxError(filename, line, column, _guarded(message, source, line)) from None
    except UnexpectedCharacters as exc:
        line, column, message = _unexpected_characters(exc, source)
        raise LotSyntaxError(filename, line, column, _guarded(message, source, line)) from None
    except UnexpectedInput as exc:  # pragma: no cover - LALR raises only the two above
        raise LotSyntaxError(filename, _pos(exc.line), _pos(exc.column), "syntax error") from None
    except (LarkError, RecursionError) as exc:  # pragma: no cover - defensive
        raise LotSyntaxError(filename, 1, 1, f"cannot parse: {type(exc).__name__}") from None
    return routes


def parse_file(path: str | Path) -> tuple[Route, ...]:
    """Read a UTF-8 LOT file and parse it; unreadable files are LotSyntaxError at 1:1."""
    filename = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LotSyntaxError(
            filename, 1, 1, f"not valid UTF-8 (byte offset {exc.start}: {exc.reason})"
        ) from None
    except OSError as exc:
        raise LotSyntaxError(filename, 1, 1, f"cannot read file: {exc.strerror or exc}") from None
    return parse(text, filename)


# ---- error messages ----------------------------------------------------------------------


def _pos(value: object) -> int:
    """Lark positions may be '?' or None; a LotSyntaxError always carries 1-based ints."""
    return value if isinstance(value, int) and value >= 1 else 1


def _check_first_line(text: str, filename: str) -> None:
    """Indentation of the first line: no _NL precedes it, so the postlexer never sees it."""
    blanks = _LEADING_BLANKS.match(text)
    if not blanks or not blanks.end():
        return
    rest = text[blanks.end() :]
    if not rest or rest.startswith(("\n", "\r\n", "//")):
        return  # a blank or comment-only line
    indent = blanks.group()
    if "\t" in indent:
        raise LotSyntaxError(
            filename,
            1,
            indent.index("\t") + 1,
            "tab in indentation (indent with 4 spaces per level)",
        )
    raise LotSyntaxError(
        filename, 1, len(indent) + 1, "unexpected indentation (DEFINE starts at column 1)"
    )


_SECRET_LINE = re.compile(
    r"^[ \t]*WITH[ \t]+(" + "|".join(sorted(SENSITIVE_KEYS)) + r")\b", re.IGNORECASE
)
_ECHOED = re.compile(r"(found|unexpected character) (.*?)(;|$)")


def _guarded(message: str, source: str, line: int) -> str:
    """Never repeat what stands on a secret-bearing line (WITH PASSWORD ...): the token a
    parser could not read there may be an unquoted password. Everything else is kept."""
    lines = source.split("\n")
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    if not _SECRET_LINE.match(text):
        return message
    if message.startswith("keywords are upper case"):
        return "keywords are upper case (WITH, ADD, DEFINE, GET ...)"
    return _ECHOED.sub(lambda m: f"{m.group(1)} {SENSITIVE}{m.group(3)}", message)


def _found(token: Token) -> str:
    """Describe a token for 'found ...' in a message."""
    if token.type == "_NL":
        return "a comment" if token.value.startswith("//") else "end of line"
    if token.type in ("$END", "_INDENT", "_DEDENT"):
        return _TERMINAL_NAMES[token.type]
    value = token.value if len(token.value) <= 40 else token.value[:37] + "..."
    return value if value[:1] in "\"'" and value else f"'{value}'"


def _expected(names: set[str]) -> str:
    """'X, Y or Z' from a set of terminal names, in a stable order."""
    words = sorted({_TERMINAL_NAMES.get(name, name) for name in names if name != "$END"})
    if "$END" in names:
        words.append("end of file")
    if not words:
        return "nothing"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _stack_tokens(exc: UnexpectedToken) -> list[Token]:
    """The tokens the parser had shifted but not yet reduced (the current rule's prefix)."""
    stack = getattr(exc.state, "value_stack", None) or []
    return [item for item in stack if isinstance(item, Token)]


def _acceptable(exc: UnexpectedToken) -> set[str]:
    """What the parser could take here, from its table.

    `exc.expected` is not enough: when the contextual lexer reports a token that is valid
    elsewhere, it gives the lexer's allowed set, which always includes _NL.
    """
    state = exc.state
    try:
        names = set(state.parse_conf.states[state.position])
    except (AttributeError, KeyError, TypeError):
        names = set(exc.expected)
    return {name for name in names if name.isupper()}  # terminals; rules are lower case


def _unexpected_token(exc: UnexpectedToken, text: str) -> tuple[int, int, str]:
    """Turn lark's UnexpectedToken into (line, column, helpful message)."""
    token: Token = exc.token
    expected = _acceptable(exc)
    line, column = _pos(token.line), _pos(token.column)
    found = _found(token)
    prefix = _stack_tokens(exc)
    last = prefix[-1] if prefix else None

    if token.type == "$END":
        lines = text.split("\n")
        line, column = len(lines), len(lines[-1]) + 1
    if token.type == "_INDENT":
        return line, column, "unexpected indentation (this line is deeper than its block allows)"
    if token.type in ("NAME", "UPPER") and token.value.upper() in _KEYWORDS | {"TRUE", "FALSE"}:
        upper = token.value.upper()
        if token.value != upper and upper in _KEYWORDS:
            return line, column, f"keywords are upper case: write {upper}, not {token.value}"
    if expected & _VALUE_TERMINALS and last is not None and last.type == "UPPER":
        return (
            line,
            column,
            f"expected a value after WITH {last.value} {VALUE_FORMS}, found {found}",
        )
    if last is not None and last.type == "_GET":
        return line, column, f'expected SECRET "NAME" or ENV "NAME" after GET, found {found}'
    if last is not None and last.type in ("SECRET", "ENV"):
        return line, column, f'expected a "NAME" after GET {last.value}, found {found}'
    if last is not None and last.type == "WITH" and expected == {"UPPER"}:
        return line, column, f"expected an UPPER_CASE key after WITH, found {found}"
    if last is not None and last.type == "ADD" and expected == {"UPPER"}:
        return (
            line,
            column,
            f"expected an UPPER_CASE block kind after ADD (e.g. ADD CLUSTER_CONFIG), found {found}",
        )
    if last is not None and last.type == "_ROUTE":
        return line, column, f"expected a route name after DEFINE ROUTE, found {found}"
    if last is not None and last.type == "_TYPE" and expected == {"UPPER"}:
        return line, column, f"expected an UPPER_CASE route type after WITH TYPE, found {found}"
    if "DEFINE" in expected and "ADD" not in expected:
        where = " (is it indented under its block?)" if token.value in ("WITH", "ADD") else ""
        return line, column, f"expected DEFINE ROUTE <Name> WITH TYPE <TYPE>, found {found}{where}"
    if expected == {"ADD"} and token.value == "WITH":
        return (
            line,
            column,
            "expected ADD <BLOCK>: settings belong inside a block, not directly under DEFINE",
        )
    if (
        expected <= {"_NL", "NAME"}
        and last is not None
        and last.type in ("STRING", "QINT", "INT", "TRUE", "FALSE")
    ):
        return line, column, f"expected end of line after the value, found {found}"
    return line, column, f"unexpected {found}; expected {_expected(expected)}"


def _unexpected_characters(exc: UnexpectedCharacters, source: str) -> tuple[int, int, str]:
    """Turn lark's UnexpectedCharacters (no token matches here) into a helpful message."""
    line, column = _pos(exc.line), _pos(exc.column)
    char = exc.char
    allowed = set(exc.allowed or ())
    if char == '"':
        return (
            line,
            column,
            'unterminated string (a "string" ends on its line and cannot contain ")',
        )
    if char == "'":
        if allowed & _VALUE_TERMINALS:
            return (
                line,
                column,
                "a single-quoted value must be an integer such as '1883' (write text as \"text\")",
            )
        return line, column, "unexpected single quote"
    if char == "\r":
        return line, column, "stray carriage return (lines end with LF or CRLF)"
    word = _WORD.match(source, exc.pos_in_stream or 0)
    if word and word.group().upper() in _KEYWORDS and word.group() != word.group().upper():
        return (
            line,
            column,
            f"keywords are upper case: write {word.group().upper()}, not {word.group()}",
        )
    shown = repr(char)
    if allowed & _VALUE_TERMINALS:
        history = exc.token_history or []
        key = f" after WITH {history[-1].value}" if history and history[-1].type == "UPPER" else ""
        return line, column, f"expected a value{key} {VALUE_FORMS}, found {shown}"
    return line, column, f"unexpected character {shown}; expected {_expected(allowed)}"
