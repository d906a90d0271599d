"""Load a site spec: YAML with positions → schema validation → semantic checks → Site.

Every problem of a file is collected and raised at once as a SpecError whose lines read
`site.yaml:LINE:COL: error: message`, pointing at the offending value.
"""

from __future__ import annotations

from pathlib import Path

from lotdeploy.errors import Diagnostic, SpecError
from lotdeploy.fsutil import UnreadableFile, read_regular_file
from lotdeploy.model import Site
from lotdeploy.spec.checks import check_raw, check_resolved
from lotdeploy.spec.resolve import resolve
from lotdeploy.spec.schema import SiteSpec, json_schema
from lotdeploy.spec.validation import valid_parts, validate_schema
from lotdeploy.spec.yamlsource import load_located

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
