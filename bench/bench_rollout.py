"""Benchmark a rollout on a root lab: 10 nodes (ap:3, eu:3, us:4) in 4 waves (the default
waves: canary ap1, the rest of ap, eu, us), every node changed each run (a route validity
flipped), a `lotdeploy verify` gate after every wave. Against the naive alternative in the
same run: one plain apply of all 10 nodes at once (no waves, no gates).

    sudo .venv/bin/python bench/bench_rollout.py [--repeat 3]

Prints, as medians over the runs: the time of each wave's apply and of each gate, the
rollout's total, the plain apply's, and the ratios (what the safety costs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import compile_bytecode, lotdeploy, table
from lotdeploy.lab import control, labstate
from lotdeploy.lab.hosts import Layout

PASSPHRASE = "bench-rollout passphrase, not a secret"
ENV = {"LOTDEPLOY_PASSPHRASE": PASSPHRASE}
SHAPE = "ap:3,eu:3,us:4"


def cli(*args: str, timeout: float = 600) -> tuple[float, str]:
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
        raise SystemExit(f"lotdeploy {' '.join(args[:3])} failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - started, proc.stdout


def variant(site: Path, name: str, validity: int, rollout: bool) -> Path:
    doc = yaml.safe_load(site.read_text())
    doc["defaults"]["message_validity_sec"] = validity
    if rollout:
        doc["rollout"] = {}
    path = site.parent / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def main() -> None:
    compile_bytecode()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (a root lab: network namespaces)")
    waves: dict[str, list[float]] = {}
    gates: dict[str, list[float]] = {}
    totals: list[float] = []
    plain: list[float] = []
    with tempfile.TemporaryDirectory(prefix="lotrollout-bench-") as tmp:
        lab_dir = Path(tmp) / "lab"
        try:
            control.up(lab_dir, labstate.parse_shape(None, SHAPE))
            site = Layout(lab_dir).site
            cli("apply", str(site), "--auto-approve")
            validity = 30
            for _ in range(args.repeat):
                validity += 1  # every node's in-region routes change: every wave has work
                seconds, out = cli(
                    "apply",
                    str(variant(site, "r.yaml", validity, True)),
                    "--auto-approve",
                    "--json",
                )
                totals.append(seconds)
                summary: dict[str, Any] = {}
                for line in out.splitlines():
                    event = json.loads(line) if line.startswith("{") else {}
                    if event.get("event") == "summary":
                        summary = event["rollout"]
                if summary.get("status") != "complete":
                    raise SystemExit(f"rollout did not complete: {summary}")
                for wave in summary["waves"]:
                    waves.setdefault(wave["name"], []).append(wave["apply_seconds"])
                    gates.setdefault(wave["name"], []).append(wave["gate"]["seconds"])
                validity += 1
                seconds, _ = cli(
                    "apply", str(variant(site, "p.yaml", validity, False)), "--auto-approve"
                )
                plain.append(seconds)
        finally:
            control.down(lab_dir)
    med = statistics.median
    rows = [("wave", "nodes", "apply s", "gate s")]
    sizes = {"canary": 1, "ap": 2, "eu": 3, "us": 4}
    for name in waves:
        rows.append(
            (name, str(sizes.get(name, "?")), f"{med(waves[name]):.2f}", f"{med(gates[name]):.2f}")
        )
    apply_total = sum(med(v) for v in waves.values())
    gate_total = sum(med(v) for v in gates.values())
    rows.append(("all waves", "10", f"{apply_total:.2f}", f"{gate_total:.2f}"))
    print(f"rollout of 10 lab nodes ({SHAPE}) in {len(waves)} waves, medians of {args.repeat}")
    print(table(rows))
    print(
        f"\nrollout total (CLI wall): {med(totals):.2f} s; plain apply of all 10 at once: "
        f"{med(plain):.2f} s; ratio {med(totals) / med(plain):.1f}x; gates are "
        f"{100 * gate_total / med(totals):.0f}% of the rollout"
    )


if __name__ == "__main__":
    main()
