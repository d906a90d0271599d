"""Benchmark: issuing certificates for a 200-node site, and its first plan including PKI.

Compares, in the same run, against the naive alternatives:
  * RSA-3072 instead of ECDSA P-256 (key generation dominates);
  * saving the encrypted store (scrypt key derivation + AES-GCM + fsync) after every
    certificate instead of once per batch.
Prints medians of --repeat runs and the ratios.

    .venv/bin/python bench/bench_pki.py [--nodes 200] [--rsa-nodes 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lotdeploy.model import Site
from lotdeploy.pki.operations import PkiSession, ensure_pki
from lotdeploy.plan.pki import pki_changes
from lotdeploy.secret import Secret
from lotdeploy.spec import load_site
from lotdeploy.workspace import Workspace

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def make_site(directory: Path, nodes: int, key_type: str) -> tuple[Site, Path]:
    doc = {
        "site": "bench",
        "defaults": {"tls": True},
        "pki": {"key_type": key_type},
        "nodes": [
            {
                "name": f"n{i:03d}",
                "address": f"10.{i // 250}.{i % 250}.1",
                "region": f"r{i % 4}",
                "dns_names": [f"n{i:03d}.bench.example"],
            }
            for i in range(nodes)
        ],
    }
    path = directory / "site.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_site(path).site, path


def workspace(site_file: Path) -> Workspace:
    ws = Workspace.for_site(site_file)
    ws.passphrase_provider = lambda creating: Secret("bench-passphrase-123456")
    return ws


def timed(
    setup: Callable[[Path], tuple[Site, Workspace]], action: Callable[..., object], repeat: int
) -> float:
    samples = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            site, ws = setup(Path(tmp))
            start = time.perf_counter()
            action(site, ws)
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def with_ca(nodes: int, key_type: str) -> Callable[[Path], tuple[Site, Workspace]]:
    """A workspace whose CA and store already exist: measures node issuance only."""

    def setup(tmp: Path) -> tuple[Site, Workspace]:
        site, path = make_site(tmp, nodes, key_type)
        ws = workspace(path)
        PkiSession(site, ws, NOW).ensure_ca()
        return site, ws

    return setup


def empty(nodes: int) -> Callable[[Path], tuple[Site, Workspace]]:
    def setup(tmp: Path) -> tuple[Site, Workspace]:
        site, path = make_site(tmp, nodes, "ecdsa-p256")
        return site, workspace(path)

    return setup


def per_cert_saves(site: Site, ws: Workspace) -> None:
    """Naive: one session per node (what calling node_tls_files alone would do)."""
    for node in site.tls_nodes:
        PkiSession(site, ws, NOW).issue([node])


def pki_plan(site: Site, ws: Workspace) -> None:
    pki_changes(site, ws, NOW)


def whole_plan(site: Site, ws: Workspace) -> None:
    """The lead's full plan (routes + credentials + PKI), when it exists in this tree."""
    try:
        from lotdeploy.plan.make import make_plan
    except ImportError:
        return
    make_plan(site, ws, NOW)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--rsa-nodes", type=int, default=20, help="RSA-3072 is slow: fewer")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n, r = args.nodes, args.repeat

    p256 = timed(with_ca(n, "ecdsa-p256"), lambda s, w: ensure_pki(s, w, NOW), r)
    rsa = timed(with_ca(args.rsa_nodes, "rsa-3072"), lambda s, w: ensure_pki(s, w, NOW), r)
    naive = timed(with_ca(n, "ecdsa-p256"), per_cert_saves, max(1, r // 2))
    plan = timed(empty(n), pki_plan, r)
    full = timed(empty(n), whole_plan, r)

    def issued_setup(tmp: Path) -> tuple[Site, Workspace]:
        site, ws = with_ca(n, "ecdsa-p256")(tmp)
        ensure_pki(site, ws, NOW)
        return site, ws

    steady = timed(issued_setup, pki_plan, r)

    print(f"issue {n} node certs, P-256, one store save:  {p256:7.3f} s  {n / p256:8.1f} certs/s")
    print(
        f"issue {args.rsa_nodes} node certs, RSA-3072:             "
        f"{rsa:7.3f} s  {args.rsa_nodes / rsa:8.1f} certs/s"
    )
    print(f"issue {n} node certs, P-256, save per cert:  {naive:7.3f} s  {n / naive:8.1f} certs/s")
    print(f"first plan, {n} nodes, PKI part (pki_changes):   {plan * 1000:7.1f} ms")
    print(f"first plan, {n} nodes, whole make_plan incl. PKI: {full * 1000:7.1f} ms")
    print(f"plan PKI part, {n} certs issued (read+verify):   {steady * 1000:7.1f} ms")
    print(f"ratio P-256 vs RSA-3072 (certs/s):        {(n / p256) / (args.rsa_nodes / rsa):6.1f}x")
    print(f"ratio one save vs save per cert (time):   {naive / p256:6.1f}x")


if __name__ == "__main__":
    main()
