"""Render: make every node's bundle (route file, TLS files, manifest) and write it.

Two explicit steps. `prepare_workspace` performs what the plan reports as workspace steps:
generate the first cluster password, create the site CA, issue the certificates that are
due. `iter_bundles` then only reads what exists and builds typed bundles in memory; it
creates nothing. `write_bundles` writes them, each file atomically, secret-bearing files
0600. A node directory left over from a node that is no longer in the site is emptied of the
files its manifest lists (then removed if empty), but only if lotdeploy made it (it holds our
manifest, of this site): nothing else in the output is touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

from lotdeploy.compiler import ROUTE_FILE, compile_node
from lotdeploy.credentials import cluster_password, password_secret_name
from lotdeploy.errors import LotdeployError, SecretStoreError
from lotdeploy.fsutil import DurableBatch, UnreadableFile, is_temporary, make_dirs, read_json
from lotdeploy.model import Site
from lotdeploy.routesecret import broker_secret_name, site_choices, stored_nodes
from lotdeploy.secret import SENSITIVE, Secret
from lotdeploy.sitefacts import bind_site
from lotdeploy.state import StateStore
from lotdeploy.workspace import Workspace

MANIFEST = "manifest.json"
#: Files staged before a batch is made durable and renamed (about 50 nodes' bundles).
RENDER_BATCH_FILES = 256
MANIFEST_FORMAT = "lotdeploy-bundle/1"
#: A manifest lists one node's files and route names: under a MB at 1,000 nodes.
MANIFEST_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class BundleFile:
    """One file of a node's bundle; secret content stays a Secret until it is written."""

    name: str
    content: bytes | Secret = field(repr=False)
    mode: int

    def data(self) -> bytes:
        if isinstance(self.content, Secret):
            return self.content.reveal().encode()
        return self.content

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data()).hexdigest()

    def __repr__(self) -> str:
        shown = SENSITIVE if isinstance(self.content, Secret) else f"{len(self.content)} bytes"
        return f"BundleFile({self.name!r}, {shown}, mode={self.mode:04o})"


@dataclass(frozen=True)
class Bundle:
    """Everything one node gets: its files and the manifest that lists them."""

    node: str
    files: tuple[BundleFile, ...]
    manifest: str

    def all_files(self) -> tuple[BundleFile, ...]:
        return (*self.files, BundleFile(MANIFEST, self.manifest.encode(), 0o644))


@dataclass(frozen=True)
class RenderResult:
    nodes: int
    routes: int
    files: int
    removed: list[str]
    #: files actually (re)written; the others already held exactly their content
    written: int = 0


def prepare_workspace(site: Site, workspace: Workspace, now: datetime) -> None:
    """The workspace steps a plan reports: first password, site CA, due certificates."""
    if site.link_count:
        cluster_password(workspace)
    if site.tls_nodes:
        from lotdeploy.pki.bundle import ensure_pki

        ensure_pki(site, workspace, now)


def iter_bundles(site: Site, workspace: Workspace, now: datetime) -> Iterator[Bundle]:
    """Every node's bundle in node order, one at a time, from what the workspace holds
    (creates nothing). Streaming keeps memory to one node's routes, whatever the site."""
    state = StateStore(workspace).read()
    site = bind_site(site, state)  # adopted routes, a take-over's phase (lotdeploy.sitefacts)
    version = state.credential_version
    # routes of these nodes read the password from their broker's store (routesecret)
    in_store = stored_nodes(site_choices(site, state))
    broker_secret = broker_secret_name(version)
    password = Secret("")
    if site.link_count:
        stored = workspace.secrets().get(password_secret_name(version))
        if stored is None:
            raise SecretStoreError(
                f"the secret store has no cluster password v{version}: run `lotdeploy render` "
                "to generate it, or restore the secret store of this workspace"
            )
        password = stored
    ca_bundle = None
    if site.tls_nodes:
        from lotdeploy.pki.bundle import node_tls_files, trusted_ca_bundle

        ca_bundle = trusted_ca_bundle(workspace)  # the same for every node: read once
    for node in site.nodes:
        artifact = compile_node(
            site, node, password, version, broker_secret if node.name in in_store else None
        )
        files = [BundleFile(ROUTE_FILE, Secret(artifact.text), 0o600)]
        del artifact  # only the text is kept: the route trees are one node's peak memory
        if ca_bundle is not None and node.tls:
            tls = node_tls_files(site, workspace, node, now, ca_bundle)
            files += [BundleFile(name, data, mode) for name, (data, mode) in tls.items()]
        files.sort(key=lambda f: f.name)
        yield Bundle(node.name, tuple(files), manifest(site, node.name, files, version))


