"""One benchmark entry point for "Compile at the speed of the disk": every target, beside its
baseline measured in the same run, in one table.

    .venv/bin/python bench/run.py [--quick] [--only startup,plan,render,certs,scale]
                                  [--runs N] [--json FILE]

Every lotdeploy figure is a whole process of the real CLI (the venv's `lotdeploy` console
script, as an operator runs it), its wall time and peak RSS taken by bench.common (median
of N runs; peak RSS is the largest of the runs). Where a figure is compared with a baseline,
the two are run alternately (A B A B ...), so a burst of noise on this shared machine hits
both. What each row means: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_compile import write_site
from bench.common import REPO, compile_bytecode, median_child, run_child, table

GROUPS = ("startup", "plan", "render", "certs", "scale")
PASSPHRASE = "benchmark passphrase 0123456789"
ENV = {"LOTDEPLOY_PASSPHRASE": PASSPHRASE}
NAIVE_WRITER = Path(__file__).resolve().parent / "naive_writer.py"
RENDER_MEMORY = Path(__file__).resolve().parent / "render_memory.py"
MIB = 1024  # run_child reports KiB


@dataclass
class Row:
    group: str
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""
    ok: bool | None = None  # None: for information, no target
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline


def fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit in ("MiB", "KiB/node", "µs/route", "%"):
        return f"{value:,.1f} {unit}"
    if unit == "certs/s":
        return f"{value:,.0f} certs/s"
    return f"{value:.2f} {unit}".strip()


def entry_point() -> list[str]:
    """The venv's `lotdeploy` console script (what an operator runs), else `-m lotdeploy`."""
    script = Path(sys.executable).parent / "lotdeploy"
    return [str(script)] if script.exists() else [sys.executable, "-m", "lotdeploy"]


CLI = entry_point()


def cli(*args: str | Path) -> list[str]:
    return [*CLI, *map(str, args)]


def alternate(
    cases: dict[str, list[str]],
    runs: int,
    before: dict[str, Callable[[], None]] | None = None,
) -> dict[str, tuple[float, int]]:
    """Median wall seconds and max peak RSS KiB of each case, the cases run in turn.

    `cases` gives each case's argv; `before[name]` (untimed) runs before each run of it,
    e.g. to empty an output directory.
    """
    samples = alternate_samples(cases, runs, before)
    return {
        name: (statistics.median(s for s, _ in got), max(r for _, r in got))
        for name, got in samples.items()
    }


def alternate_samples(
    cases: dict[str, list[str]],
    runs: int,
    before: dict[str, Callable[[], None]] | None = None,
) -> dict[str, list[tuple[float, int]]]:
    """Each case's (wall seconds, peak RSS KiB) per run, the cases run in turn (A B A B)."""
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, argv in cases.items():
            if before and name in before:
                before[name]()
            samples[name].append(run_child(argv, ENV))
    return samples


def emptied(path: Path) -> Callable[[], None]:
    def clear() -> None:
        shutil.rmtree(path, ignore_errors=True)

    return clear


