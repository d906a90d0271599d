"""Sequential round trips on the critical path, per command: the same lab shape with 0 ms and
with D ms (100, 250) between the controller and every node, in one run; the added time
divided by D is the number of round trips the command waits for one after another (the
machine's speed cancels out; only waiting on the network remains).

    sudo .venv/bin/python bench/bench_rtt.py [--repeat 3] [--delays 100,250] [--skip-naive]
        [--transports openssh,ssh] [--warm]

Per round and delay: a fresh root lab `eu:1,us:3` with every node `lab delay NODE D` (ingress:
one round trip to a node costs D), then, timed: a fresh `apply`, a no-op `apply` (which reads
every node first), `plan --refresh`, `drift`, `status`, `verify`; a rollout of 3 waves with
gates (a validity change); the same fresh apply with `--transport ansible` on a second lab;
and a naive sequential loop of `ssh`/`scp` doing the same pushes (bench_apply.naive).

`--transports openssh,ssh`: the same commands once per transport, each on its own lab, in
one run, the transport written into the lab's site (`openssh`, the default: masters kept
between commands, LOTDEPLOY_SSH_PERSIST, in a private directory of this run, ended
afterwards; the fresh apply is the first command and makes the masters, every later command
finds them; `ssh`: fabric/paramiko, a connection per command). The naive loop runs with the
first transport's lab. `--warm`: an untimed `status` before the fresh apply (with
`openssh`, it makes the masters the fresh apply then finds: an apply after any other
command within a minute).

Targets (issue 20, 4 nodes): fresh apply <= 15; no-op apply <= 10; plan --refresh, drift,
status <= 8; verify <= 12; rollout of 3 waves <= 3 x (apply + verify).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_apply import ENV, naive, run
from bench.common import compile_bytecode, lotdeploy, table
from lotdeploy.lab import control, labstate
from lotdeploy.lab.hosts import Layout
from lotdeploy.transport.openssh import exit_masters

SHAPE = "eu:1,us:3"
TARGETS = {
    "apply (fresh)": 15,
    "apply (no-op)": 10,
    "plan --refresh": 8,
    "drift": 8,
    "status": 8,
    "verify": 12,
}


@contextlib.contextmanager
def lab(delay_ms: int, transport: str | None = None) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lotrtt-bench-") as tmp:
        lab_dir = Path(tmp) / "lab"
        runtime = Path(tmp) / "run"  # the masters of `transport: openssh`, ended below
        runtime.mkdir(mode=0o700)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
        try:
            state = control.up(lab_dir, labstate.parse_shape(None, SHAPE))
            if delay_ms:
                for node in state.nodes:
                    control.set_delay(lab_dir, node.name, delay_ms)
            if transport:
                site = Layout(lab_dir).site
                doc = yaml.safe_load(site.read_text())
                doc["transport"] = transport
                site.write_text(yaml.safe_dump(doc, sort_keys=False))
            yield lab_dir
        finally:
            end_masters(runtime)
            control.down(lab_dir)


def end_masters(runtime: Path) -> None:
    exit_masters(runtime / "lotdeploy-ssh")


def rollout_site(lab_dir: Path) -> Path:
    """The lab's site with a validity change rolled out in 3 waves (gates after each)."""
    site = Layout(lab_dir).site
    doc = yaml.safe_load(site.read_text())
    doc["defaults"]["message_validity_sec"] = 45
    doc["defaults"]["cross_region_message_validity_sec"] = 145
    doc["rollout"] = {
        "waves": [
            {"name": "canary", "select": ["eu1"]},
            {"name": "second", "select": ["us1"]},
            {"name": "rest", "select": ["us2", "us3"]},
        ],
        "gate_timeout_sec": 60,
    }
    path = lab_dir / "rollout.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def measure(lab_dir: Path, skip_naive: bool, warm: bool = False) -> dict[str, float]:
    """The commands in turn; `warm`: an untimed `status` first (a kept connection's masters
    are made by it, so the fresh apply finds them too)."""
    site = str(Layout(lab_dir).site)
    if warm:
        subprocess.run(
            lotdeploy("status", site), env=dict(os.environ, **ENV), capture_output=True, timeout=120
        )
    timed: dict[str, Callable[[], float]] = {
        "apply (fresh)": lambda: run(lotdeploy("apply", site, "--auto-approve"), ENV),
        "apply (no-op)": lambda: run(lotdeploy("apply", site, "--auto-approve"), ENV),
        "plan --refresh": lambda: run(lotdeploy("plan", site, "--refresh"), ENV),
        "drift": lambda: run(lotdeploy("drift", site), ENV),
        "status": lambda: run(lotdeploy("status", site), ENV),
        "verify": lambda: run(lotdeploy("verify", site), ENV, timeout=300),
        "rollout, 3 waves": lambda: run(
            lotdeploy("apply", str(rollout_site(lab_dir)), "--auto-approve"), ENV, timeout=600
        ),
    }
    found = {name: fn() for name, fn in timed.items()}
    if not skip_naive:
        found["naive ssh/scp loop"] = naive(lab_dir)
    return found


def measure_ansible(lab_dir: Path) -> dict[str, float]:
    site = str(Layout(lab_dir).site)
    argv = lotdeploy("apply", site, "--auto-approve", "--transport", "ansible")
    return {"apply (fresh), ansible": run(argv, ENV, timeout=600)}


def main() -> None:
    compile_bytecode()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--delays", default="100,250")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-ansible", action="store_true")
    parser.add_argument(
        "--transports", default="openssh", help="comma-separated: openssh (the default), ssh"
    )
    parser.add_argument("--warm", action="store_true", help="an untimed status first")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_rtt needs root (root-mode labs with a delay)")
    delays = [0, *(int(d) for d in args.delays.split(","))]
    samples: dict[tuple[str, int], list[float]] = {}
    started = time.monotonic()
    for _ in range(args.repeat):
        for delay in delays:  # in turns, so slow drift of the machine hits every delay alike
            transports = args.transports.split(",")
            for transport in transports:
                tag = f" [{transport}]"
                with lab(delay, transport) as lab_dir:
                    skip_naive = args.skip_naive or transport != transports[0]
                    for name, seconds in measure(lab_dir, skip_naive, args.warm).items():
                        samples.setdefault((name + tag, delay), []).append(seconds)
            if not args.skip_ansible:
                with lab(delay) as lab_dir:
                    for name, seconds in measure_ansible(lab_dir).items():
                        samples.setdefault((name, delay), []).append(seconds)
    names = list(dict.fromkeys(name for name, _ in samples))
    median = {key: statistics.median(values) for key, values in samples.items()}
    head = ["command (4 nodes)", *(f"{d} ms, s" for d in delays)]
    head += [f"round trips @{d}" for d in delays[1:]] + ["target"]
    rows: list[tuple[str, ...]] = [tuple(head)]
    for name in names:
        base = median[name, 0]
        row = [name, *(f"{median[name, d]:.2f}" for d in delays)]
        row += [f"{(median[name, d] - base) / (d / 1000):.1f}" for d in delays[1:]]
        target = TARGETS.get(name.split(" [")[0])
        if name.startswith("rollout, 3 waves"):
            target_text = "<= 3 x (apply + verify)"
        else:
            target_text = f"<= {target}" if target else ""
        rows.append((*row, target_text))
    print(
        f"bench_rtt: root labs {SHAPE}, transports {args.transports}, delays "
        f"{delays} ms into every node, repeat "
        f"{args.repeat}, medians ({time.monotonic() - started:.0f} s)"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
