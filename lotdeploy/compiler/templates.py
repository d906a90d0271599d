"""Jinja2 rendering of route files: the site's own templates first, then the built-in ones."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from lotdeploy.errors import CompileError

TEMPLATE_NAME = "mqtt_cluster.lot.j2"


def builtin_templates_dir() -> Path:
    """Inside the wheel: lotdeploy/templates; in a source checkout: the repo's templates/."""
    packaged = Path(__file__).resolve().parent.parent / "templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent.parent / "templates"


@lru_cache(maxsize=8)
def environment(site_templates: Path | None) -> jinja2.Environment:
    search = [str(site_templates)] if site_templates else []
    search.append(str(builtin_templates_dir()))
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(search),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # LOT, not HTML; values are LOT-safe by validation
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_template(site_templates: Path | None, context: dict[str, Any]) -> str:
    try:
        template = environment(site_templates).get_template(TEMPLATE_NAME)
        return template.render(**context)
    except jinja2.TemplateNotFound:
        raise CompileError(f"template {TEMPLATE_NAME} not found in {site_templates}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise CompileError(f"{exc.filename}:{exc.lineno}: template syntax: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise CompileError(f"template {TEMPLATE_NAME}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise CompileError(f"template {TEMPLATE_NAME}: {exc}") from None
