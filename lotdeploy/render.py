"""Render: make every node's bundle (route file, TLS files, manifest) and write it.

Two explicit steps. `prepare_workspace` performs what the plan reports as workspace steps:
generate the first cluster password, create the site CA, issue the certificates that are
due. `node_bundles` then only reads what exists and builds typed bundles in memory; it
creates nothing. `write_bundles` writes them, each file atomically, secret-bearing files
0600. A node directory left over from a node that is no longer in the site is removed, but
only if lotdeploy made it (it holds our manifest): nothing else in the output is touched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from lotdeploy.compiler import ROUTE_FILE, compile_node
from lotdeploy.credentials import CredentialState, cluster_password, password_secret_name
from lotdeploy.errors import LotdeployError, SecretStoreError
from lotdeploy.fsutil import atomic_write, make_dirs
from lotdeploy.model import Site
from lotdeploy.secret import SENSITIVE, Secret
from lotdeploy.workspace import Workspace

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "lotdeploy-bundle/1"


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


def prepare_workspace(site: Site, workspace: Workspace, now: datetime) -> None:
    """The workspace steps a plan reports: first password, site CA, due certificates."""
    if site.links:
        cluster_password(workspace)
    if site.tls_nodes:
        from lotdeploy.pki.bundle import ensure_pki

        ensure_pki(site, workspace, now)


def node_bundles(site: Site, workspace: Workspace, now: datetime) -> dict[str, Bundle]:
    """Every node's bundle, in memory, from what the workspace holds (creates nothing)."""
    version = CredentialState.load(workspace).active_version
    password = Secret("")
    if site.links:
        stored = workspace.secrets().get(password_secret_name(version))
        if stored is None:
            raise SecretStoreError(
                f"the secret store has no cluster password v{version}: run `lotdeploy render` "
                "to generate it, or restore the secret store of this workspace"
            )
        password = stored
    tls = {}
    if site.tls_nodes:
        from lotdeploy.pki.bundle import node_tls_files

        tls = {node.name: node_tls_files(site, workspace, node, now) for node in site.tls_nodes}
    bundles: dict[str, Bundle] = {}
    for node in site.nodes:
        artifact = compile_node(site, node, password, version)
        files = [BundleFile(ROUTE_FILE, Secret(artifact.text), 0o600)]
        files += [
            BundleFile(name, data, mode) for name, (data, mode) in tls.get(node.name, {}).items()
        ]
        files.sort(key=lambda f: f.name)
        bundles[node.name] = Bundle(
            node.name, tuple(files), manifest(site, node.name, files, version)
        )
    return bundles


def manifest(site: Site, node_name: str, files: list[BundleFile], credential_version: int) -> str:
    node = site.node(node_name)
    doc = {
        "format": MANIFEST_FORMAT,
        "site": site.name,
        "site_digest": site.digest(),
        "node": node.name,
        "region": node.region,
        "credential_version": credential_version,
        "routes": [link.route_name for link in site.links_from(node.name)],
        "files": {
            f.name: {"sha256": f.sha256, "mode": f"{f.mode:04o}"}
            for f in sorted(files, key=lambda f: f.name)
        },
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def write_bundles(
    site: Site, workspace: Workspace, out: Path, now: datetime | None = None
) -> RenderResult:
    now = now or datetime.now(UTC)
    prepare_workspace(site, workspace, now)
    bundles = node_bundles(site, workspace, now)
    try:
        make_dirs(out, 0o755)
        for node_name in sorted(bundles):
            _check_node_dir(out / node_name, site.name)
        files = 0
        for node_name, bundle in sorted(bundles.items()):
            directory = out / node_name
            for file in bundle.all_files():
                atomic_write(directory / file.name, file.data(), mode=file.mode)
                files += 1
        removed = _remove_stale(out, set(bundles), site.name)
    except OSError as exc:
        raise LotdeployError(
            f"{exc.filename or out}: cannot write bundle: {exc.strerror or exc}"
        ) from None
    return RenderResult(len(bundles), len(site.links), files, removed)


def _owner(directory: Path) -> str | None:
    """The site whose bundle `directory` holds (from its manifest), or None if not ours."""
    try:
        doc = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        return None
    site = doc.get("site")
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
    """Remove bundles of nodes this site no longer has: only directories (not symlinks)
    whose manifest says they are this site's."""
    removed = []
    for child in sorted(out.iterdir()):
        if child.name in keep or child.is_symlink() or not child.is_dir():
            continue
        if _owner(child) == site:
            shutil.rmtree(child)
            removed.append(child.name)
    return removed
