"""Benchmark `lotdeploy apply` on root labs: a fresh apply of 1, 3 and 10 nodes (a new lab
for each run), against a naive sequential loop doing the same pushes with one `scp` per
file, one `ssh` for the reload, and the broker commands through `ssh -L` plus a small
Python client; then a no-op apply, a `drift` and a `plan --refresh` of the largest size.
Prints medians and ratios.

    sudo .venv/bin/python bench/bench_apply.py [--repeat 3] [--sizes 1,3,10] [--skip-naive]
        [--transport openssh|ssh]   (written into the lab's site; default: the site's default)

A one-node site has no links: its apply is files and the capability check only (no users,
no routes), so the 10-node/1-node ratio is a pessimistic measure of parallel scaling.
Round trips per node (a count the machine's load does not change): bench/apply_trace.py.
Beside each fresh apply, the no-op apply and drift: the CPU seconds the whole machine was
busy during it (controller, every node's sshd and broker, kernel; /proc/stat); run with
`--transport openssh` and `--transport ssh` for the CPU per node of each. The lab's nodes share the machine's
cores, so that busy time over the core count is a floor no parallel apply can beat here.

Targets: 10-node apply <= 2x the smallest one; >= 3x faster than the naive loop at 10 nodes;
a no-op apply of 10 nodes < 3 s, and with --refresh=false <= 1/3 of a fresh one; `plan --refresh`
of 10 nodes < 3 s.

The no-op apply refreshes by default (it reads every node first): measured beside
`--refresh=false` (the recorded state only) and `drift` (the same read, nothing planned), in
turns on the same lab (`--noop-repeat` turns per lab). Target: the refreshing no-op apply is
no slower than `drift` + 0.3 s (median of the paired differences).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
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
from lotdeploy.lab.hosts import NODE_RELEASE_DIR, NODE_TLS_DIR, Layout
from lotdeploy.secret import Secret
from lotdeploy.spec import load_site
from lotdeploy.workspace import Workspace

PASSPHRASE = "bench-apply passphrase, not a secret"
ENV = {"LOTDEPLOY_PASSPHRASE": PASSPHRASE}

#: The naive loop's broker step for one node: the cluster user, then every route, through a
#: forwarded port. The admin and cluster passwords come in the environment, never in argv.
BROKER_SCRIPT = """
import os, sys
from lotdeploy.broker.session import CommandFailed
from lotdeploy.broker.sync import SyncBrokerClient
from lotdeploy.lot import format_route, parse_file
from lotdeploy.secret import Secret
port, routes = int(sys.argv[1]), sys.argv[2]
client = SyncBrokerClient("n", "127.0.0.1", port, "root", Secret(os.environ["ADMIN_PW"]),
                          request_ids="auto")
client.connect()
try:
    try:
        client.add_user("cluster", Secret(os.environ["CLUSTER_PW"]))
    except CommandFailed:  # there already (a lab lotdeploy applied first): set its password
        client.change_user_password("cluster", Secret(os.environ["CLUSTER_PW"]))
    for route in parse_file(routes):
        client.remove_route(route.name)
        client.add_route(format_route(route))
finally:
    client.close()
"""


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> float:
    """Run a command to completion (it must succeed); its wall seconds."""
    started = time.perf_counter()
    proc = subprocess.run(
        argv,
        env=dict(os.environ, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])}... failed ({proc.returncode}): {proc.stderr}")
    return time.perf_counter() - started


#: `--transport`: written into every lab's site (None: the site's default)
TRANSPORT: list[str] = []


@contextlib.contextmanager
def lab(size: int) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lotapply-bench-") as tmp:
        lab_dir = Path(tmp) / "lab"
        try:
            control.up(lab_dir, labstate.parse_shape(size, None))
            if TRANSPORT:
                site = Layout(lab_dir).site
                site.write_text(site.read_text() + f"transport: {TRANSPORT[0]}\n")
            yield lab_dir
        finally:
            control.down(lab_dir)


def ssh_options(lab_dir: Path) -> list[str]:
    layout = Layout(lab_dir)
    return [
        "-F",
        "/dev/null",
        "-i",
        str(layout.client_key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={layout.known_hosts}",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def ssh_forward(lab_dir: Path, address: str) -> Iterator[int]:
    port = free_port()
    argv = ["ssh", *ssh_options(lab_dir), "-N", "-L", f"{port}:127.0.0.1:1883"]
    proc = subprocess.Popen([*argv, f"root@{address}"], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:  # bounded: until the forward accepts
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"ssh -L to {address} did not come up")
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def naive(lab_dir: Path) -> float:
    """render, then per node, one after another: one scp per file, an ssh for the reload,
    the broker commands through ssh -L. Wall seconds of the whole loop."""
    site_file = Layout(lab_dir).site
    site = load_site(site_file).site
    out = lab_dir.parent / "naive-out"
    started = time.perf_counter()
    run(lotdeploy("render", str(site_file), "--out", str(out)), ENV)
    store = Workspace.for_site(site_file, passphrase_provider=lambda _: Secret(PASSPHRASE))
    secret = store.secrets().get("cluster-password-v1")
    assert secret is not None
    env = {
        "ADMIN_PW": Layout(lab_dir).password_file.read_text().strip(),
        "CLUSTER_PW": secret.reveal(),
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    options = ssh_options(lab_dir)
    for node in site.nodes:
        host = f"root@{node.ssh.host}"
        bundle = out / node.name
        release = f"{NODE_RELEASE_DIR}/naive"
        run(["ssh", *options, host, f"mkdir -p {release} {NODE_TLS_DIR}"])
        for name in ("ca.crt", "server.crt", "server.key"):
            run(["scp", "-q", *options, str(bundle / name), f"{host}:{NODE_TLS_DIR}/{name}"])
        for name in ("routes.lot", "manifest.json"):
            run(["scp", "-q", *options, str(bundle / name), f"{host}:{release}/{name}"])
        run(["ssh", *options, host, node.broker.reload_command])
        with ssh_forward(lab_dir, node.ssh.host) as port:
            script = [sys.executable, "-c", BROKER_SCRIPT, str(port), str(bundle / "routes.lot")]
            run(script, env)
    return time.perf_counter() - started


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting on I/O) since boot:
    the controller, every lab node's sshd and broker, and the kernel alike."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def run_busy(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, busy CPU seconds of the whole machine) of one command."""
    before = busy_cpu_seconds()
    wall = run(argv, ENV)
    return wall, busy_cpu_seconds() - before


