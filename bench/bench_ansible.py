"""Benchmark `lotdeploy apply --transport ansible` against `--transport ssh` on the same root
labs of 3 and 10 nodes, in one run: a fresh apply (a new lab each time), a no-op apply (plan
finds nothing: no node is touched by either), and a no-op *delivery* (the state forgotten, so
each transport checks every node's files and finds them in place, then re-activates). Then,
on the 10-node lab, where Ansible's time goes: the deploy playbook's no-op run with each speed
setting turned off in turn (pipelining, ControlPersist), forks 1 vs 10, the cost of fact
gathering (an ad-hoc `setup` against `ping`), and the playbook's time per task.

    sudo .venv/bin/python bench/bench_ansible.py [--repeat 3] [--sizes 3,10]

Prints medians and ratios (noisy 2-core machine: compare ratios, not seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_apply import ENV, PASSPHRASE, lab, run
from bench.common import compile_bytecode, lotdeploy, table
from lotdeploy.ansible.deliver import bundle_files, run_vars
from lotdeploy.ansible.inventory import inventory_text
from lotdeploy.ansible.runner import PrivateDataDir, run_playbook
from lotdeploy.lab.hosts import Layout
from lotdeploy.render import iter_bundles
from lotdeploy.secret import Secret
from lotdeploy.spec import load_site
from lotdeploy.state import StateStore
from lotdeploy.workspace import Workspace

FAST = {
    "ANSIBLE_PIPELINING": "True",
    "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s",
}
VARIANTS = {
    "all on (pipelining, ControlPersist)": FAST,
    "pipelining off": {**FAST, "ANSIBLE_PIPELINING": "False"},
    "ControlPersist off": {**FAST, "ANSIBLE_SSH_ARGS": "-o ControlMaster=no"},
}


def apply(lab_dir: Path, transport: str) -> float:
    site = str(Layout(lab_dir).site)
    return run(lotdeploy("apply", site, "--auto-approve", "--transport", transport), ENV, 600)


def workspace(lab_dir: Path) -> Workspace:
    return Workspace.for_site(
        Layout(lab_dir).site, passphrase_provider=lambda _: Secret(PASSPHRASE)
    )


def forget_nodes(lab_dir: Path) -> None:
    with StateStore(workspace(lab_dir)).transaction() as state:
        state.nodes.clear()


def deploy(
    lab_dir: Path, settings: dict[str, str], forks: int = 10
) -> tuple[float, dict[str, float]]:
    """One no-op deploy.yml run: wall seconds and the summed seconds per task (all hosts)."""
    site = load_site(Layout(lab_dir).site).site
    ws = workspace(lab_dir)
    bundles = {b.node: b for b in iter_bundles(site, ws, datetime.now(UTC))}
    names = sorted(bundles)
    started = time.perf_counter()
    played = run_playbook(
        PrivateDataDir(ws.root),
        "deploy.yml",
        inventory_text(site),
        names,
        run_vars={n: run_vars(bundles[n], False) for n in names},
        files={n: bundle_files(bundles[n]) for n in names},
        forks=forks,
        settings=settings,
    )
    wall = time.perf_counter() - started
    if played.status != "successful" or played.changed:
        raise SystemExit(f"deploy.yml no-op run: {played.status}, changed {played.changed}")
    per_task: dict[str, float] = defaultdict(float)
    for path in (played.artifact_dir / "job_events").glob("*.json"):
        event = json.loads(path.read_text())
        data = event.get("event_data") or {}
        if event.get("event") in ("runner_on_ok", "runner_on_skipped") and data.get("duration"):
            per_task[str(data.get("task"))] += float(data["duration"])
    return wall, dict(per_task)


def adhoc(lab_dir: Path, module: str) -> float:
    """An ad-hoc module on every node through ansible-runner (fact gathering's cost)."""
    import ansible_runner

    site = load_site(Layout(lab_dir).site).site
    pdd = PrivateDataDir(workspace(lab_dir).root)
    pdd.prepare(10)
    (pdd.root / "inventory" / "hosts.yml").write_text(inventory_text(site))
    (pdd.root / "inventory" / "run.yml").unlink(missing_ok=True)
    started = time.perf_counter()
    result = ansible_runner.run(
        private_data_dir=str(pdd.root),
        host_pattern="all",
        module=module,
        inventory=str(pdd.root / "inventory"),
        envvars={
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "ANSIBLE_CONFIG": str(pdd.root / "ansible.cfg"),
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "LOTDEPLOY_PASSPHRASE": "",
        },
        quiet=True,
        suppress_env_files=True,
    )
    if result.status != "successful":
        raise SystemExit(f"ad-hoc {module}: {result.status}")
    return time.perf_counter() - started


def main() -> None:
    compile_bytecode()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="3,10")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_ansible needs root (a root-mode lab)")
    sizes = [int(s) for s in args.sizes.split(",")]
    big = max(sizes)
    m: dict[str, list[float]] = defaultdict(list)
    tasks: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.repeat):
        for size in sizes:
            for transport in ("ssh", "ansible"):
                with lab(size) as lab_dir:
                    m[f"fresh {transport} {size}"].append(apply(lab_dir, transport))
                    m[f"noop {transport} {size}"].append(apply(lab_dir, transport))
                    forget_nodes(lab_dir)
                    m[f"redeliver {transport} {size}"].append(apply(lab_dir, transport))
                    if size == big and transport == "ansible":
                        for label, settings in VARIANTS.items():
                            wall, per_task = deploy(lab_dir, settings)
                            m[f"variant {label}"].append(wall)
                            if label.startswith("all on"):
                                for task, seconds in per_task.items():
                                    tasks[task].append(seconds / big)
                        m["variant forks 1"].append(deploy(lab_dir, FAST, forks=1)[0])
                        m["adhoc ping"].append(adhoc(lab_dir, "ping"))
                        m["adhoc setup"].append(adhoc(lab_dir, "setup"))

    med = {k: statistics.median(v) for k, v in m.items()}
    rows: list[tuple[str, ...]] = [("measure", "ssh s", "ansible s", "ansible/ssh")]
    for kind, label in (
        ("fresh", "apply, fresh"),
        ("noop", "apply, no-op (plan: no changes)"),
        ("redeliver", "apply, state forgotten (files in place)"),
    ):
        for size in sizes:
            s, a = med[f"{kind} ssh {size}"], med[f"{kind} ansible {size}"]
            rows.append((f"{label}, {size} nodes", f"{s:.2f}", f"{a:.2f}", f"{a / s:.2f}x"))
    print(f"bench_ansible: root labs, repeat {args.repeat}, medians")
    print(table(rows))
    base = med["variant all on (pipelining, ControlPersist)"]
    rows = [(f"deploy.yml no-op run, {big} nodes", "median s", "vs all on")]
    for label in [*VARIANTS, "forks 1"]:
        value = med[f"variant {label}"]
        rows.append((label, f"{value:.2f}", f"{value / base:.2f}x"))
    ping, setup = med["adhoc ping"], med["adhoc setup"]
    rows.append(("ad-hoc ping, all nodes", f"{ping:.2f}", ""))
    rows.append(
        (
            "ad-hoc setup (fact gathering), all nodes",
            f"{setup:.2f}",
            f"+{setup - ping:.2f} s over ping",
        )
    )
    print()
    print(table(rows))
    rows = [("deploy.yml task (no-op run)", "median s per host", "")]
    for task, values in sorted(tasks.items(), key=lambda kv: -statistics.median(kv[1])):
        rows.append((task[:60], f"{statistics.median(values):.3f}", ""))
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
