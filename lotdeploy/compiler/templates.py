"""Jinja2 rendering of route files: the site's own templates first, then the built-in ones.

A site's templates are code from the site directory, so they run in Jinja's immutable
sandbox with no globals (no `cycler`, `range`, `lipsum`...): they see the render context
(site, node, routes) and nothing else, cannot reach Python internals (`__class__`,
`__globals__`) or mutate the data, and are bounded in what they can build. Template files
are read like any user file: regular files only, size capped.
"""

from __future__ import annotations

import functools
import os
import posixpath
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
from jinja2.loaders import split_template_path
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from lotdeploy.errors import CompileError
from lotdeploy.fsutil import UnreadableFile, read_regular_file
from lotdeploy.secret import scrub

TEMPLATE_NAME = "mqtt_cluster.lot.j2"
MAX_TEMPLATE_BYTES = 1024 * 1024
#: Rendered text per node; a 200-node mesh needs about 100 KiB.
MAX_OUTPUT_CHARS = 16 * 1024 * 1024
#: What one `*` may build (strings, lists) and the largest exponent `**` may use.
_MAX_PRODUCT = 1024 * 1024
_MAX_EXPONENT = 64


def builtin_templates_dir() -> Path:
    """Inside the wheel: lotdeploy/templates; in a source checkout: the repo's templates/."""
    packaged = Path(__file__).resolve().parent.parent / "templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent.parent / "templates"


class _RegularFileLoader(jinja2.FileSystemLoader):
    """FileSystemLoader that reads through fsutil.read_regular_file (a FIFO never hangs)."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        pieces = split_template_path(template)  # refuses '..'
        for directory in self.searchpath:
            filename = posixpath.join(directory, *pieces)
            if not os.path.lexists(filename):
                continue
            try:
                source = read_regular_file(Path(filename), MAX_TEMPLATE_BYTES).decode("utf-8")
            except UnreadableFile as exc:
                raise CompileError(f"template {filename}: {exc.reason}") from None
            except UnicodeDecodeError:
                raise CompileError(f"template {filename}: not valid UTF-8") from None
            mtime = os.path.getmtime(filename)
            return source, filename, functools.partial(_unchanged, filename, mtime)
        raise jinja2.TemplateNotFound(template)


def _unchanged(filename: str, mtime: float) -> bool:
    try:
        return os.path.getmtime(filename) == mtime
    except OSError:
        return False


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, str | bytes | list | tuple) else None


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus bounds on `*` and `**` (a template is no memory bomb)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > _MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is larger than {_MAX_EXPONENT}")
        if operator == "*":
            for sized, times in ((left, right), (right, left)):
                length = _size(sized)
                if length is not None and isinstance(times, int) and length * times > _MAX_PRODUCT:
                    raise SecurityError(f"'*' would build more than {_MAX_PRODUCT} items")
        return super().call_binop(context, operator, left, right)


@functools.lru_cache(maxsize=8)
def environment(site_templates: Path | None) -> jinja2.Environment:
    """The sandbox for a site's templates; for the built-in template alone (our own code,
    shipped in the package) a plain environment, which renders about twice as fast."""
    search = [str(site_templates)] if site_templates else []
    search.append(str(builtin_templates_dir()))
    kind: type[jinja2.Environment] = _Sandbox if site_templates else jinja2.Environment
    env = kind(
        loader=_RegularFileLoader(search),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # LOT, not HTML; values are LOT-safe by validation
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.clear()  # only the render context: no cycler, joiner, namespace, range...
    return env


def render_template(site_templates: Path | None, context: dict[str, Any]) -> str:
    """The rendered text; any failure of a template is one CompileError line, scrubbed."""
    try:
        template = environment(site_templates).get_template(TEMPLATE_NAME)
        if site_templates is None:
            # Our own template cannot run away; a site's own is rendered piece by piece,
            # its output bounded (per-piece checks cost ~30% of render at 200 nodes).
            return template.render(**context)
        return _bounded(template.generate(**context))
    except jinja2.TemplateNotFound:
        raise CompileError(f"template {TEMPLATE_NAME} not found in {site_templates}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise CompileError(
            _line(f"{exc.filename}:{exc.lineno}: template syntax: {exc.message}")
        ) from None
    except jinja2.UndefinedError as exc:
        raise CompileError(_line(f"template {TEMPLATE_NAME}: {exc.message}")) from None
    except SecurityError as exc:
        raise CompileError(
            _line(f"template {TEMPLATE_NAME}: refused by the sandbox: {exc}")
        ) from None
    except jinja2.TemplateError as exc:
        raise CompileError(_line(f"template {TEMPLATE_NAME}: {exc}")) from None
    except CompileError:
        raise
    except RecursionError:
        raise CompileError(f"template {TEMPLATE_NAME}: recursion too deep") from None
    except Exception as exc:  # the template's own code failed (1/0, bad types...)
        raise CompileError(
            _line(f"template {TEMPLATE_NAME}: {type(exc).__name__}: {exc}")
        ) from None


def _bounded(chunks: Any) -> str:
    out: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_OUTPUT_CHARS:
            raise CompileError(
                f"template {TEMPLATE_NAME}: output is larger than {MAX_OUTPUT_CHARS} characters"
            )
        out.append(chunk)
    return "".join(out)


def _line(message: str) -> str:
    """One line, no secret: template errors may quote the values they were given."""
    return " ".join(scrub(message).split())
