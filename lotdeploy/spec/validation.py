"""Schema validation with pydantic, its errors turned into located one-line diagnostics."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from lotdeploy.spec.schema import SiteSpec
from lotdeploy.spec.yamlsource import Located


def validate_schema(located: Located) -> SiteSpec | None:
    try:
        return SiteSpec.model_validate(located.data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            _report(located, error)
        return None


def dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(document)"


def _report(located: Located, error: Any) -> None:
    loc = tuple(p for p in error["loc"] if p != "[key]")
    kind = error["type"]
    where = dotted(loc)
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = sorted(_fields_at(loc[:-1]))
        hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
        message = f"unknown key '{key}'"
        message += f" (did you mean '{hint[0]}'?)" if hint else f" in {dotted(loc[:-1])}"
        located.error(loc, message, key=True)
        return
    if kind == "missing":
        parent = dotted(loc[:-1]) if loc[:-1] else "the site spec"
        located.error(loc[:-1], f"{parent}: missing required key '{loc[-1]}'")
        return
    message = str(error["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
        value = error.get("input")
        if isinstance(value, str) and value.isprintable():
            message = f"'{value}' {message}" if len(value) <= 80 else message
    else:
        message = message[0].lower() + message[1:]
    located.error(loc, f"{where}: {message}", key=error["loc"][-1:] == ("[key]",))


def _fields_at(loc: tuple[Any, ...]) -> set[str]:
    """Field names of the model found at `loc`, for "did you mean" hints."""
    model: Any = SiteSpec
    for part in loc:
        model = _unwrap(model, None)
        if isinstance(model, type) and issubclass(model, BaseModel):
            if not (isinstance(part, str) and part in model.model_fields):
                return set()
            model = model.model_fields[part].annotation
        else:
            model = _unwrap(model, part)
    model = _unwrap(model, None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return set(model.model_fields)
    return set()


def _unwrap(tp: Any, part: Any) -> Any:
    """Dig through Optional / list / dict / Annotated to the model a path element lands in."""
    for _ in range(6):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return tp
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is typing.Annotated:
            tp = args[0]
        elif origin in (typing.Union, types.UnionType):
            models = [a for a in args if a is not type(None)]
            tp = models[0] if models else tp
        elif origin is list:
            if not isinstance(part, int):
                return tp
            tp, part = args[0], None
        elif origin is dict:
            if part is None:
                return tp
            tp, part = args[1], None
        else:
            return tp
    return tp
