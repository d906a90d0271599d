"""How much a render's resident memory grows while it makes and writes the bundles.

Run: .venv/bin/python bench/render_memory.py SITE OUT   (prints KiB)

Why beside the peak RSS of the whole process: opening the secret store runs scrypt, which
takes 64 MiB for a moment in every render, of any size, before any node is made. A render
whose own memory stays below that never moves the process's peak RSS, so that peak cannot
tell memory that grows with the nodes from memory that grows with the routes. Here the
site is loaded, the store opened and the compiler imported first; then the kernel's
high-water mark of this process is reset (`5` into /proc/self/clear_refs, Linux ≥ 4.0),
`write_bundles` runs, and the figure is the new high-water mark (VmHWM) less the resident
size it started from: the memory render itself needed at its worst.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def render_growth_kib(site_path: Path, out: Path) -> int:
    import lotdeploy.compiler.compile  # noqa: F401  (imports are not render's memory)
    from lotdeploy.render import write_bundles
    from lotdeploy.spec import load_site
    from lotdeploy.workspace import Workspace

    site = load_site(site_path).site
    workspace = Workspace.for_site(site_path)
    workspace.secrets()  # scrypt and the store, before the mark is reset
    Path("/proc/self/clear_refs").write_text("5")
    start = _status_kib("VmRSS")
    write_bundles(site, workspace, out)
    return _status_kib("VmHWM") - start


if __name__ == "__main__":
    print(render_growth_kib(Path(sys.argv[1]), Path(sys.argv[2])))