class Bench:
    def __init__(self, tmp: Path, runs: int, quick: bool) -> None:
        self.tmp = tmp
        self.runs = runs
        self.quick = quick
        self.rows: list[Row] = []
        #: whole-process (seconds, peak KiB) of plan and first render by node count
        self.plan_at: dict[int, tuple[float, int]] = {}
        self.render_at: dict[int, tuple[float, int]] = {}

    def runs_for(self, nodes: int) -> int:
        """Runs per figure at this size: the big meshes take long, and vary less."""
        return self.runs if nodes <= 200 else (2 if nodes <= 400 else 1)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(f"  {row.name}: {fmt(row.value, row.unit)}", file=sys.stderr, flush=True)
        return row

    def site(self, nodes: int, tls: bool = False) -> Path:
        directory = self.tmp / f"n{nodes}{'-tls' if tls else ''}"
        if not (directory / "site.yaml").exists():
            directory.mkdir(parents=True, exist_ok=True)
            write_site(directory, nodes, tls)
        return directory / "site.yaml"

    # -- start-up ---------------------------------------------------------------------------

    def startup(self) -> None:
        runs = 4 * self.runs + 1
        plant = REPO / "inventories" / "plant-a.yaml"
        cases = {
            "floor": [sys.executable, "-c", "pass"],
            "help": cli("--help"),
            "version": cli("--version"),
            "validate": cli("validate", plant),
        }
        alternate(cases, 1)  # warm the page cache and __pycache__
        got = alternate(cases, runs)
        floor = got["floor"][0]
        self.add(Row("startup", "python -c pass (floor)", floor, "s", note=f"{runs} runs"))
        for key, label in (("help", "lotdeploy --help"), ("version", "lotdeploy --version")):
            seconds = got[key][0]
            self.add(
                Row(
                    "startup",
                    label,
                    seconds,
                    "s",
                    floor,
                    "python -c pass",
                    "≤ 3× floor or ≤ 0.15 s",
                    seconds <= 3 * floor or seconds <= 0.15,
                )
            )
        seconds = got["validate"][0]
        self.add(
            Row(
                "startup",
                "lotdeploy validate (3 nodes)",
                seconds,
                "s",
                floor,
                "python -c pass",
                "≤ 0.3 s",
                seconds <= 0.3,
            )
        )

    # -- plan (200 nodes) -------------------------------------------------------------------

    def plan(self) -> None:
        site = self.site(200)
        cases = {
            "validate": cli("validate", site),
            "plan": cli("plan", site),
            "json": cli("plan", "--json", site),
        }
        alternate(cases, 1)
        got = alternate(cases, self.runs)
        base = got["validate"][0]
        self.plan_at[200] = got["plan"]
        self.add(Row("plan", "validate, 200 nodes (parse floor)", base, "s"))
        for key, label, limit in (("plan", "plan", 1.0), ("json", "plan --json", 1.5)):
            seconds = got[key][0]
            self.add(
                Row(
                    "plan",
                    f"{label}, 200 nodes (39,800 routes)",
                    seconds,
                    "s",
                    base,
                    "validate",
                    f"≤ {limit} s",
                    seconds <= limit,
                )
            )
        rss = got["json"][1] / MIB
        self.add(
            Row(
                "plan",
                "plan --json peak RSS, 200 nodes",
                rss,
                "MiB",
                got["plan"][1] / MIB,
                "plan (text) RSS",
                "≤ 200 MiB",
                rss <= 200,
            )
        )

    # -- render (200 nodes) -----------------------------------------------------------------

    def render(self) -> None:
        site = self.site(200)
        base = site.parent
        ref = base / "out-ref"
        if not ref.exists():
            run_child(cli("render", site, "--out", ref), ENV)  # also makes the workspace
        first, copy_file, copy_dir, copy_plain = (
            base / "out-first",
            base / "copy-file",
            base / "copy-dir",
            base / "copy-plain",
        )
        naive = [sys.executable, str(NAIVE_WRITER), str(ref)]
        cases = {
            "render": cli("render", site, "--out", first),
            "file": [*naive, str(copy_file), "--dir-fsync", "file"],
            "dir": [*naive, str(copy_dir), "--dir-fsync", "dir"],
            "plain": [*naive, str(copy_plain), "--plain"],
        }
        before = {
            "render": emptied(first),
            "file": emptied(copy_file),
            "dir": emptied(copy_dir),
            "plain": emptied(copy_plain),
        }
        got = alternate(cases, self.runs, before)
        files = sum(1 for p in ref.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in ref.rglob("*") if p.is_file()) / 2**20
        naive_s = got["file"][0]
        seconds = got["render"][0]
        self.render_at[200] = got["render"]
        self.add(
            Row(
                "render",
                "first render, 200 nodes (empty --out)",
                seconds,
                "s",
                naive_s,
                "naive durable writer",
                "≤ 3× naive writer",
                seconds <= 3 * naive_s,
                f"{files} files, {size:.1f} MiB",
            )
        )
        self.add(
            Row(
                "render",
                "naive writer: dir fsync per file",
                naive_s,
                "s",
                note="tmp+write+fsync+rename, fsync dir per file",
            )
        )
        self.add(
            Row(
                "render",
                "naive writer: dir fsync per directory",
                got["dir"][0],
                "s",
                naive_s,
                "dir fsync per file",
                note="what batching the directory fsync gives",
            )
        )
        self.add(
            Row(
                "render",
                "plain writes, no fsync (floor)",
                got["plain"][0],
                "s",
                naive_s,
                "dir fsync per file",
                note="not durable; for information",
            )
        )
        again, _ = median_child(cli("render", site, "--out", ref), self.runs, ENV)
        self.add(
            Row(
                "render",
                "re-render, 200 nodes, nothing changed",
                again,
                "s",
                seconds,
                "first render",
                "≤ 1.5 s",
                again <= 1.5,
            )
        )

    # -- certificates -----------------------------------------------------------------------

    def certs(self) -> None:
        nodes = 200
        site = self.site(nodes, tls=True)
        run_child(cli("certs", "init", site), ENV)
        run_child(cli("certs", "rotate", site), ENV)  # warm-up: the store holds every key
        cases = {
            "all": cli("certs", "rotate", site),
            "one": cli("certs", "rotate", site, "--node", "n000"),
        }
        pairs = 2 * self.runs  # a difference of two ~0.5 s runs: pairs, and more of them
        got = alternate_samples(cases, pairs)
        delta = statistics.median(
            a - o for (a, _), (o, _) in zip(got["all"], got["one"], strict=True)
        )
        rate = (nodes - 1) / delta if delta > 0 else math.inf
        bare = bare_certs_per_second(nodes, self.runs)
        self.add(
            Row(
                "certs",
                f"lotdeploy certs rotate, {nodes} P-256 node certs",
                rate,
                "certs/s",
                bare,
                "bare cryptography loop",
                "≥ 1,500 certs/s",
                rate >= 1500,
                f"median over {pairs} pairs of (rotate all − rotate one node, run right "
                f"after) = {delta:.3f} s for {nodes - 1} certs",
            )
        )
        self.add(
            Row(
                "certs",
                "bare cryptography loop (keygen + sign, in memory)",
                bare,
                "certs/s",
                note="same P-256 node certificate profile, in-process",
            )
        )

    # -- scale ------------------------------------------------------------------------------

    def growth_pairs(self, nodes: int) -> int:
        """Pairs (2-node run, N-node run) for the time-per-route rows: the small sizes are
        short, and their difference from the 2-node run is small beside the noise."""
        if nodes <= 100:
            return 3 * self.runs
        if nodes <= 200:
            return 2 * self.runs
        return 3 if nodes <= 400 else 1

    def scale(self) -> None:
        sizes = [100, 200] if self.quick else [100, 200, 400, 1000]
        fixed_site = self.site(2)
        fixed_out = fixed_site.parent / "out"
        fixed_argv = {
            "plan": cli("plan", fixed_site),
            "render": cli("render", fixed_site, "--out", fixed_out),
        }
        fixed = alternate(fixed_argv, self.runs, {"render": emptied(fixed_out)})
        #: kind -> size -> median over pairs of (N-node run - 2-node run just before it), s
        above: dict[str, dict[int, float]] = {"plan": {}, "render": {}}
        for n in sizes:
            site = self.site(n)
            out = site.parent / "out-scale"
            argv = {"plan": cli("plan", site), "render": cli("render", site, "--out", out)}
            for kind, at in (("plan", self.plan_at), ("render", self.render_at)):
                pairs = alternate_samples(
                    {"fixed": fixed_argv[kind], "sized": argv[kind]},
                    self.growth_pairs(n),
                    {"fixed": emptied(fixed_out), "sized": emptied(out)},
                )
                fixed_runs, sized_runs = pairs["fixed"], pairs["sized"]
                above[kind][n] = statistics.median(
                    b - a for (a, _), (b, _) in zip(fixed_runs, sized_runs, strict=True)
                )
                if n not in at:
                    at[n] = (
                        statistics.median(t for t, _ in sized_runs),
                        max(k for _, k in sized_runs),
                    )
            shutil.rmtree(out, ignore_errors=True)
        for kind, at in (("plan", self.plan_at), ("render", self.render_at)):
            per_route: dict[int, float] = {}
            for n in sizes:
                seconds, kib = at[n]
                routes = n * (n - 1)
                per_route[n] = above[kind][n] / routes * 1e6
                target, ok = "", None
                if n == 1000 and kind == "plan":
                    target, ok = "≤ 10 s", seconds <= 10
                if n == 1000 and kind == "render":
                    target, ok = "≤ 60 s", seconds <= 60
                self.add(
                    Row(
                        "scale",
                        f"{kind}, {n} nodes ({routes:,} routes)",
                        seconds,
                        "s",
                        target=target,
                        ok=ok,
                        note=f"{self.growth_pairs(n)} pair(s); {per_route[n]:.2f} µs/route "
                        "above the 2-node run beside it",
                    )
                )
                if n == 1000 and kind == "plan":
                    rss = kib / MIB
                    self.add(
                        Row(
                            "scale",
                            "plan peak RSS, 1000 nodes",
                            rss,
                            "MiB",
                            target="≤ 1.5 GiB",
                            ok=rss <= 1536,
                        )
                    )
            mid = statistics.median(per_route.values())
            spread = max(abs(v - mid) / mid for v in per_route.values()) * 100
            lo, hi = sizes[0], sizes[-1]
            self.add(
                Row(
                    "scale",
                    f"{kind} time per route, {lo}→{hi} nodes: worst deviation",
                    spread,
                    "%",
                    target="within ±30% of the median",
                    ok=spread <= 30,
                    note=", ".join(f"{n}: {v:.2f}" for n, v in per_route.items())
                    + " µs/route (each: the median over pairs of the run less the 2-node run "
                    f"just before it; 2-node run alone {fixed[kind][0]:.3f} s)",
                )
            )
        base_kib = fixed["render"][1]
        for n in sizes:
            self.add(
                Row(
                    "scale",
                    f"render peak RSS per node, {n} nodes",
                    self.render_at[n][1] / n,
                    "KiB/node",
                    note=f"peak {self.render_at[n][1] / MIB:.0f} MiB",
                )
            )
        lo, hi = sizes[0], sizes[-1]
        grow_lo = max(self.render_at[lo][1] - base_kib, 1)
        grow_hi = max(self.render_at[hi][1] - base_kib, 1)
        exponent = math.log(grow_hi / grow_lo) / math.log(hi / lo)
        self.add(
            Row(
                "scale",
                f"render peak RSS growth exponent, {lo}→{hi} nodes",
                exponent,
                "",
                note=f"whole process, above the 2-node run ({base_kib / MIB:.0f} MiB, set by "
                "scrypt's 64 MiB when the secret store opens): no signal while render stays "
                "below that floor",
            )
        )
        growth = {n: self.render_growth(self.site(n)) for n in (2, lo, hi)}
        own_lo = max(growth[lo] - growth[2], 1)
        own_hi = max(growth[hi] - growth[2], 1)
        own = math.log(own_hi / own_lo) / math.log(hi / lo)
        self.add(
            Row(
                "scale",
                f"render memory growth exponent, {lo}→{hi} nodes",
                own,
                "",
                target="≤ 1.25 (1 = nodes, 2 = routes)",
                ok=own <= 1.25,
                note=", ".join(f"{n}: {kib / 1024:.1f}" for n, kib in growth.items())
                + " MiB: resident growth of write_bundles (bench/render_memory.py); k from these "
                "less the 2-node one",
            )
        )

    def render_growth(self, site: Path) -> int:
        """KiB the render itself adds to the resident set (bench/render_memory.py)."""
        out = site.parent / "out-memory"
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.run(
            [sys.executable, str(RENDER_MEMORY), str(site), str(out)],
            env=dict(os.environ, **ENV),
            capture_output=True,
            text=True,
            check=True,
        )
        shutil.rmtree(out, ignore_errors=True)
        return int(proc.stdout.split()[-1])


