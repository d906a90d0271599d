"""The lab's stand-in for the docker CLI on a node in the docker layout (`lab up --profile
NODE=docker`), so a docker node's reload contract runs for real without Docker.

It plays exactly what lotdeploy's docker profile uses: `docker restart NAME` stops the
node's lab broker (SIGTERM, then SIGKILL after a bounded wait) and starts it again as `lab
up` started it (same command line, mounts and state directory, so its routes, users and
secrets come back), then waits until it serves; `docker ps` lists the container while its
broker runs. Anything else is refused with docker's exit status for a daemon error (125).
The container is described by DIR/nodes/<node>/container.json (lotdeploy.lab.hosts).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from lotdeploy.errors import LabError
from lotdeploy.fsutil import atomic_write
from lotdeploy.lab import hosts

STOP_WAIT = 10.0  # docker restart's own default grace time


def _pid(conf: dict[str, Any]) -> int | None:
    try:
        pid = int(Path(conf["pid_file"]).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if hosts.is_lab_broker(pid, Path(conf["cwd"]).parent) else None


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT
    while hosts.start_time(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def restart(conf: dict[str, Any]) -> None:
    """Stop the container's broker if it runs, start it again, wait until it serves."""
    pid = _pid(conf)
    if pid is not None:
        _stop(pid)
    log = Path(conf["log"])
    offset = log.stat().st_size if log.exists() else 0
    new = hosts.spawn(conf["argv"], log, conf["lab_id"], cwd=Path(conf["cwd"]))
    atomic_write(Path(conf["pid_file"]), f"{new}\n")
    hosts.wait_ready(log, offset, node=conf["name"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="docker", add_help=False)
    parser.add_argument("--node-dir", required=True, type=Path)
    parser.add_argument("words", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    conf = json.loads((args.node_dir / "container.json").read_text())
    words: list[str] = args.words
    if words[:1] == ["restart"] and len(words) > 1:
        for name in words[1:]:
            if name != conf["name"]:
                print(f"Error response from daemon: No such container: {name}", file=sys.stderr)
                return 1
        try:
            restart(conf)
        except LabError as exc:
            print(f"Error response from daemon: {exc}", file=sys.stderr)
            return 1
        print("\n".join(words[1:]))
        return 0
    if words == ["ps"]:
        print("NAMES")
        if _pid(conf) is not None:
            print(conf["name"])
        return 0
    print(
        "lab docker: only `docker restart NAME` and `docker ps` are played here (docs/lab.md)",
        file=sys.stderr,
    )
    return 125


if __name__ == "__main__":
    sys.exit(main())
