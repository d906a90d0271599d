"""The `lotdeploy.coreflux` Ansible collection as lotdeploy ships it, and the paho-mqtt copy
the export hands to nodes whose Python lacks it.

The collection's source is `collections/ansible_collections/lotdeploy/coreflux/` in the
repository (where `ansible-test` can run on it); the wheel carries it as
`lotdeploy/collection/`. Its modules never import lotdeploy: they run on the nodes.
"""

from __future__ import annotations

import importlib.metadata
import io
import zipfile
from pathlib import Path

from lotdeploy.errors import LotdeployError

NAMESPACE = "lotdeploy"
NAME = "coreflux"
#: Where a project keeps the collection beside its playbooks (Ansible looks there first).
ADJACENT = f"collections/ansible_collections/{NAMESPACE}/{NAME}"
#: The file name of the paho copy in an export and on a node.
PAHO_ZIP = "paho-mqtt.zip"
#: What a built collection leaves out (test output, caches).
_SKIP = ("tests/output", "__pycache__", ".pyc")


def collection_dir() -> Path:
    """Inside the wheel: lotdeploy/collection; in a source checkout: the repository's."""
    packaged = Path(__file__).resolve().parent.parent / "collection"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent.parent / ADJACENT


def collection_files() -> dict[str, bytes]:
    """Every file of the collection (path relative to it), sorted, caches left out."""
    root = collection_dir()
    if not (root / "galaxy.yml").is_file():
        raise LotdeployError(f"the lotdeploy.coreflux collection is missing ({root})")
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not any(part in rel for part in _SKIP):
            files[rel] = path.read_bytes()
    return files


def paho_zip() -> bytes:
    """paho-mqtt's package and licences as a zip Python imports from (`zipimport`): what
    the modules put on their path on a node without paho. Byte-identical for the same
    paho version (fixed timestamps, sorted entries)."""
    try:
        dist = importlib.metadata.distribution("paho-mqtt")
    except importlib.metadata.PackageNotFoundError:
        raise LotdeployError("paho-mqtt is not installed (pip install lotdeploy)") from None
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for entry in sorted(dist.files or [], key=str):
            name = str(entry)
            keep = (name.startswith("paho/") and name.endswith((".py", "py.typed"))) or (
                ".dist-info/" in name and ("licenses/" in name or name.endswith("METADATA"))
            )
            if not keep or "__pycache__" in name:
                continue
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, Path(str(entry.locate())).read_bytes())
    return buffer.getvalue()
