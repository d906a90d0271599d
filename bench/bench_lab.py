"""Benchmark `lotdeploy lab`: time of up and down for 3 and 10 nodes, parallel node start-up vs
the naive sequential one, and memory (RSS) per node. Prints medians.

    sudo .venv/bin/python bench/bench_lab.py [--repeat 3] [--sizes 3,10] [--mode root|user]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lotdeploy.lab import control, labstate, netns


def rss_kib(pid: int) -> int:
    """Resident memory of one process (VmRSS), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def lab_pids(lab_dir: Path) -> list[int]:
    state = labstate.require(lab_dir)
    pids = {v for k, v in state.pids.items() if "@" not in k}
    if state.mode == "root":
        for node in state.nodes:
            pids.update(netns.namespace_pids(node.ns))
    return sorted(pids)


def one_run(size: int, parallel: bool, mode: str | None) -> tuple[float, float, float]:
    """(up seconds, down seconds, MiB per node) for one fresh lab."""
    with tempfile.TemporaryDirectory(prefix="lotlab-bench-") as tmp:
        lab_dir = Path(tmp) / "lab"
        shape = labstate.parse_shape(size, None)
        start = time.perf_counter()
        try:
            control.up(lab_dir, shape, mode=mode, parallel=parallel)
            up_s = time.perf_counter() - start
            time.sleep(0.5)  # let brokers finish importing before measuring memory
            mem = sum(rss_kib(p) for p in lab_pids(lab_dir)) / 1024 / size
        finally:
            start = time.perf_counter()
            control.down(lab_dir)
            down_s = time.perf_counter() - start
    return up_s, down_s, mem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="3,10")
    parser.add_argument("--mode", choices=["root", "user"], default=None)
    args = parser.parse_args()
    mode = control.detect_mode(args.mode)
    print(f"lab benchmark, {mode} mode, medians of {args.repeat} runs")
    print(f"{'nodes':>5}  {'start-up':<10}  {'up s':>6}  {'down s':>6}  {'MiB/node':>8}")
    for size in [int(s) for s in args.sizes.split(",")]:
        for parallel in (True, False):
            runs = [one_run(size, parallel, args.mode) for _ in range(args.repeat)]
            up_s, down_s, mem = (statistics.median(col) for col in zip(*runs, strict=True))
            label = "parallel" if parallel else "sequential"
            print(f"{size:>5}  {label:<10}  {up_s:>6.2f}  {down_s:>6.2f}  {mem:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
