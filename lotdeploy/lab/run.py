"""One way to run a command in the lab: bounded in time, failures become a LabError naming the
node and the cause (never a traceback for a missing tool or a stuck command)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

from lotdeploy.errors import LabError
from lotdeploy.secret import scrub

DEFAULT_TIMEOUT = 20.0


def run(
    cmd: Sequence[str],
    *,
    node: str = "lab",
    timeout: float = DEFAULT_TIMEOUT,
    check: bool = True,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd`, capture its output; raise LabError("node X: <cmd> failed: <stderr>")."""
    argv = list(cmd)
    what = " ".join(argv[:6])
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError as exc:
        raise LabError(f"{node}: {argv[0]} is not installed ({exc.strerror})") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{node}: `{what}` did not finish within {timeout:g} s") from None
    if check and proc.returncode != 0:
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        detail = scrub(lines[-1]) if lines else "no output"
        raise LabError(f"{node}: `{what}` failed (exit {proc.returncode}): {detail}")
    return proc


def try_run(cmd: Sequence[str], *, node: str = "lab", timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Run for cleanup: True on success, False on any failure (down must go on regardless)."""
    try:
        return run(cmd, node=node, timeout=timeout, check=False).returncode == 0
    except LabError:
        return False


def which(tool: str) -> str | None:
    """Find a tool also in the sbin directories a non-root PATH often lacks."""
    extra = os.pathsep.join(["/usr/sbin", "/sbin", "/usr/local/sbin"])
    return shutil.which(tool, path=os.environ.get("PATH", "") + os.pathsep + extra)


def require_tools(tools: dict[str, str]) -> dict[str, str]:
    """Map tool -> absolute path, or one LabError naming every missing tool and its package."""
    found: dict[str, str] = {}
    missing: list[str] = []
    for tool, package in tools.items():
        path = which(tool)
        if path is None:
            missing.append(f"{tool} (Debian package {package})")
        else:
            found[tool] = path
    if missing:
        pkgs = " ".join(sorted({tools[t.split()[0]] for t in missing}))
        raise LabError(
            "the lab needs " + ", ".join(missing) + f"; install with: apt-get install -y {pkgs}"
        )
    return found
