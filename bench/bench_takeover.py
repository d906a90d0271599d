"""Measure what a take-over costs the traffic, with an independent client (paho-mqtt).

On a root lab with the vendor's three-node example planted (`lab up --fixture
vendor-example`), import it, put the site on TLS and run `lotdeploy takeover` while
tests/paho_observer.py publishes a numbered stream on every node and counts, on every node,
what arrives: missing and duplicated messages per run. One run per case:

    sudo .venv/bin/python bench/bench_takeover.py [--rate 20] [--case overwrite ...]

cases: `overwrite` (brokers that replace a re-added route in place: routes are changed
without a remove), `reject` (brokers that refuse a re-add: each changed route is removed,
then added), `rename` (overwrite, and the adopted routes moved to lotdeploy's names: a new
route beside the old one, then the old one removed), `reject-rename` (both). docs/adopt.md has the results.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import compile_bytecode, lotdeploy
from lotdeploy.lab import labstate
from lotdeploy.lab.hosts import Layout
from tests.paho_observer import Observer

PASSPHRASE = "bench-takeover passphrase, not a secret"
ENV = {"LOTDEPLOY_PASSPHRASE": PASSPHRASE}
CASES = {
    "overwrite": (["--dialect", "lab=overwrite"], []),
    "reject": ([], []),
    "rename": (["--dialect", "lab=overwrite"], ["--rename"]),
    "reject-rename": ([], ["--rename"]),
}


def cli(*args: str, timeout: float = 600) -> str:
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
    return proc.stdout


def one(case: str, rate: float) -> str:
    lab_args, takeover_args = CASES[case]
    with tempfile.TemporaryDirectory(prefix="bench-takeover-") as tmp:
        lab = Path(tmp) / "lab"
        try:
            cli(
                "lab",
                "up",
                "--nodes",
                "3",
                "--fixture",
                "vendor-example",
                "--dir",
                str(lab),
                *lab_args,
            )
            site = Path(tmp) / "plant" / "site.yaml"
            cli("import", str(Layout(lab).site), "--out", str(site))
            doc = yaml.safe_load(site.read_text())
            doc["defaults"]["tls"] = True
            site.write_text(yaml.safe_dump(doc, sort_keys=False))
            state = labstate.require(lab)
            password = Layout(lab).password_file.read_text().strip()
            observer = Observer(
                {n.name: (n.address, 1883) for n in state.nodes}, "root", password, rate
            )
            observer.start()
            time.sleep(1.0)
            started = time.perf_counter()
            cli("takeover", str(site), "--auto-approve", *takeover_args)
            took = time.perf_counter() - started
            time.sleep(1.0)
            tally = observer.stop()
        finally:
            subprocess.run(
                lotdeploy("lab", "down", "--dir", str(lab)),
                capture_output=True,
                timeout=120,
                check=False,
            )
    pairs = {f"{s}->{d}": n for (s, d), n in tally.missing().items() if n}
    twice = {f"{s}->{d}": n for (s, d), n in tally.duplicated().items() if n}
    return (
        f"{case}: take-over {took:.1f} s; {tally.summary()}"
        + (f"; missing {pairs}" if pairs else "")
        + (f"; duplicated {twice}" if twice else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="messages/s per node")
    parser.add_argument("--case", action="append", choices=sorted(CASES))
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (a root lab)")
    compile_bytecode()
    for case in args.case or list(CASES):
        print(one(case, args.rate), flush=True)


if __name__ == "__main__":
    main()
