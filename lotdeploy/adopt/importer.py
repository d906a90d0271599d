"""`lotdeploy import`: write the site spec and the workspace that reproduce a running cluster.

The survey is read first and everything is made in memory (lotdeploy.adopt.infer); the
spec is validated as `lotdeploy validate` would; only then is anything written: the
workspace (the cluster password, encrypted; the state: adopted routes, node records,
credential facts), then the site file. A workspace that records nodes already is refused
(an import starts one). Nothing is sent to a broker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from lotdeploy.adopt.infer import Imported, infer, matches, node_names, region_of
from lotdeploy.adopt.survey import Survey
from lotdeploy.credentials import password_secret_name
from lotdeploy.errors import LotdeployError, SpecError
from lotdeploy.fsutil import write_output
from lotdeploy.model import Site
from lotdeploy.plan.desired import node_paths
from lotdeploy.sitefacts import bind_site
from lotdeploy.state import StateStore
from lotdeploy.workspace import Workspace

#: Local-path settings, rewritten so they still name the same files from the new site.
_LOCAL_PATHS = {"ssh": ("key", "known_hosts"), "broker": ("admin_password_file",)}


@dataclass
class ImportResult:
    imported: Imported
    site: Site
    out: Path
    workspace: Path
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        adopted = self.imported.adopted
        kept = sum(len(a.routes) for a in adopted.values())
        removed = sum(len(a.remove) for a in adopted.values())
        credential = self.imported.credential
        user = (
            f"cluster user {credential.username} (its password taken from the routes, kept "
            "encrypted in the workspace)"
            if credential is not None
            else "no route carries a password: one is generated on the first apply"
        )
        return [
            f"import: {len(self.site.nodes)} node(s); {kept} route(s) adopted under their "
            f"names, {removed} to remove; {user}",
            f"wrote {self.out} and the workspace {self.workspace}",
            *(f"note: {n}" for n in self.notes),
            f"next: lotdeploy plan {self.out}",
        ]


def write_import(
    found: Survey,
    out: Path,
    workspace: Workspace,
    *,
    input_site: Site | None = None,
    input_file: Path | None = None,
    names: dict[str, str] | None = None,
    regions: dict[str, str] | None = None,
    site_name: str = "imported",
    keep_strays: bool = False,
    admin: dict[str, Any] | None = None,
) -> ImportResult:
    """Infer, validate and write (see the module doc). `admin`: the broker settings an ad
    hoc import puts in `defaults.broker` (how the admin password is found)."""
    from lotdeploy.spec import load_site_text

    if found.errors:
        raise LotdeployError(
            "cannot import a cluster not every broker of which could be read: "
            + "; ".join(f"node {n}: {e}" for n, e in sorted(found.errors.items()))
        )
    state = StateStore(workspace).read()
    if state.nodes or state.adopted:
        raise LotdeployError(
            f"the workspace {workspace.root} records nodes already: import into a new "
            "directory (an import starts a workspace)"
        )
    now = datetime.now(UTC)
    out = Path(out)
    spec_in: dict[str, Any] | None = None
    if input_site is not None and input_file is not None:
        member_names = {m.name: m.name for m in found.members}
        region_map = {n.name: n.region for n in input_site.nodes}
        spec_in = _relocated(yaml.safe_load(input_file.read_text()), input_file.parent, out)
    else:
        member_names = node_names(found, names or {})
        region_map = {
            member_names[m.name]: region_of(m, regions or {}, member_names[m.name])
            for m in found.members
        }
        _all_used(found, member_names, names or {}, regions or {})
        spec_in = {"defaults": {"broker": dict(admin or {})}} if admin else None
    if any(n.routes for n in found.nodes.values()) and not any(
        r.code and r.code.password is not None for n in found.nodes.values() for r in n.routes
    ):
        raise LotdeployError(
            "no route carries its password literally (GET SECRET?): the cluster's credential "
            "cannot be taken over (nothing was written)"
        )
    imported = infer(
        found,
        member_names,
        region_map,
        spec_in,
        site_name,
        keep_strays,
        now.isoformat(timespec="seconds"),
    )
    text = _header(input_file, found, workspace, out, ad_hoc=input_site is None) + yaml.safe_dump(
        imported.spec, sort_keys=False, default_flow_style=False
    )
    try:
        loaded = load_site_text(text, str(out), out.resolve().parent)
    except SpecError as exc:  # what runs cannot be said in a site spec: say why
        raise LotdeployError(
            f"the cluster cannot be written as a site spec: {exc} (nothing was written)"
        ) from None

    # the spec's place is checked before the workspace is written: a workspace that records
    # nodes refuses every later import, so it must not be left without its spec
    parent = out.resolve().parent
    if out.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        why = "it is a directory" if out.is_dir() else f"{parent} is not a writable directory"
        raise LotdeployError(f"{out}: cannot write the site spec: {why} (nothing was written)")
    if imported.credential is not None:
        store = workspace.secrets()
        store.set(password_secret_name(1), imported.credential.password)
        store.save()
    for name, record in imported.records.items():  # where lotdeploy's files are to go
        record.paths = node_paths(loaded.site.node(name))
    with StateStore(workspace).transaction() as current:
        current.credential_version = 1
        current.credential_generated = imported.credential is not None
        current.credential_adopted = imported.credential is not None
        current.adopted = dict(imported.adopted)
        current.nodes = dict(imported.records)
        current.site_digest = bind_site(loaded.site, current).digest()
    workspace.identity(create=True)
    try:
        write_output(out, text)
    except OSError as exc:
        raise LotdeployError(
            f"{out}: cannot write the site spec: {exc.strerror}; the workspace "
            f"{workspace.root} was written: remove it and import again"
        ) from None
    return ImportResult(imported, loaded.site, out, workspace.root, imported.notes)


def _all_used(
    found: Survey, member_names: dict[str, str], names: dict[str, str], regions: dict[str, str]
) -> None:
    """A --name or --region that names no node is a mistake (a typo would silently leave
    nodes in the wrong region): refused, naming it."""
    known = {m.name for m in found.members} | {m.address for m in found.members}
    for target in names:
        if target not in known:
            raise LotdeployError(f"--name {target}={names[target]}: no node was read at {target}")
    for target, region in regions.items():
        if not any(matches(m, target, member_names[m.name]) for m in found.members):
            raise LotdeployError(f"--region {region}={target}: no node read is {target}")


def _header(
    source: Path | None, found: Survey, workspace: Workspace, out: Path, ad_hoc: bool
) -> str:
    read = str(source) if source is not None else " ".join(m.name for m in found.members)
    try:
        where = os.path.relpath(workspace.root, out.resolve().parent)
    except ValueError:
        where = str(workspace.root)
    lines = [
        f"# Written by `lotdeploy import` on {datetime.now(UTC):%Y-%m-%d} from {read}:",
        "# what the brokers ran. The hand-made routes are adopted under their names and",
        f"# client ids (the workspace {where}, state.json `adopted`; docs/adopt.md).",
    ]
    if ad_hoc:
        lines.append("# Give each node its ssh access (ssh: user, key, known_hosts) before apply.")
    lines.append(f"# Next: lotdeploy plan {out}")
    return "\n".join(lines) + "\n"


def _relocated(spec: Any, source_dir: Path, out: Path) -> dict[str, Any]:
    """The input spec with its relative local paths made relative to the new site file."""
    if not isinstance(spec, dict):
        return {}
    target_dir = out.resolve().parent

    def move(value: Any) -> Any:
        if not isinstance(value, str) or os.path.isabs(value):
            return value
        return os.path.relpath((source_dir / value).resolve(), target_dir)

    def fix(settings: Any) -> None:
        if not isinstance(settings, dict):
            return
        for section, keys in _LOCAL_PATHS.items():
            block = settings.get(section)
            if isinstance(block, dict):
                for key in keys:
                    if key in block:
                        block[key] = move(block[key])

    fix(spec.get("defaults"))
    for region in (spec.get("regions") or {}).values():
        fix(region)
    for node in spec.get("nodes") or []:
        fix(node)
    if "templates" in spec:
        spec["templates"] = move(spec["templates"])
    ansible = spec.get("ansible")
    if isinstance(ansible, dict) and "vault_password_file" in ansible:
        ansible["vault_password_file"] = move(ansible["vault_password_file"])
    return spec
