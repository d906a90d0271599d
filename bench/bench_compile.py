"""Plan and render of large full meshes: time, routes/s, peak memory, scaling.

Run: .venv/bin/python bench/bench_compile.py [--nodes 200] [--runs 5]

Each figure is the median of N runs of the real CLI in a fresh process (imports included,
as an operator experiences it). "naive" rows run in the same process for comparison:
  - plan, naive topology lookup: the same plan, but each node scans the whole link list for
    its routes (what a straightforward implementation does; nodes × links);
  - render, naive: templates rendered but not parsed back (the cost of the guarantee).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import compile_bytecode, lotdeploy, median_child, median_seconds, table

PASSPHRASE = {"LOTDEPLOY_PASSPHRASE": "benchmark passphrase"}


def write_site(directory: Path, nodes: int, tls: bool = False) -> Path:
    regions = ["eu", "us", "ap"]
    lines = ["site: bench", "defaults:", f"  tls: {'true' if tls else 'false'}", "nodes:"]
    for i in range(nodes):
        lines += [
            f"  - name: n{i:03d}",
            f"    address: 10.{i // 250}.{i % 250}.1",
            f"    region: {regions[i % 3]}",
        ]
    path = directory / "site.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _plan(site_path: Path) -> None:
    from lotdeploy.plan.make import make_plan
    from lotdeploy.plan.text import format_text
    from lotdeploy.spec import load_site
    from lotdeploy.workspace import Workspace

    format_text(make_plan(load_site(site_path).site, Workspace.for_site(site_path)))


def naive_plan(site_path: Path) -> None:
    """The same plan, but each node finds its links by scanning every link of the site."""
    from lotdeploy.model import Site

    indexed = Site.links_from

    def scan(self: Site, source: str) -> tuple:  # type: ignore[type-arg]
        return tuple(link for link in self.links if link.source == source)

    Site.links_from = scan  # type: ignore[method-assign]
    try:
        _plan(site_path)
    finally:
        Site.links_from = indexed  # type: ignore[method-assign]


def _render(site_path: Path, verify: bool) -> None:
    from lotdeploy.compiler.compile import compile_node
    from lotdeploy.compiler.routes import node_route_settings
    from lotdeploy.compiler.templates import render_template
    from lotdeploy.secret import Secret
    from lotdeploy.spec import load_site

    site = load_site(site_path).site
    password = Secret("x" * 32)
    for node in site.nodes:
        if verify:
            compile_node(site, node, password)
            continue
        settings = node_route_settings(site, node)
        context = {
            "site": {"name": site.name},
            "node": {"name": node.name, "region": node.region, "address": node.address},
            "routes": [{**s, "password": password.reveal()} for s in settings],
        }
        render_template(None, context)


def main() -> None:
    compile_bytecode()
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows = [("what", "nodes", "routes", "median s", "routes/s", "peak RSS MiB")]
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted({max(2, args.nodes // 4), max(2, args.nodes // 2), args.nodes}):
            directory = Path(tmp) / f"n{n}"
            directory.mkdir()
            site = write_site(directory, n)
            routes = n * (n - 1)
            seconds, rss = median_child(lotdeploy("plan", str(site)), args.runs)
            rows.append(
                (
                    "plan (CLI)",
                    str(n),
                    str(routes),
                    f"{seconds:.2f}",
                    f"{routes / seconds:,.0f}",
                    f"{rss / 1024:.0f}",
                )
            )
            out = directory / "out"
            seconds, rss = median_child(
                lotdeploy("render", str(site), "--out", str(out)), args.runs, env=PASSPHRASE
            )
            rows.append(
                (
                    "render (CLI, parse-back verified)",
                    str(n),
                    str(routes),
                    f"{seconds:.2f}",
                    f"{routes / seconds:,.0f}",
                    f"{rss / 1024:.0f}",
                )
            )
        site = Path(tmp) / f"n{args.nodes}" / "site.yaml"
        routes = args.nodes * (args.nodes - 1)
        for label, fn in (
            ("plan in-process (indexed topology)", lambda: _plan(site)),
            ("plan in-process, naive: each node scans all links", lambda: naive_plan(site)),
            ("render in-process, parse-back verified", lambda: _render(site, True)),
            ("render in-process, naive: template output trusted", lambda: _render(site, False)),
        ):
            runs = 1 if "scans all links" in label else args.runs
            seconds = median_seconds(fn, runs)
            rows.append(
                (
                    label,
                    str(args.nodes),
                    str(routes),
                    f"{seconds:.2f}",
                    f"{routes / seconds:,.0f}",
                    "-",
                )
            )
    print(table(rows))


if __name__ == "__main__":
    main()
