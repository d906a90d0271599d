"""The one terminal sanitiser: nothing printed can drive the operator's terminal.

Text that came from outside (a broker's reply, a node's output, a file read back) may hold
escape sequences: they could rewrite lines already shown, retitle the window, hide text or
copy into the clipboard (OSC 52). `clean` shows every control character visibly instead
(`\\x1b`, `\\u009b`), keeping only newline and tab; `install` puts it, with `secret.scrub`,
on stdout and stderr for the whole run (`cli.run.main`), so every print path goes through
it: click.echo, sys.stdout.write, logging, rich.

lotdeploy's own styling is the one exception, and only on a terminal: `style` marks its
colour codes with a token no other text can hold (made fresh by each process, never
printed), which the guard turns into the real escape sequence, after cleaning everything
else around it. rich draws through `rich_console`, which cleans each piece of text rich
renders and lets only rich's own codes through.

Bottom layer: stdlib only (rich is imported inside `rich_console`).
"""

from __future__ import annotations

import io
import re
import secrets
import sys
from typing import Any, TextIO

_ASCII_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
#: Every byte but those: what `bytes.translate` deletes to find an unsafe one at C speed
#: (five times faster than the regex's search over a 40 MB plan document).
_ASCII_SAFE = bytes(b for b in range(256) if not ((b < 0x20 and b not in (9, 10)) or b == 0x7F))
#: SGR parameters lotdeploy's own `style` may ask for (reset, bold, dim, colours).
_SGR = {"green": 32, "yellow": 33, "red": 31, "magenta": 35}
#: Made fresh by each process: text from outside cannot know it, so cannot fake a style.
_TOKEN = secrets.token_hex(8)
_STYLE_MARK = re.compile(re.escape(f"\x00{_TOKEN}:") + r"([0-9;]{1,16})\x00")
_guards: list[Guard] = []


def _visible(char: str) -> str:
    code = ord(char)
    if code < 0x100 and (code < 0x20 or code == 0x7F):
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def clean(text: str) -> str:
    """`text` with every character a terminal could act on shown as an escape: C0 controls
    but newline and tab, DEL, C1 controls (U+0080-U+009F, U+009B is a one-byte CSI), and
    the invisible or direction-changing ones (`str.isprintable`'s refusals: bidi overrides,
    zero-width, line separators, lone surrogates...). Printable text is returned as it is,
    at C speed (the common case: every line of a 1,000-node plan)."""
    if text.isascii():
        if not text.encode("ascii").translate(None, _ASCII_SAFE):
            return text
        return _ASCII_UNSAFE.sub(lambda m: _visible(m.group()), text)
    if text.replace("\n", "").replace("\t", "").isprintable():
        return text
    return "".join(c if c.isprintable() or c in "\n\t" else _visible(c) for c in text)


def style(text: str, fg: str | None = None, bold: bool = False) -> str:
    """`text` in lotdeploy's own colour: real ANSI codes where no guard is installed (a
    library caller), else codes the guard alone turns into escapes (on a terminal; it
    drops them elsewhere), so a broker's text can never pass for lotdeploy's styling."""
    codes = [str(_SGR[fg])] if fg else []
    codes += ["1"] if bold else []
    if not codes:
        return text
    if not _guards:
        return f"\x1b[{';'.join(codes)}m{text}\x1b[0m"
    return f"{_mark(';'.join(codes))}{text}{_mark('0')}"


def _mark(codes: str) -> str:
    return f"\x00{_TOKEN}:{codes}\x00"


class Guard(io.TextIOBase):
    """A text stream in front of stdout or stderr: every write is scrubbed of secrets and
    cleaned (`clean`); `style` marks become colour on a terminal. Line buffering, encoding
    and `isatty` are the wrapped stream's. It has no `buffer`: click then writes text here
    rather than bytes past it."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.raw = stream
        try:
            self._colour = bool(stream.isatty())
        except (AttributeError, ValueError, OSError):
            self._colour = False

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.raw.write(self.render(text))
        return len(text)

    def render(self, text: str) -> str:
        """What reaches the terminal for `text`."""
        from lotdeploy.secret import scrub

        if "\x00" not in text:  # no style mark (each starts with NUL): the common case
            return clean(scrub(text))
        pieces = _STYLE_MARK.split(text)
        out = []
        for index, piece in enumerate(pieces):
            if index % 2:  # a style mark's codes
                out.append(f"\x1b[{piece}m" if self._colour else "")
            else:
                out.append(clean(scrub(piece)))
        return "".join(out)

    def flush(self) -> None:
        self.raw.flush()

    def isatty(self) -> bool:
        return self._colour

    def fileno(self) -> int:
        return self.raw.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.raw, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.raw, "errors", None)

    @property
    def line_buffering(self) -> bool:
        return bool(getattr(self.raw, "line_buffering", False))


def install() -> None:
    """Put a Guard on sys.stdout and sys.stderr (once; the CLI's entry point calls it)."""
    if _guards:
        return
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None or isinstance(stream, Guard):
            continue
        guard = Guard(stream)
        _guards.append(guard)
        setattr(sys, name, guard)


def rich_console(**options: Any) -> Any:
    """A rich Console that cleans each text segment it renders (a cell, a live row) and
    writes past the guard: what remains of escapes is rich's own styling."""
    from rich.console import Console
    from rich.segment import Segment

    class _CleanConsole(Console):
        def _render_buffer(self, buffer: Any) -> str:
            from lotdeploy.secret import scrub

            def cleaned(segment: Any) -> Any:
                if segment.control:  # rich's own cursor moves (a live table's redraw)
                    return segment
                look = segment.style
                if look is not None and look.link:  # OSC 8: a link text may not choose
                    look = look.update_link(None)
                return Segment(clean(scrub(segment.text)), look, None)

            return str(super()._render_buffer(cleaned(s) for s in buffer))

    stream = sys.stdout
    options.setdefault("file", stream.raw if isinstance(stream, Guard) else stream)
    return _CleanConsole(**options)
