"""Load a site spec: YAML with positions → schema validation → semantic checks → Site.

Every problem of a file is collected and raised at once as a SpecError whose lines read
`site.yaml:LINE:COL: error: message`, pointing at the offending value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lotdeploy.errors import Diagnostic, SpecError
from lotdeploy.fsutil import UnreadableFile, read_regular_file
from lotdeploy.model import Site
from lotdeploy.spec.checks import check_raw, check_resolved
from lotdeploy.spec.resolve import resolve
from lotdeploy.spec.schema import SiteSpec, json_schema
from lotdeploy.spec.validation import valid_parts, validate_schema
from lotdeploy.spec.yamlsource import Located, load_located

__all__ = ["LoadedSite", "json_schema", "load_site", "load_site_text"]

MAX_SPEC_BYTES = 16 * 1024 * 1024


class LoadedSite:
    """A valid site plus the warnings found while loading it."""

    def __init__(self, site: Site, spec: SiteSpec, warnings: list[Diagnostic]) -> None:
        self.site = site
        self.spec = spec
        self.warnings = warnings


def load_site(path: Path) -> LoadedSite:
    path = Path(path)
    display = str(path)
    try:
        raw = read_regular_file(path, MAX_SPEC_BYTES)
    except UnreadableFile as exc:
        message = exc.reason if exc.reason.startswith("cannot") else f"file {exc.reason}"
        raise SpecError([Diagnostic(display, 1, 1, message)]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError([Diagnostic(display, line, 1, "file is not valid UTF-8")]) from None
    return load_site_text(text, display, path.resolve().parent)


def load_site_text(text: str, filename: str, base_dir: Path) -> LoadedSite:
    located = load_located(text, filename)
    if any(d.severity == "error" for d in located.diagnostics) and located.data is None:
        raise SpecError(located.diagnostics)
    if not isinstance(located.data, dict):
        located.error((), "a site spec is a mapping with at least `site:` and `nodes:`")
        raise SpecError(located.diagnostics)
    _extend(located, filename, base_dir)
    spec = validate_schema(located)
    check_raw(located)
    site = None
    if spec is not None:
        site = resolve(spec, Path(filename), base_dir)
        check_resolved(located, spec, site, base_dir)
    else:  # report the semantic errors of the valid parts too, in the same run
        parts, indices = valid_parts(located)
        partial = resolve(parts, Path(filename), base_dir)
        check_resolved(located, parts, partial, base_dir, indices, partial=True)
    errors = [d for d in located.diagnostics if d.severity == "error"]
    if errors or spec is None or site is None:
        raise SpecError(located.diagnostics)
    warnings = sorted(d for d in located.diagnostics if d.severity != "error")
    return LoadedSite(site, spec, warnings)


#: What a shared file (`extends:`) may hold: settings, never a site's own nodes, links or waves.
SHARED_KEYS = ("defaults", "regions", "ansible", "pki", "client_id_format", "transport")


def _extend(located: Located, filename: str, base_dir: Path) -> None:
    """Put the settings of the file the site `extends` under the site's own, mapping by
    mapping (what the site says wins); problems in that file point into it."""
    assert isinstance(located.data, dict)
    ref = located.data.get("extends")
    if not isinstance(ref, str) or not ref:
        return  # the schema reports a wrong type
    path = Path(ref) if Path(ref).is_absolute() else base_dir / ref
    display = ref if Path(ref).is_absolute() else os.path.normpath(Path(filename).parent / ref)
    try:
        text = read_regular_file(path, MAX_SPEC_BYTES).decode("utf-8")
    except (UnreadableFile, UnicodeDecodeError) as exc:
        why = exc.reason if isinstance(exc, UnreadableFile) else "is not valid UTF-8"
        located.error(("extends",), f"extends: {ref} {why}")
        return
    shared = load_located(text, display)
    located.diagnostics.extend(shared.diagnostics)
    if shared.data is None:
        return
    if not isinstance(shared.data, dict):
        located.diagnostics.append(
            Diagnostic(display, 1, 1, "a shared settings file is a mapping (defaults:, ...)")
        )
        return
    for key in shared.data:
        if key not in SHARED_KEYS:
            line, col = shared.where((key,), key=True)
            located.diagnostics.append(
                Diagnostic(
                    display,
                    line,
                    col,
                    f"`{key}` cannot be shared; a shared file holds {', '.join(SHARED_KEYS)}",
                )
            )
    wanted = {k: v for k, v in shared.data.items() if k in SHARED_KEYS}
    located.data = _merge(wanted, located.data, (), located, shared)


def _merge(base: Any, over: Any, path: tuple[str, ...], located: Located, shared: Located) -> Any:
    if not isinstance(base, dict) or not isinstance(over, dict):
        return over
    merged = dict(over)
    for key, value in base.items():
        if key in over:
            merged[key] = _merge(value, over[key], (*path, key), located, shared)
        else:
            merged[key] = value
            located.borrowed[(*path, key)] = shared
    return merged
