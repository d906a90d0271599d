"""Plan and render of large full meshes: time, routes/s, peak memory, scaling.

Run: .venv/bin/python bench/bench_compile.py [--nodes 200] [--runs 5]

Each figure is the median of N runs of the real CLI in a fresh process (imports included,
as an operator experiences it). "naive" rows run in the same process for comparison:
  - plan, naive topology lookup: each node scans the whole link list for its routes
    (what a straightforward implementation does; quadratic in nodes × links);
  - render, unverified: templates rendered but not parsed back (the cost of the guarantee).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import lotdeploy, median_child, median_seconds, table

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


def naive_plan(site_path: Path) -> None:
    """The same plan, but each node finds its links by scanning every link of the site."""
    from lotdeploy.compiler.routes import route_settings
    from lotdeploy.spec import load_site

    site = load_site(site_path).site
    peers = {n.name: n for n in site.nodes}
    for node in site.nodes:
        [
            route_settings(link, peers[link.target])
            for link in site.links
            if link.source == node.name
        ]


def unverified_render(site_path: Path) -> None:
    from lotdeploy.compiler.routes import node_route_settings
    from lotdeploy.compiler.templates import render_template
    from lotdeploy.spec import load_site

    site = load_site(site_path).site
    for node in site.nodes:
        settings = node_route_settings(site, node)
        render_template(
            None,
            {
                "site": {"name": site.name},
                "node": {"name": node.name, "region": node.region, "address": node.address},
                "routes": [{**s, "password": "x" * 32} for s in settings],
            },
        )


def main() -> None:
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
        from lotdeploy.plan.make import make_plan
        from lotdeploy.plan.render import format_text
        from lotdeploy.spec import load_site
        from lotdeploy.workspace import Workspace

        def indexed_plan() -> None:
            loaded = load_site(site)
            format_text(make_plan(loaded.site, Workspace.for_site(site)))

        for label, fn in (
            ("plan in-process (indexed topology)", indexed_plan),
            ("plan in-process, naive link scan (routes only)", lambda: naive_plan(site)),
            ("render in-process, unverified (naive)", lambda: unverified_render(site)),
        ):
            runs = 1 if "naive link scan" in label else args.runs
            start = time.perf_counter()
            seconds = median_seconds(fn, runs)
            _ = start
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