def apply_fresh(lab_dir: Path) -> tuple[float, float]:
    return run_busy(lotdeploy("apply", str(Layout(lab_dir).site), "--auto-approve"))


def main() -> None:
    compile_bytecode()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="1,3,10")
    parser.add_argument("--skip-naive", action="store_true", help="leave out the naive loop")
    parser.add_argument("--noop-repeat", type=int, default=5, help="no-op turns per lab")
    parser.add_argument("--transport", help="openssh or ssh (default: the site's default)")
    args = parser.parse_args()
    if args.transport:
        TRANSPORT[:] = [args.transport]
    if os.geteuid() != 0:
        raise SystemExit("bench_apply needs root (a root-mode lab)")
    sizes = [int(s) for s in args.sizes.split(",")]
    big = max(sizes)
    fresh: dict[int, list[float]] = {n: [] for n in sizes}
    cpu: dict[int, list[float]] = {n: [] for n in sizes}
    loop: list[float] = []
    noop: list[float] = []
    noop_cpu: list[float] = []
    drift_cpu: list[float] = []
    noop_recorded: list[float] = []
    drift: list[float] = []
    refresh: list[float] = []
    for _ in range(args.repeat):
        for size in sizes:
            with lab(size) as lab_dir:
                wall, busy = apply_fresh(lab_dir)
                fresh[size].append(wall)
                cpu[size].append(busy)
                if size == big:
                    site = str(Layout(lab_dir).site)
                    for _turn in range(args.noop_repeat):  # in turns: paired differences
                        wall, busy = run_busy(lotdeploy("drift", site))
                        drift.append(wall)
                        drift_cpu.append(busy)
                        wall, busy = run_busy(lotdeploy("apply", site, "--auto-approve"))
                        noop.append(wall)
                        noop_cpu.append(busy)
                        noop_recorded.append(
                            run(lotdeploy("apply", site, "--auto-approve", "--refresh=false"), ENV)
                        )
                    refresh.append(run(lotdeploy("plan", site, "--refresh"), ENV))
        if not args.skip_naive:
            with lab(big) as lab_dir:
                loop.append(naive(lab_dir))

    med = {n: statistics.median(v) for n, v in fresh.items()}
    small = min(sizes)
    rows: list[tuple[str, ...]] = [("measure", "median s", "ratio", "target")]
    for size in sizes:
        ratio = f"{med[size] / med[small]:.2f}x of {small}-node"
        rows.append((f"apply, fresh, {size} nodes", f"{med[size]:.2f}", ratio, ""))
    rows[-1] = (*rows[-1][:3], "<= 2x")
    cores = os.cpu_count() or 1
    for size in sizes:
        busy = statistics.median(cpu[size])
        rows.append(
            (
                f"  machine CPU busy, {size} nodes",
                f"{busy:.2f}",
                f"floor {busy / cores:.2f} s on {cores} cores",
                "",
            )
        )
    if loop:
        naive_s = statistics.median(loop)
        rows.append(
            (
                f"naive ssh/scp loop, {big} nodes",
                f"{naive_s:.2f}",
                f"{naive_s / med[big]:.2f}x the apply",
                ">= 3x",
            )
        )
    noop_s, drift_s = statistics.median(noop), statistics.median(drift)
    rows.append(
        (
            f"apply, no-op (refreshes), {big} nodes",
            f"{noop_s:.2f}",
            f"{noop_s / med[big]:.2f} of fresh",
            "< 3 s",
        )
    )
    recorded_s = statistics.median(noop_recorded)
    rows.append(
        (
            f"apply, no-op, --refresh=false, {big} nodes",
            f"{recorded_s:.2f}",
            f"{recorded_s / med[big]:.2f} of fresh; refresh adds {noop_s - recorded_s:.2f} s",
            "<= 0.33",
        )
    )
    rows.append(
        (
            f"  machine CPU busy, no-op apply, {big} nodes",
            f"{statistics.median(noop_cpu):.2f}",
            f"{statistics.median(noop_cpu) / big:.3f} s per node",
            "",
        )
    )
    rows.append((f"drift, {big} nodes", f"{drift_s:.2f}", "", ""))
    rows.append(
        (
            f"  machine CPU busy, drift, {big} nodes",
            f"{statistics.median(drift_cpu):.2f}",
            f"{statistics.median(drift_cpu) / big:.3f} s per node",
            "",
        )
    )
    over = statistics.median(a - d for a, d in zip(noop, drift, strict=True))
    rows.append(
        (
            f"no-op apply - drift, {big} nodes (paired)",
            f"{over:+.2f}",
            f"{noop_s / drift_s:.2f}x drift",
            "<= +0.30 s",
        )
    )
    refresh_s = statistics.median(refresh)
    rows.append((f"plan --refresh, {big} nodes", f"{refresh_s:.2f}", "", "< 3 s"))
    print(f"bench_apply: root labs, repeat {args.repeat}, medians")
    print(table(rows))


if __name__ == "__main__":
    main()
