"""Start-up time of the CLI: what an operator waits for before anything happens.

Run: .venv/bin/python bench/bench_startup.py [--runs 21]

Each figure is the median wall time of N whole processes (interpreter start included), all in
this venv: `python -c pass` as the floor, `python -c "import click"` as the floor of any click
CLI, then the installed `lotdeploy` entry point with --help, --version and `validate` of the
3-node inventories/plant-a.yaml. The ratio is to `python -c pass`; the target for `--help` is
within 2.5×. To see where the time goes:
`.venv/bin/python -X importtime -m lotdeploy --help 2>&1 | sort -t'|' -k2 -n | tail`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, compile_bytecode, median_child, table

HELP_TARGET = 2.5


def entry_point() -> list[str]:
    """The console script beside this interpreter (what `lotdeploy` runs), else `-m`."""
    script = Path(sys.executable).parent / "lotdeploy"
    if script.exists():
        return [str(script)]
    found = shutil.which("lotdeploy")
    return [found] if found else [sys.executable, "-m", "lotdeploy"]


def main() -> None:
    compile_bytecode()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    cli = entry_point()
    site = str(REPO / "inventories" / "plant-a.yaml")
    cases = [
        ("python -c pass", [sys.executable, "-c", "pass"]),
        ('python -c "import click"', [sys.executable, "-c", "import click"]),
        ("lotdeploy --help", [*cli, "--help"]),
        ("lotdeploy --version", [*cli, "--version"]),
        ("lotdeploy validate (3 nodes)", [*cli, "validate", site]),
    ]
    for _, argv in cases:  # warm the page cache and __pycache__ before timing
        median_child(argv, runs=1)
    results = [(name, *median_child(argv, runs=args.runs)) for name, argv in cases]
    floor = results[0][1]
    rows = [("command", "median ms", "× python -c pass", "peak RSS MiB")]
    rows += [
        (name, f"{seconds * 1000:.1f}", f"{seconds / floor:.2f}", f"{rss / 1024:.1f}")
        for name, seconds, rss in results
    ]
    print(f"{args.runs} runs each, {' '.join(cli)}")
    print(table(rows))
    help_ratio = results[2][1] / floor
    verdict = "within" if help_ratio <= HELP_TARGET else "NOT within"
    print(
        f"\nlotdeploy --help is {help_ratio:.2f}× python -c pass: {verdict} the {HELP_TARGET}× target"
    )


if __name__ == "__main__":
    main()
