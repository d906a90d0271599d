"""Small helpers shared by the benchmarks: timing medians and peak memory of a child run."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def compile_bytecode() -> None:
    """Write lotdeploy's own .pyc files before anything is timed.

    A pip install of the package writes them, as does any interpreter allowed to; an editable
    install run under PYTHONDONTWRITEBYTECODE=1 (as on the development machines) never does,
    and every run would compile lotdeploy's sources again (about 0.15 s of each start-up).
    `compileall` writes them even then; the interpreter still reads them.
    """
    import compileall

    compileall.compile_dir(REPO / "lotdeploy", quiet=1)


def median_seconds(fn: Callable[[], object], runs: int = 5) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def run_child(args: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Run a command; return (wall seconds, peak RSS in KiB) of that child alone."""
    full_env = dict(os.environ, **(env or {}))
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=full_env)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 2):
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {err}")
    return elapsed, usage.ru_maxrss


def median_child(
    args: Sequence[str], runs: int = 5, env: dict[str, str] | None = None
) -> tuple[float, int]:
    results = [run_child(args, env) for _ in range(runs)]
    return statistics.median(r[0] for r in results), max(r[1] for r in results)


def lotdeploy(*args: str) -> list[str]:
    return [sys.executable, "-m", "lotdeploy", *args]


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
    )
