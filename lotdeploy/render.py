"""Write every node's bundle: route file, TLS files, and a manifest that lists them.

Each file is written atomically; secret-bearing files are mode 0600. A node directory left
over from a node that is no longer in the site is removed, but only if lotdeploy made it
(it holds our manifest): nothing else in the output directory is touched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lotdeploy.compiler import ROUTE_FILE, compile_site
from lotdeploy.credentials import CredentialState, cluster_password
from lotdeploy.errors import LotdeployError
from lotdeploy.fsutil import atomic_write
from lotdeploy.model import Site
from lotdeploy.secret import Secret
from lotdeploy.workspace import Workspace

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "lotdeploy-bundle/1"

BundleFiles = dict[str, tuple[bytes | Secret, int]]


@dataclass(frozen=True)
class RenderResult:
    nodes: int
    routes: int
    files: int
    removed: list[str]


def node_bundles(
    site: Site, workspace: Workspace, credential_version: int
) -> dict[str, BundleFiles]:
    """Compile every node's files in memory (nothing written yet)."""
    store = workspace.secrets()
    password = cluster_password(workspace, store)
    bundles: dict[str, BundleFiles] = {}
    for artifact in compile_site(site, password, credential_version):
        bundles[artifact.node] = {ROUTE_FILE: (Secret(artifact.text), 0o600)}
    if site.tls_nodes:
        from lotdeploy.pki.bundle import ensure_pki, node_tls_files

        now = datetime.now(UTC)
        ensure_pki(site, workspace, now)
        for node in site.tls_nodes:
            bundles[node.name].update(node_tls_files(site, workspace, node, now))
    return bundles


def _bytes(content: bytes | Secret) -> bytes:
    return content.reveal().encode() if isinstance(content, Secret) else content


def manifest(site: Site, node_name: str, files: BundleFiles, credential_version: int) -> str:
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
            name: {"sha256": hashlib.sha256(_bytes(content)).hexdigest(), "mode": f"{mode:04o}"}
            for name, (content, mode) in sorted(files.items())
        },
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def write_bundles(site: Site, workspace: Workspace, out: Path) -> RenderResult:
    version = CredentialState.load(workspace).active_version
    bundles = node_bundles(site, workspace, version)
    try:
        out.mkdir(parents=True, exist_ok=True)
        files = 0
        for node_name, node_files in sorted(bundles.items()):
            directory = out / node_name
            for name, (content, mode) in sorted(node_files.items()):
                atomic_write(directory / name, _bytes(content), mode=mode)
                files += 1
            atomic_write(directory / MANIFEST, manifest(site, node_name, node_files, version))
            files += 1
        removed = _remove_stale(out, set(bundles))
    except OSError as exc:
        raise LotdeployError(
            f"{exc.filename or out}: cannot write bundle: {exc.strerror}"
        ) from None
    return RenderResult(len(bundles), len(site.links), files, removed)


def _remove_stale(out: Path, keep: set[str]) -> list[str]:
    removed = []
    for child in sorted(out.iterdir()):
        if child.is_dir() and child.name not in keep and (child / MANIFEST).is_file():
            try:
                owned = json.loads((child / MANIFEST).read_text()).get("format") == MANIFEST_FORMAT
            except (OSError, ValueError, AttributeError):
                owned = False
            if owned:
                shutil.rmtree(child)
                removed.append(child.name)
    return removed
