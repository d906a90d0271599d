"""Benchmark: parse back a 200-node full mesh (200 files x 199 routes = 39,800 routes).

The compiler parses every rendered file back to check it, so this is on the `plan` path.
Each route is shaped like the vendor's 3-node example with USE_TLS true (9 lines).

Compared, each as the median of --runs runs, in routes per second:
  parse            lotdeploy.lot.parse: line fast path, lark for anything else
  lark-tuned       lark alone: LALR + contextual lexer + transformer inside the parser
  lark-tree        naive: LALR building a parse tree, then Transformer.transform
  earley           naive: Earley building a tree, then transform (on --earley-files files,
                   scaled: it is far too slow for the full mesh)

    .venv/bin/python bench/bench_lot_parse.py [--nodes 200] [--runs 5] [--earley-files 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lark import Lark

from lotdeploy.lot import Route, format_routes, parse
from lotdeploy.lot.parser import LotIndenter, _lark, _ToAst, parse_with_lark

_ROUTE = """\
DEFINE ROUTE Node{i:03d}_to_Node{j:03d} WITH TYPE MQTT_CLUSTER
    ADD CLUSTER_CONFIG
        WITH BROKER_ADDRESS "10.20.{a}.{b}"
        WITH BROKER_PORT '8883'
        WITH CLIENT_ID "node{i:03d}-to-node{j:03d}"
        WITH USERNAME "cluster"
        WITH PASSWORD "secure_cluster_pass"
        WITH MESSAGE_VALIDITY_SEC '30'
        WITH USE_TLS true
"""


def mesh_files(nodes: int) -> list[str]:
    """One file per node holding a route to every peer, as the compiler renders them."""
    files = []
    for i in range(nodes):
        routes = [
            _ROUTE.format(i=i, j=j, a=j // 250, b=j % 250 + 1) for j in range(nodes) if j != i
        ]
        files.append("\n".join(routes))
    return files


def naive_parser(kind: str) -> Callable[[str], tuple[Route, ...]]:
    """Tree first, transform after: what a straightforward lark user writes.

    Earley cannot use the contextual lexer (nor its dynamic lexer a postlexer), so it gets the
    basic lexer, with keywords, then upper-case words, given priority over names: enough for
    this data set.
    """
    grammar = resources.files("lotdeploy.lot").joinpath("grammar.lark").read_text()
    if kind == "earley":
        for keyword in (
            "DEFINE",
            "_ROUTE",
            "WITH",
            "_TYPE",
            "ADD",
            "_GET",
            "SECRET",
            "ENV",
            "TRUE",
            "FALSE",
        ):
            grammar = grammar.replace(f"\n{keyword}: /", f"\n{keyword}.3: /")
        grammar = grammar.replace("\nUPPER: /", "\nUPPER.2: /")
        lark = Lark(grammar, parser="earley", lexer="basic", postlex=LotIndenter())
    else:
        lark = Lark(grammar, parser="lalr", lexer="contextual", postlex=LotIndenter())
    transformer = _ToAst()

    def run(text: str) -> tuple[Route, ...]:
        source = text if text.endswith("\n") else text + "\n"
        result: tuple[Route, ...] = transformer.transform(lark.parse(source))
        return result

    return run


def measure(
    name: str, fn: Callable[[str], tuple[Route, ...]], files: list[str], runs: int, scale: float
) -> float:
    count = sum(len(fn(text)) for text in files)  # warm-up, and the route count
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for text in files:
            fn(text)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    rate = count / median
    print(
        f"{name:<11} {rate:>10,.0f} routes/s   {count:>6} routes in {median:6.3f} s"
        f"   (full mesh ~{median * scale:6.2f} s)",
        flush=True,
    )
    return rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--earley-files", type=int, default=2, help="0 to skip Earley")
    args = ap.parse_args()

    t0 = time.perf_counter()
    _lark()  # the shared parser, built once per process
    build_ms = (time.perf_counter() - t0) * 1000
    files = mesh_files(args.nodes)
    total = sum(text.count("DEFINE ROUTE") for text in files)
    reference = parse(files[0])
    assert parse_with_lark(files[0]) == reference
    assert format_routes(reference) == files[0] + "\n" or format_routes(reference) == files[0]
    print(f"{args.nodes} files, {total:,} routes, {sum(map(len, files)) / 1e6:.1f} MB", flush=True)
    print(f"median of {args.runs} runs, Python {sys.version.split()[0]}", flush=True)

    print(f"grammar build (once per process): {build_ms:.0f} ms", flush=True)

    measure("parse", parse, files, args.runs, 1.0)
    measure("lark-tuned", parse_with_lark, files, args.runs, 1.0)
    measure("lark-tree", naive_parser("lalr"), files, args.runs, 1.0)
    if args.earley_files:
        subset = files[: args.earley_files]
        earley = naive_parser("earley")
        assert earley(subset[0]) == reference
        measure("earley", earley, subset, max(1, min(args.runs, 3)), len(files) / len(subset))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