def bare_certs_per_second(nodes: int, repeat: int) -> float:
    """Issue `nodes` P-256 node certificates with cryptography alone, in memory: keygen, the
    profile lotdeploy.pki.issue uses (same subject, extensions, SANs), SHA-256 signature by
    a P-256 CA. Median over `repeat` batches."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for i in range(nodes):
            key = ec.generate_private_key(ec.SECP256R1())
            public = key.public_key()
            sans: list[x509.GeneralName] = [
                x509.IPAddress(ipaddress.ip_address(f"10.{i // 250}.{i % 250}.1"))
            ]
            (
                x509.CertificateBuilder()
                .subject_name(
                    x509.Name(
                        [
                            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bench"),
                            x509.NameAttribute(NameOID.COMMON_NAME, f"n{i:03d}"),
                        ]
                    )
                )
                .issuer_name(ca_name)
                .public_key(public)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(hours=1))
                .not_valid_after(now + timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                    critical=True,
                )
                .add_extension(
                    x509.ExtendedKeyUsage(
                        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                    ),
                    critical=False,
                )
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                    critical=False,
                )
                .sign(ca_key, hashes.SHA256())
            )
        samples.append(time.perf_counter() - start)
    return nodes / statistics.median(samples)


def machine() -> dict[str, str]:
    def cmd(args: Sequence[str]) -> str:
        try:
            return subprocess.run(args, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return "?"

    mem = cmd(["free", "-h"]).splitlines()
    return {
        "commit": cmd(["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=12"]),
        # the last commit that changed the code measured (the bench branch moves on its own)
        "code": cmd(["git", "-C", str(REPO), "log", "-1", "--format=%h", "--", "lotdeploy"]),
        "python": platform.python_version(),
        "nproc": str(os.cpu_count()),
        "memory": mem[1].split()[1] if len(mem) > 1 else "?",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cli": " ".join(CLI),
    }


def render_table(rows: list[Row]) -> str:
    out: list[tuple[str, ...]] = [("measurement", "value", "baseline", "ratio", "target", "result")]
    for row in rows:
        baseline = (
            f"{fmt(row.baseline, row.unit)} ({row.baseline_name})"
            if row.baseline is not None
            else ""
        )
        ratio = f"{row.ratio:.2f}×" if row.ratio is not None else ""
        result = "" if row.ok is None else ("pass" if row.ok else "FAIL")
        out.append((row.name, fmt(row.value, row.unit), baseline, ratio, row.target, result))
    return "\n".join(line.rstrip() for line in table(out).splitlines())


BEGIN = "<!-- bench/run.py results: begin -->"
END = "<!-- bench/run.py results: end -->"


def replace_block(doc: Path, report: str) -> None:
    """Put `report` between the BEGIN and END markers of `doc` (the one replaceable block)."""
    text = doc.read_text()
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise SystemExit(f"{doc}: no {BEGIN} ... {END} block to replace")
    block = f"{BEGIN}\n```text\n$ .venv/bin/python {' '.join(sys.argv)}\n{report}\n```\n{END}"
    doc.write_text(head + block + tail)


def main() -> None:
    compile_bytecode()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, no 400/1000 nodes")
    parser.add_argument("--only", default=",".join(GROUPS), help=f"subset of {','.join(GROUPS)}")
    parser.add_argument("--runs", type=int, help="runs per measurement (default 5, quick 3)")
    parser.add_argument("--json", type=Path, help="also write the rows and the machine here")
    parser.add_argument(
        "--doc", type=Path, help="also replace the results block of this file (docs/performance.md)"
    )
    args = parser.parse_args()
    only = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = set(only) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s) {', '.join(sorted(unknown))}; choose from {GROUPS}")
    runs = args.runs or (3 if args.quick else 5)
    info = machine()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lotdeploy-bench-") as tmp:
        bench = Bench(Path(tmp), runs, args.quick)
        for group in GROUPS:
            if group in only:
                print(f"[{group}]", file=sys.stderr, flush=True)
                getattr(bench, group)()
    elapsed = time.perf_counter() - started
    failed = [r.name for r in bench.rows if r.ok is False]
    heading = (
        f"lotdeploy {info['commit']} (lotdeploy/ as of {info['code']}), Python {info['python']}, {info['nproc']} CPUs, "
        f"{info['memory']} RAM, {info['date']}; {runs} runs per figure "
        f"({'quick' if args.quick else 'full'}), {elapsed:.0f} s in all"
    )
    notes = [f"  {r.name}: {r.note}" for r in bench.rows if r.note]
    report = "\n".join(
        [
            heading,
            render_table(bench.rows),
            *(["", "notes:", *notes] if notes else []),
            "",
            f"{sum(r.ok is True for r in bench.rows)} pass, {len(failed)} fail",
        ]
    )
    print(report)
    if args.doc:
        replace_block(args.doc, report)
    if args.json:
        doc = {
            "machine": info,
            "runs": runs,
            "quick": args.quick,
            "seconds": elapsed,
            "rows": [{**asdict(r), "ratio": r.ratio} for r in bench.rows],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
