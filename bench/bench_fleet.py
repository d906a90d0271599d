"""Benchmark fleet apply: three root labs (sites a, b, c; each eu:2,us:1) applied as one
fleet (`lotdeploy apply FLEET --auto-approve`, sites at once) against the same three
applied one after the other (`lotdeploy apply SITE --auto-approve` x 3), in one run.

    sudo .venv/bin/python bench/bench_fleet.py [--repeat 3] [--shape eu:2,us:1]

Every run changes every route of every site (the shared settings file all three sites
`extends` flips MESSAGE_VALIDITY_SEC), so each apply does the same work; the two ways
alternate. Prints the medians and the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import compile_bytecode, lotdeploy, table
from lotdeploy.lab import control, labstate
from lotdeploy.lab.hosts import Layout

PASSPHRASE = "bench-fleet passphrase, not a secret"
ENV = {"LOTDEPLOY_PASSPHRASE": PASSPHRASE}
SITES = ("a", "b", "c")


def cli(*args: str, timeout: float = 900) -> float:
    started = time.perf_counter()
    proc = subprocess.run(
        lotdeploy(*args),
        env=dict(os.environ, **ENV),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(
            f"lotdeploy {' '.join(args[:3])} failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    return time.perf_counter() - started


def share(fleet: Path, validity: int) -> None:
    (fleet / "shared.yaml").write_text(
        yaml.safe_dump({"defaults": {"message_validity_sec": validity}})
    )


def main() -> None:
    compile_bytecode()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shape", default="eu:2,us:1")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (root labs: network namespaces)")
    fleet_s: list[float] = []
    sequential_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="lotfleet-bench-") as tmp:
        fleet = Path(tmp) / "fleet"
        fleet.mkdir()
        try:
            for name in SITES:
                control.up(fleet / name, labstate.parse_shape(None, args.shape))
                site = Layout(fleet / name).site
                doc = yaml.safe_load(site.read_text())
                doc["extends"] = "../shared.yaml"
                doc["defaults"].pop("message_validity_sec", None)
                site.write_text(yaml.safe_dump(doc, sort_keys=False))
            validity = 30
            share(fleet, validity)
            cli("apply", str(fleet), "--auto-approve")
            for run in range(args.repeat):
                for way in ("fleet", "sequential") if run % 2 == 0 else ("sequential", "fleet"):
                    validity += 1  # every route of every site changes
                    share(fleet, validity)
                    if way == "fleet":
                        fleet_s.append(cli("apply", str(fleet), "--auto-approve"))
                    else:
                        started = time.perf_counter()
                        for name in SITES:
                            cli("apply", str(Layout(fleet / name).site), "--auto-approve")
                        sequential_s.append(time.perf_counter() - started)
        finally:
            for name in SITES:
                control.down(fleet / name)
    med = statistics.median
    nodes = sum(int(part.split(":")[1]) for part in args.shape.split(","))
    print(
        f"fleet apply: 3 lab sites of {nodes} nodes ({args.shape}), every route changed, "
        f"medians of {args.repeat}"
    )
    print(
        table(
            [
                ("way", "median s", "runs"),
                (
                    "fleet (3 sites at once)",
                    f"{med(fleet_s):.2f}",
                    " ".join(f"{s:.2f}" for s in fleet_s),
                ),
                (
                    "3 sequential applies",
                    f"{med(sequential_s):.2f}",
                    " ".join(f"{s:.2f}" for s in sequential_s),
                ),
            ]
        )
    )
    print(f"\nratio sequential / fleet: {med(sequential_s) / med(fleet_s):.2f}x")


if __name__ == "__main__":
    main()