def manifest(site: Site, node_name: str, files: list[BundleFile], credential_version: int) -> str:
    node = site.node(node_name)
    doc = {
        "format": MANIFEST_FORMAT,
        "site": site.name,
        "site_digest": site.digest(),
        "node": node.name,
        "region": node.region,
        "credential_version": credential_version,
        "routes": [],
        "files": {
            f.name: {"sha256": f.sha256, "mode": f"{f.mode:04o}"}
            for f in sorted(files, key=lambda f: f.name)
        },
    }
    return _with_routes(
        json.dumps(doc, indent=2, sort_keys=True), [row[1] for row in site.link_rows(node)]
    )


def _with_routes(text: str, routes: list[str]) -> str:
    """`text` (a manifest made with "routes": []) with `routes` put in, as
    `json.dumps(indent=2, sort_keys=True)` of the whole document writes them: `indent`
    makes json use its pure-Python encoder, 1 s for the 999,000 route names of a
    1,000-node render; each name encoded by the C encoder instead (tests/test_fastpaths.py
    checks the bytes). The key occurs once: inside a JSON string a quote is escaped."""
    if not routes:
        return text + "\n"
    listed = ",\n    ".join(map(encode_basestring_ascii, routes))
    return text.replace('"routes": []', f'"routes": [\n    {listed}\n  ]', 1) + "\n"


def write_bundles(
    site: Site, workspace: Workspace, out: Path, now: datetime | None = None
) -> RenderResult:
    """Prepare the workspace, then write each node's bundle as it is made.

    Files are made durable in batches of nodes (fsutil.DurableBatch: one file-system
    sync per batch, then the renames, each node's manifest last, then one fsync per
    directory); a file that already holds exactly its content and mode is left alone, so
    rendering an unchanged site writes nothing.
    """
    now = now or datetime.now(UTC)
    prepare_workspace(site, workspace, now)
    files = written = 0
    try:
        make_dirs(out, 0o755)
        for node in site.nodes:
            _check_node_dir(out / node.name, site.name)
        batch = DurableBatch()
        for bundle in iter_bundles(site, workspace, now):
            entries = [(f.name, f.data(), f.mode) for f in bundle.all_files()]
            written += batch.add(out / bundle.node, entries)
            files += len(entries)
            if len(batch.pending) >= RENDER_BATCH_FILES:
                batch.commit()
        batch.commit()
        removed = _remove_stale(out, {node.name for node in site.nodes}, site.name)
    except OSError as exc:
        raise LotdeployError(
            f"{exc.filename or out}: cannot write bundle: {exc.strerror or exc}"
        ) from None
    return RenderResult(len(site.nodes), site.link_count, files, removed, written)


def _manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest lotdeploy wrote into `directory`, or None if there is none of ours."""
    try:
        doc = read_json(directory / MANIFEST, MANIFEST_MAX_BYTES)
    except UnreadableFile:
        return None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        return None
    return doc


def _owner(directory: Path) -> str | None:
    """The site whose bundle `directory` holds (from its manifest), or None if not ours."""
    doc = _manifest(directory)
    site = doc.get("site") if doc is not None else None
    return site if isinstance(site, str) else None


def _check_node_dir(directory: Path, site: str) -> None:
    """Write only into a plain directory that is new, or holds this site's bundle."""
    if directory.is_symlink():
        raise LotdeployError(f"{directory}: is a symbolic link; refusing to write a bundle there")
    if not directory.exists():
        return
    if not directory.is_dir():
        raise LotdeployError(f"{directory}: exists and is not a directory")
    owner = _owner(directory)
    if owner is not None and owner != site:
        raise LotdeployError(
            f"{directory}: holds the bundle of site {owner}, not {site}: "
            "render each site into its own --out"
        )


def _remove_stale(out: Path, keep: set[str], site: str) -> list[str]:
    """Remove bundles of nodes this site no longer has: in directories (not symlinks) whose
    manifest says they are this site's, only the files that manifest lists (regular files,
    then the manifest, then the directory if that left it empty). A file someone put beside
    a bundle stays, and so does its directory."""
    removed = []
    for child in sorted(out.iterdir()):
        if child.name in keep or child.is_symlink() or not child.is_dir():
            continue
        doc = _manifest(child)
        if doc is None or doc.get("site") != site:
            continue
        listed = doc.get("files")
        names = [n for n in listed if isinstance(n, str)] if isinstance(listed, dict) else []
        for name in [*names, MANIFEST]:
            if "/" in name or name in ("", ".", ".."):
                continue
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISREG(os.lstat(child / name).st_mode):
                    os.unlink(child / name)
        sweep = [e for e in os.scandir(child) if is_temporary(e.name)]
        for entry in sweep:  # temporaries of a killed render of this bundle
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
        with contextlib.suppress(OSError):
            child.rmdir()
        removed.append(child.name)
    return removed
