"""Benchmark `lotdeploy verify` on root labs of 3 and 10 nodes in two regions (6 and 90
links, full-mesh probes), 80 ms one way between the regions (as the verify tests use): the
wall time of the real CLI (`lotdeploy verify site.yaml`, a child process), medians; against
the naive alternative in the same run, a shell loop verifying one node at a time
(`for n in nodes: lotdeploy verify --limit n --parallelism 1`).

    sudo .venv/bin/python bench/bench_verify.py [--repeat 5] [--sizes 3,10] [--delay 80]

Targets (docs/verify.md): 10-node verify <= 2x the 3-node one, and under 5 s plus the
largest link round trip (2 x the one-way delay).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import compile_bytecode, lotdeploy, table
from lotdeploy.lab import control, labstate

PASSPHRASE = "bench-verify passphrase, not a secret"
ENV = {"LOTDEPLOY_PASSPHRASE": PASSPHRASE}


def run(argv: list[str], cwd: Path, timeout: float = 300, ok: tuple[int, ...] = (0,)) -> float:
    started = time.perf_counter()
    proc = subprocess.run(
        argv,
        env=dict(os.environ, **ENV),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode not in ok:
        raise SystemExit(f"{' '.join(argv[2:5])}... failed ({proc.returncode}): {proc.stderr}")
    return time.perf_counter() - started


def shape(size: int) -> list[tuple[str, str]]:
    eu = (size + 1) // 2
    return labstate.parse_shape(None, f"eu:{eu},us:{size - eu}")


@contextlib.contextmanager
def lab(size: int, delay: int) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lotverify-bench-") as tmp:
        lab_dir = Path(tmp) / "lab"
        try:
            control.up(lab_dir, shape(size), {"eu": delay, "us": delay} if delay else None)
            run(lotdeploy("apply", "site.yaml", "--auto-approve"), lab_dir)
            wait_mesh(lab_dir)
            yield lab_dir
        finally:
            control.down(lab_dir)


def wait_mesh(lab_dir: Path, timeout: float = 60) -> None:
    """Bounded: until `status` says every route is Connected (exit 0)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = subprocess.run(
            lotdeploy("status", "site.yaml"),
            env=dict(os.environ, **ENV),
            cwd=lab_dir,
            capture_output=True,
            timeout=120,
            check=False,
        )
        if proc.returncode == 0:
            return
        time.sleep(1)
    raise SystemExit("the lab's routes did not all connect")


def verify_once(lab_dir: Path) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    proc = subprocess.run(
        lotdeploy("verify", "site.yaml", "--json"),
        env=dict(os.environ, **ENV),
        cwd=lab_dir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"verify failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr}")
    return took, dict(json.loads(proc.stdout))


def naive(lab_dir: Path, nodes: list[str]) -> float:
    started = time.perf_counter()
    for node in nodes:
        run(lotdeploy("verify", "site.yaml", "--limit", node, "--parallelism", "1"), lab_dir)
    return time.perf_counter() - started


def main() -> None:
    compile_bytecode()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--naive-repeat", type=int, default=1)
    parser.add_argument("--sizes", default="3,10")
    parser.add_argument("--delay", type=int, default=80, help="one-way ms between regions")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_verify needs root (a root-mode lab)")
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[tuple[str, ...]] = [
        ("nodes", "links", "verify median s", "runs s", "inner s", "naive s", "naive/verify")
    ]
    medians: dict[int, float] = {}
    for size in sizes:
        with lab(size, args.delay) as lab_dir:
            verify_once(lab_dir)  # the first run creates the probe user everywhere
            runs = [verify_once(lab_dir) for _ in range(args.repeat)]
            walls = [t for t, _ in runs]
            inner = statistics.median(float(str(doc["seconds"])) for _, doc in runs)
            checks: list[dict[str, str]] = runs[0][1]["checks"]  # type: ignore[assignment]
            links = len([c for c in checks if c["kind"] == "link"])
            medians[size] = statistics.median(walls)
            names = [n for n, _ in shape(size)]
            slow = statistics.median(naive(lab_dir, names) for _ in range(args.naive_repeat))
            rows.append(
                (
                    str(size),
                    str(links),
                    f"{medians[size]:.2f}",
                    " ".join(f"{w:.2f}" for w in walls),
                    f"{inner:.2f}",
                    f"{slow:.2f}",
                    f"{slow / medians[size]:.1f}x",
                )
            )
    print(table(rows))
    if len(sizes) >= 2:
        small, big = medians[sizes[0]], medians[sizes[-1]]
        budget = 5 + 2 * args.delay / 1000
        print(
            f"\n{sizes[-1]} vs {sizes[0]} nodes: {big / small:.2f}x (target <= 2x); "
            f"{sizes[-1]}-node verify {big:.2f} s (target < {budget:.2f} s = 5 s + largest RTT)"
        )


if __name__ == "__main__":
    main()
