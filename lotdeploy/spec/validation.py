"""Schema validation with pydantic, its errors turned into located one-line diagnostics.

When the whole spec does not validate, `valid_parts` still builds a spec from every part
that does (each node, region and link on its own), so the semantic checks report their
errors in the same run instead of hiding behind the schema's.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from lotdeploy.spec.schema import (
    LinkOverride,
    NodeSpec,
    PkiSettings,
    Settings,
    SiteSpec,
    client_id_format,
    local_path,
    node_name,
)
from lotdeploy.spec.yamlsource import Located


def validate_schema(located: Located) -> SiteSpec | None:
    try:
        return SiteSpec.model_validate(located.data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            _report(located, error)
        return None


@dataclass(frozen=True)
class Indices:
    """Where `spec.nodes[i]` and `spec.links[i]` stand in the file (a partial spec skips some)."""

    nodes: tuple[int, ...]
    links: tuple[int, ...]

    @classmethod
    def identity(cls, spec: SiteSpec) -> Indices:
        return cls(tuple(range(len(spec.nodes))), tuple(range(len(spec.links))))


def _valid(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError:
        return None


def _valid_str(check: Any, data: Any) -> str | None:
    if not isinstance(data, str):
        return None
    try:
        return str(check(data))
    except ValueError:
        return None


def valid_parts(located: Located) -> tuple[SiteSpec, Indices]:
    """A spec of the parts of `located.data` that validate on their own (no validation of
    the whole): invalid nodes and links are left out, invalid settings become defaults."""
    data = located.data if isinstance(located.data, dict) else {}
    nodes: list[NodeSpec] = []
    node_indices: list[int] = []
    names: set[str] = set()
    raw_nodes = data.get("nodes")
    for index, raw in enumerate(raw_nodes if isinstance(raw_nodes, list) else []):
        node = _valid(NodeSpec, raw)
        if node is not None and node.name not in names:
            names.add(node.name)
            nodes.append(node)
            node_indices.append(index)
    links: list[LinkOverride] = []
    link_indices: list[int] = []
    raw_links = data.get("links")
    for index, raw in enumerate(raw_links if isinstance(raw_links, list) else []):
        link = _valid(LinkOverride, raw)
        if link is not None:
            links.append(link)
            link_indices.append(index)
    raw_regions = data.get("regions")
    regions: dict[str, Settings] = {}
    for key, raw in (raw_regions if isinstance(raw_regions, dict) else {}).items():
        name = _valid_str(node_name, key)
        if name is not None:
            regions[name] = _valid(Settings, raw) or Settings()
    spec = SiteSpec.model_construct(
        site=_valid_str(node_name, data.get("site")) or "site",
        topology="full-mesh",
        templates=_valid_str(local_path, data.get("templates")),
        client_id_format=_valid_str(client_id_format, data.get("client_id_format"))
        or "{node}-to-{peer}",
        defaults=_valid(Settings, data.get("defaults") or {}) or Settings(),
        regions=regions,
        nodes=nodes,
        links=links,
        pki=_valid(PkiSettings, data.get("pki") or {}) or PkiSettings(),
    )
    return spec, Indices(tuple(node_indices), tuple(link_indices))


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
